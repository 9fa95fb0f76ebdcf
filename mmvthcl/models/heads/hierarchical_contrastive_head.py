"""Hierarchical contrast: one InfoNCE per depth, slow against fast and back.

At every depth d (res3, res4, res5) each tempo has its own projection φ. The
slow embedding of instance i is a query against the *fast* bank of depth d
(positive: the fast bank's row i; negatives: K rows drawn at random, less
row i if it is drawn), and the fast embedding queries the slow bank; the
two directions are summed (CMC's symmetric loss) and weighted per depth.
After the loss the banks take the step's embeddings (see
:class:`HierarchicalMemoryBank`).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule

from mmaction.registry import MODELS


def _eval_norm(norm: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """A BN layer applied with its running statistics to (..., C)."""
    return F.batch_norm(
        h.reshape(-1, h.shape[-1]), norm.running_mean, norm.running_var,
        norm.weight, norm.bias, training=False,
        eps=norm.eps).reshape(h.shape)


class _UnitRows(torch.autograd.Function):
    """``F.normalize(x, dim=-1)`` with a backward of a few operations.

    Autograd differentiates ``x / max(|x|, eps)`` through the norm, the
    clamp and the division, about 20 small operations per call, which on a
    GPU is 20 kernel launches for a (B, D) tensor; the closed form of the
    gradient, ``(g − y·(g·y)) / |x|`` (``g / eps`` where the norm was
    clamped), takes six.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        clamped = norm < eps
        norm = norm.clamp_min_(eps)
        y = x / norm
        ctx.save_for_backward(y, norm, clamped)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        y, norm, clamped = ctx.saved_tensors
        # the component along y vanishes where the norm is not clamped;
        # where it is, the norm is the constant eps
        along = (grad * y).sum(dim=-1, keepdim=True).masked_fill_(clamped, 0)
        return (grad - y * along) / norm, None


def unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """L2-normalise the last dimension (same values as ``F.normalize``)."""
    return _UnitRows.apply(x, eps)


class Projection(nn.Module):
    """φ: global average pool → Linear → norm → ReLU → Linear → L2-normalise.

    Args:
        in_channels (int): Channels C of the feature map.
        hidden_channels (int): Width of the hidden layer.
        out_channels (int): Embedding size D.
        norm_cfg (dict, optional): Norm of the hidden layer; ``BN1d`` by
            default, ``SyncBN`` to use the statistics of the global batch,
            None for no norm. Defaults to ``dict(type='BN1d')``.
        out_norm_cfg (dict, optional): Norm of the output before the L2
            normalisation, e.g. ``dict(type='BN1d', affine=False)``, which
            centres the embeddings (see :class:`HierarchicalContrastiveHead`).
            Defaults to None.
    """

    def __init__(self,
                 in_channels: int,
                 hidden_channels: int,
                 out_channels: int,
                 norm_cfg: Optional[dict] = dict(type='BN1d'),
                 out_norm_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden_channels)
        self.bn = build_norm_layer(norm_cfg, hidden_channels)[1] \
            if norm_cfg else None
        self.fc2 = nn.Linear(hidden_channels, out_channels)
        self.out_bn = build_norm_layer(out_norm_cfg, out_channels)[1] \
            if out_norm_cfg else None

    def _mlp(self, x: torch.Tensor, dense: bool = False) -> torch.Tensor:
        h = self.fc1(x)
        if self.bn is not None:
            h = _eval_norm(self.bn, h) if dense else self.bn(h)
        h = self.fc2(F.relu(h))
        if self.out_bn is not None:
            h = _eval_norm(self.out_bn, h) if dense else self.out_bn(h)
        return unit_rows(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a (B, C, T, H, W) feature map as (B, D) unit vectors."""
        return self._mlp(x.mean(dim=(2, 3, 4)))

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Apply φ at every location of a (B, C, T, H, W) map.

        The MLP acts as 1×1×1 convolutions with the same weights and the
        norms use their running statistics (eval mode), so locations do not
        interact.

        Returns:
            Tensor: (B, D, T, H, W) unit vectors.
        """
        return self._mlp(x.movedim(1, -1), dense=True).movedim(-1, 1)


def _logits(query: torch.Tensor, positive: torch.Tensor,
            negatives: torch.Tensor, temperature: float,
            exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(G, B, 1 + K) scores of G groups of B queries, the positive first,
    divided by T; negatives marked in ``exclude`` score −inf."""
    l_pos = (query * positive).sum(dim=-1, keepdim=True)
    if negatives.dim() == 3:  # (G, K, D): shared by the group's queries
        l_neg = torch.bmm(query, negatives.transpose(1, 2))
    else:  # (G, B, K, D): K of its own for every query
        l_neg = (negatives @ query.unsqueeze(-1)).squeeze(-1)
    if exclude is not None:
        # in place: the products' backward needs their inputs, not l_neg
        l_neg.masked_fill_(exclude, float('-inf'))
    return torch.cat([l_pos, l_neg], dim=-1) / temperature


def _loss_and_acc(logits: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Per group: mean cross-entropy with the positive (index 0) as target,
    the fraction of queries ranking it first, and the log-probabilities."""
    log_p = logits.log_softmax(dim=-1)
    loss = -log_p[..., 0].mean(dim=-1)
    acc = (logits.argmax(dim=-1) == 0).float().mean(dim=-1)
    return loss, acc, log_p


class _FusedInfoNCE(torch.autograd.Function):
    """InfoNCE whose gradient is computed in the forward pass.

    The positives and negatives come from the memory bank and need no
    gradient, so the only gradient is the query's,
    ``(softmax(logits) − onehot) / (B·T) @ [positive; negatives]``. Computing
    it while the K (or B·K) negative rows are at hand and saving only that
    (G, B, D) result lets the rows be freed as soon as the loss is known,
    instead of autograd keeping every bank's rows until the backward pass.
    The loss value is the one of ``F.cross_entropy`` on the same logits.
    """

    @staticmethod
    def forward(ctx, query, positive, negatives, temperature, exclude):
        logits = _logits(query, positive, negatives, temperature, exclude)
        loss, acc, log_p = _loss_and_acc(logits)
        ctx.mark_non_differentiable(acc)
        if not ctx.needs_input_grad[0]:
            ctx.save_for_backward(None)
            return loss, acc
        # d loss / d logits, then through the division by T and the scores
        # (an excluded negative has probability 0, so no gradient)
        g = log_p.float().exp_()
        g[..., 0] -= 1
        g /= logits.shape[1] * temperature
        g = g.to(query.dtype)
        g_neg = g[..., 1:]
        if negatives.dim() == 3:
            grad = torch.bmm(g_neg, negatives.to(query.dtype))
        else:
            grad = (g_neg.unsqueeze(-2) @ negatives.to(query.dtype)).squeeze(
                -2)
        grad += g[..., :1] * positive.to(query.dtype)
        ctx.save_for_backward(grad)
        return loss, acc

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_acc):
        grad, = ctx.saved_tensors
        return (grad * grad_loss.to(grad.dtype)[:, None, None], None, None,
                None, None)


def info_nce(query: torch.Tensor,
             positive: torch.Tensor,
             negatives: torch.Tensor,
             temperature: float,
             exclude: Optional[torch.Tensor] = None) -> tuple:
    """InfoNCE of G groups of unit queries, each against one positive and K
    negatives.

    Args:
        query (Tensor): (G, B, D).
        positive (Tensor): (G, B, D).
        negatives (Tensor): (G, K, D), shared by the B queries of a group,
            or (G, B, K, D).
        temperature (float): T in exp(q·k / T).
        exclude (Tensor, optional): (B, K) booleans, the same for every
            group: negatives left out of query b's softmax. Defaults to None.

    Returns:
        tuple: The mean loss of each group, (G, ), and the fraction of each
        group's queries whose positive scores above every negative, (G, ).
    """
    from_bank = not (positive.requires_grad or negatives.requires_grad)
    # Bank rows: the fused form, which does not keep them for backward
    # (1.9x faster on CPU, 5.8x leaner with per-sample negatives). Not for
    # shared negatives on a GPU: there the head is bound by kernel launches,
    # not arithmetic, and the two forms cost the same within noise (H100,
    # R18 at 112²: banks together, autograd 11.8 vs fused 12.1 ms per step;
    # one bank at a time, fused 14.3 vs 14.7; benchmarks/README.md, "On a
    # GPU", "Head"), so GPUs keep autograd's; K shared rows are little
    # memory.
    if from_bank and not (query.is_cuda and negatives.dim() == 3):
        return _FusedInfoNCE.apply(query, positive, negatives, temperature,
                                   exclude)
    loss, acc, _ = _loss_and_acc(
        _logits(query, positive, negatives, temperature, exclude))
    return loss, acc.detach()


@torch.no_grad()
def mean_pairwise_cosine(emb: torch.Tensor) -> torch.Tensor:
    """Mean cosine between different rows of (..., B, D) unit vectors, in
    float32 at least (under mixed precision the embeddings may be bfloat16,
    too coarse to tell 0.99 from 1)."""
    emb = emb.float() if emb.dtype in (torch.float16, torch.bfloat16) \
        else emb
    b = emb.shape[-2]
    if b < 2:
        return emb.new_zeros(emb.shape[:-2])
    total = emb.sum(dim=-2)
    # sum over i != j of e_i·e_j = |Σ e|² − Σ |e_i|²
    return ((total * total).sum(dim=-1) - (emb * emb).sum(dim=(-2, -1))) / (
        b * (b - 1))


@MODELS.register_module()
class HierarchicalContrastiveHead(BaseModule):
    """Per-depth, per-tempo projections and the symmetric InfoNCE losses.

    Each query only meets the *other* tempo's bank. A component shared by all
    embeddings of one tempo is then pushed, identically for every sample,
    away from the other tempo's mean, and can grow until both tempos
    collapse to two opposite points (the loss then sits at about
    2·ln(K + 1) per depth). Large datasets fill the banks slowly and escape
    it (as CMC does); on small ones ``out_norm_cfg=dict(type='BN1d',
    affine=False)`` centres the embeddings and prevents it. ``cos_{depth}``
    in the log, the mean cosine between the slow embeddings of a batch,
    shows it: near 1 means collapse.

    Args:
        in_channels (Sequence[int]): Channels of each depth's feature map;
            :class:`VTHCL` fills it in from the backbone.
        depths (Sequence[str]): Depths that get a loss. Defaults to
            ``('res3', 'res4', 'res5')``.
        loss_weights (Sequence[float], optional): Weight of each depth's loss.
            Defaults to 1 for every depth.
        feat_dim (int): Embedding size D. Defaults to 128.
        hidden_channels (Sequence[int], optional): Hidden width of φ per
            depth. Defaults to ``in_channels``.
        norm_cfg (dict, optional): Norm inside φ (``BN1d``; ``SyncBN`` for
            global-batch statistics across GPUs; None for none).
            Defaults to ``dict(type='BN1d')``.
        out_norm_cfg (dict, optional): Norm of φ's output before the L2
            normalisation; ``dict(type='BN1d', affine=False)`` centres the
            embeddings. Defaults to None (the projection of the design).
        temperature (float): Softmax temperature T. Defaults to 0.07.
        num_negatives (int): K, negatives per query. Defaults to 16384.
        per_sample_negatives (bool): Draw K negatives for every query (the
            NPID/CMC way, B times the memory) instead of K shared by the
            batch. Defaults to False.
        exclude_own_row (bool): Leave a query's own bank row out of its
            softmax when it is drawn among the negatives. False scores it
            twice, as the positive and as a negative, as drawing uniformly
            from the bank without a check does. Defaults to True (ours).
        read_banks_together (bool, optional): Read the rows of all banks
            and compute their losses in one batch of operations (a few
            dozen kernels for the six losses instead of a few dozen per
            loss) rather than one bank at a time (at most one bank's K rows
            alive at once). None picks together for shared negatives on a
            GPU, where the head is bound by kernel launches and 6·K rows
            are little memory, and one at a time otherwise. The results are
            the same up to rounding. Defaults to None.
        memory (dict): Config of the :class:`HierarchicalMemoryBank`; depths,
            tempos and ``feat_dim`` are filled in.
        compile (bool | dict): Compile what a training step runs in the
            head with ``torch.compile``: φ of both tempos and the six
            losses as one graph, the banks' row update as another (see
            :meth:`loss_from_features`). A dict is passed to
            ``torch.compile`` (e.g. ``dict(mode='reduce-overhead')`` for
            CUDA graphs), over our ``fullgraph=True, dynamic=False``. On a
            GPU an eager head is bound by launching its kernels (260 per
            step on an H100, batch 8); compiled, a step makes about 85
            computing calls (counted on a CPU, where it is 1.25× faster;
            not yet timed on a GPU). The first step compiles (about a
            minute). Not with a sharded memory or ``SyncBN`` in φ (their
            collectives break the graph). Defaults to False (ours: eager,
            no compiler needed).
        init_cfg (dict, optional): Initialisation config.
    """

    tempos: Tuple[str, str] = ('slow', 'fast')

    def __init__(self,
                 in_channels: Sequence[int],
                 depths: Sequence[str] = ('res3', 'res4', 'res5'),
                 loss_weights: Optional[Sequence[float]] = None,
                 feat_dim: int = 128,
                 hidden_channels: Optional[Sequence[int]] = None,
                 norm_cfg: Optional[dict] = dict(type='BN1d'),
                 out_norm_cfg: Optional[dict] = None,
                 temperature: float = 0.07,
                 num_negatives: int = 16384,
                 per_sample_negatives: bool = False,
                 exclude_own_row: bool = True,
                 read_banks_together: Optional[bool] = None,
                 memory: dict = dict(type='HierarchicalMemoryBank'),
                 compile: Union[bool, dict] = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.depths = tuple(depths)
        n = len(self.depths)
        loss_weights = (1.0, ) * n if loss_weights is None else tuple(
            loss_weights)
        hidden_channels = in_channels if hidden_channels is None else \
            hidden_channels
        for name, value in (('in_channels', in_channels),
                            ('loss_weights', loss_weights),
                            ('hidden_channels', hidden_channels)):
            if len(value) != n:
                raise ValueError(
                    f'head.{name} has {len(value)} entries for {n} depths '
                    f'{self.depths}')
        if temperature <= 0:
            raise ValueError(f'head.temperature must be > 0, got '
                             f'{temperature}')
        if num_negatives < 1:
            raise ValueError(f'head.num_negatives must be >= 1, got '
                             f'{num_negatives}')
        self.loss_weights = loss_weights
        # on the device with the losses: multiplying by a host list would
        # copy it there, which waits for the GPU
        self.register_buffer(
            'loss_weight_vector', torch.tensor(loss_weights),
            persistent=False)
        self.temperature = temperature
        self.num_negatives = num_negatives
        self.per_sample_negatives = per_sample_negatives
        self.exclude_own_row = exclude_own_row
        self.read_banks_together = read_banks_together
        self.projections = nn.ModuleDict({
            f'{d}_{t}': Projection(c, h, feat_dim, norm_cfg, out_norm_cfg)
            for d, c, h in zip(self.depths, in_channels, hidden_channels)
            for t in self.tempos
        })
        memory = dict(memory)
        for key, value in (('depths', self.depths), ('tempos', self.tempos),
                           ('feat_dim', feat_dim)):
            given = memory.setdefault(key, value)
            if isinstance(given, (list, tuple)):
                given = tuple(given)
            if given != value:
                raise ValueError(f'head.memory.{key}={memory[key]!r} '
                                 f'conflicts with the head ({value!r})')
        if per_sample_negatives and memory.get('sharded', False):
            raise ValueError('per_sample_negatives=True is not supported with '
                             'a sharded memory (every rank would fetch B×K '
                             'rows of every other rank); use shared '
                             'negatives or a replicated memory')
        self.memory = MODELS.build(memory)
        self.check_bank_size()
        self.compile_cfg = self._check_compile(compile, norm_cfg)
        # torch.compile'd bound methods, made at the first step; not
        # copied with the module (they would run the original's weights)
        self._compiled: dict = {}

    def _check_compile(self, compile: Union[bool, dict],
                       norm_cfg: Optional[dict]) -> Optional[dict]:
        if not compile:
            return None
        if not isinstance(compile, (bool, dict)):
            raise TypeError(f'head.compile must be a bool or a dict of '
                            f'torch.compile options, got {compile!r}')
        if self.memory.sharded:
            raise ValueError(
                'head.compile is not supported with a sharded memory: its '
                'reads are collectives, which break the compiled graph')
        if norm_cfg and 'SyncBN' in str(norm_cfg.get('type')):
            raise ValueError(
                "head.compile is not supported with norm_cfg=SyncBN in φ: "
                'its statistics are gathered by a collective, which breaks '
                "the compiled graph; use norm_cfg=dict(type='BN1d')")
        return dict(fullgraph=True, dynamic=False,
                    **(compile if isinstance(compile, dict) else {}))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state['_compiled'] = {}
        return state

    def _compiled_fn(self, name: str, fn):
        """``torch.compile(fn)`` with the head's options, made once."""
        if name not in self._compiled:
            self._compiled[name] = torch.compile(fn, **self.compile_cfg)
        return self._compiled[name]

    def check_bank_size(self) -> None:
        """K must not exceed the bank (checked at build time if N is known)."""
        n = self.memory.num_samples
        if self.memory.is_sized and self.num_negatives > n:
            raise ValueError(
                f'head.num_negatives={self.num_negatives} is larger than the '
                f'memory bank ({n} samples); lower it below the dataset '
                'length')

    def project(self, feats: Sequence[torch.Tensor],
                tempo: str) -> Dict[str, torch.Tensor]:
        """Embed one tempo's backbone features, depth by depth.

        Args:
            feats (Sequence[Tensor]): Feature maps in ``depths`` order.
            tempo (str): ``'slow'`` or ``'fast'``.

        Returns:
            dict: depth → (B, D) unit embeddings.
        """
        return {
            d: self.projections[f'{d}_{tempo}'](x)
            for d, x in zip(self.depths, feats)
        }

    def loss(self, slow: Dict[str, torch.Tensor],
             fast: Dict[str, torch.Tensor],
             index: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Symmetric hierarchical InfoNCE, then the memory update.

        Args:
            slow (dict): depth → (B, D) slow embeddings.
            fast (dict): depth → (B, D) fast embeddings.
            index (Tensor): (B, ) dataset indices of the instances.

        Returns:
            dict: ``loss_{depth}`` for every depth (summed by the optimiser
            step); logged only: ``acc_{depth}`` (positive ranked first) and
            ``cos_{depth}`` (mean cosine between different slow embeddings
            of the batch; near 1 means collapse).
        """
        queries = self._stack_queries(slow, fast)
        return self._finish(
            index, queries,
            *self._contrast(queries, index, self._negatives(index)))

    def loss_from_features(self, slow_feats: Sequence[torch.Tensor],
                           fast_feats: Sequence[torch.Tensor],
                           index: torch.Tensor) -> Dict[str, torch.Tensor]:
        """φ of both tempos, then :meth:`loss`: what a training step runs.

        With ``compile`` the projections and the losses are one compiled
        graph and the banks' row update another; the host's share (drawing
        the negatives, the finiteness check, counting the step) stays
        outside them, in the same order as without.

        Args:
            slow_feats (Sequence[Tensor]): The slow encoder's feature maps
                in ``depths`` order.
            fast_feats (Sequence[Tensor]): The fast encoder's.
            index (Tensor): (B, ) dataset indices of the instances.

        Returns:
            dict: As :meth:`loss`.
        """
        if self.compile_cfg is None:
            return self.loss(self.project(slow_feats, 'slow'),
                             self.project(fast_feats, 'fast'), index)
        # refused before, not after, a minute of compiling
        self.memory.check_update()
        negatives = self._negatives(index)
        queries, per_depth, nce, acc, cos = self._compiled_fn(
            'contrast', self._project_and_contrast)(
                tuple(slow_feats), tuple(fast_feats), index, negatives)
        return self._finish(index, queries, per_depth, nce, acc, cos)

    def _order(self) -> List[Tuple[str, str]]:
        """(depth, tempo) of the queries, in the banks' order."""
        return [(d, t) for d in self.depths for t in self.tempos]

    def _stack_queries(self, slow: Dict[str, torch.Tensor],
                       fast: Dict[str, torch.Tensor]) -> torch.Tensor:
        """All embeddings in one (2·depths, B, D) tensor, in the banks'
        order, so that the losses can be one batch of operations."""
        embeddings = {'slow': slow, 'fast': fast}
        return torch.stack([embeddings[t][d] for d, t in self._order()])

    def _negatives(self, index: torch.Tensor) -> torch.Tensor:
        """The step's negative indices, (K, ) or (B, K), drawn on the
        host from (seed, step)."""
        batch = index.shape[0]
        shape = (batch, self.num_negatives) if self.per_sample_negatives \
            else (self.num_negatives, )
        return self.memory.sample_negatives(shape, device=index.device)

    def _project_and_contrast(self, slow_feats: Tuple[torch.Tensor, ...],
                              fast_feats: Tuple[torch.Tensor, ...],
                              index: torch.Tensor,
                              negatives: torch.Tensor) -> tuple:
        """The compiled graph: φ of both tempos and :meth:`_contrast`."""
        queries = self._stack_queries(self.project(slow_feats, 'slow'),
                                      self.project(fast_feats, 'fast'))
        return (queries, ) + self._contrast(queries, index, negatives)

    def _contrast(self, queries: torch.Tensor, index: torch.Tensor,
                  negatives: torch.Tensor) -> tuple:
        """The six InfoNCE losses of (2·depths, B, D) queries, tensors only
        (nothing read back to the host).

        Returns:
            tuple: Weighted loss per depth (depths, ), the losses per depth
            and direction (depths, 2), accuracy per depth and the slow
            embeddings' mean pairwise cosine per depth.
        """
        # A query's own row drawn among its negatives would be its positive
        # scored twice, once as a negative: the pull towards it would stop
        # at probability 1/2 (with the demo's K = 256 of 400 videos, half
        # the queries). It is left out; the same rows for every bank.
        exclude = negatives == index.unsqueeze(-1) \
            if self.exclude_own_row else None  # (B, K)
        # each embedding reads the other tempo's bank
        other = {'slow': 'fast', 'fast': 'slow'}
        reads = [(d, other[t]) for d, t in self._order()]
        nce, acc = [], []
        for group in self._read_groups(len(reads), queries):
            # the rows are not kept in a variable: the fused loss frees them
            # before the next group's are read
            loss, hit = info_nce(
                queries[group],
                *self.memory.fetch(index, negatives, reads[group]),
                self.temperature, exclude)
            nce.append(loss)
            acc.append(hit)
        nce = torch.cat(nce).view(len(self.depths), 2)
        per_depth = nce.sum(dim=1) * self.loss_weight_vector.to(nce.dtype)
        acc = torch.cat(acc).view(len(self.depths), 2).mean(dim=1)
        cos = mean_pairwise_cosine(queries[0::2])  # the slow embeddings
        return per_depth, nce, acc, cos

    def _finish(self, index: torch.Tensor, queries: torch.Tensor,
                per_depth: torch.Tensor, nce: torch.Tensor,
                acc: torch.Tensor,
                cos: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Check the losses, update the banks, name the outputs."""
        # one check for all depths (each read of a GPU value waits for the
        # queued kernels), before a non-finite step reaches the banks
        if not torch.isfinite(per_depth).all():
            i = next(i for i, v in enumerate(per_depth.tolist())
                     if not math.isfinite(v))
            d = self.depths[i]
            raise FloatingPointError(
                f'loss_{d} is {per_depth[i].item()} (depth {d}: '
                f'slow→fast {nce[i, 0].item()}, fast→slow '
                f'{nce[i, 1].item()}); lower the learning rate or check '
                'the input clips')
        losses = {}
        # unbind: its backward is one stack, where indexing costs a
        # zero-filled tensor and a copy per depth
        for d, loss, hit, c in zip(self.depths, per_depth.unbind(),
                                   acc.unbind(), cos.unbind()):
            losses[f'loss_{d}'] = loss
            losses[f'acc_{d}'] = hit
            losses[f'cos_{d}'] = c
        write = None if self.compile_cfg is None else self._compiled_fn(
            'write_rows', self.memory.write_rows)
        self.memory.update(index, dict(zip(self._order(), queries.detach())),
                           write=write)
        return losses

    def _read_groups(self, num_reads: int,
                     queries: torch.Tensor) -> List[slice]:
        """The bank reads that share one fetch and one batched loss."""
        together = self.read_banks_together
        if together is None:
            together = queries.is_cuda and not self.per_sample_negatives
        # a sharded memory assembles every bank's rows in one collective
        if together or self.memory.sharded:
            return [slice(0, num_reads)]
        return [slice(i, i + 1) for i in range(num_reads)]
