"""Memory banks of VTHCL: one N × D bank per depth and per tempo.

The memory only stores and updates (MMSelfSup's ``SimpleMemory`` split): the
head reads positives and negatives from it and computes the loss.

Consistency under DDP. Every rank sees a different part of the global batch.
Updates are made from the features and dataset indices of *all* ranks
(``all_gather``), and negatives are drawn from a generator seeded by
``(seed, step)``, so every rank holds the same banks and draws the same
negatives. A 1-process run over the same global batch gives the same banks
where an embedding does not depend on the other clips of its batch (BN
statistics frozen or synchronised); per-rank BN makes the two differ.

Sharded mode. For datasets too large to replicate the banks on every rank
(10M videos × 6 banks × 128 floats = 30.7 GB), ``sharded=True`` gives each of
the W ranks a contiguous slice of ceil(N / W) rows; rows are fetched through
one ``all_reduce`` per step (each rank fills the rows it owns). Random values
are generated per fixed-size chunk of rows, so a shard holds exactly the rows
the replicated bank would hold, and both modes give the same losses.
"""
from typing import (Callable, Dict, Iterable, List, Optional, Sequence,
                    Tuple)

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from mmengine.dist import get_dist_info
from mmengine.model import BaseModule

from mmaction.registry import MODELS
from ...utils import host_to_device

_INIT_CHUNK = 4096  # rows per seeded chunk of the random initialisation


def _is_dist() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized() and \
        torch_dist.get_world_size() > 1


def gather_sizes(n: int, device) -> List[int]:
    """Every rank's ``n`` (rank order), through one ``all_gather``."""
    n = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(n) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(sizes, n)
    return [int(s) for s in sizes]


def all_gather_rows(tensor: torch.Tensor, return_sizes: bool = False):
    """Concatenate the rows of ``tensor`` from every rank (rank order).

    Ranks may hold different numbers of rows (a smaller last batch); they are
    padded for the collective and trimmed after. No gradient flows through
    the result.

    Returns:
        Tensor | tuple: The rows, and with ``return_sizes`` the list of the
        row counts of every rank.
    """
    if not _is_dist():
        out = tensor.detach()
        return (out, [tensor.shape[0]]) if return_sizes else out
    world = torch_dist.get_world_size()
    padded, sizes = _padded_rows(tensor)
    out = [torch.empty_like(padded) for _ in range(world)]
    torch_dist.all_gather(out, padded)
    out = torch.cat([o[:s] for o, s in zip(out, sizes)])
    return (out, sizes) if return_sizes else out


def _padded_rows(tensor: torch.Tensor) -> Tuple[torch.Tensor, List[int]]:
    """``tensor``'s rows, detached and padded with zeros to the largest row
    count of any rank (collectives need one shape), and every rank's row
    count (one ``all_gather``)."""
    sizes = gather_sizes(tensor.shape[0], tensor.device)
    padded = tensor.new_zeros((max(sizes), ) + tuple(tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor.detach()
    return padded, sizes


def gather_rows(tensor: torch.Tensor, dst: int = 0) -> List[torch.Tensor]:
    """Send every rank's rows to rank ``dst``; it gets them as a list (rank
    order), the others get an empty list."""
    rank = torch_dist.get_rank()
    world = torch_dist.get_world_size()
    padded, sizes = _padded_rows(tensor)
    out = [torch.empty_like(padded) for _ in range(world)] \
        if rank == dst else None
    torch_dist.gather(padded, out, dst=dst)
    if rank != dst:
        return []
    return [o[:s] for o, s in zip(out, sizes)]


def last_occurrence(idx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unique values of ``idx`` and the position of each one's last copy.

    A dataset index can appear twice in a (gathered) batch when a sampler
    pads the epoch; scattering both would make the result depend on the
    scatter order, so only the last copy is used, deterministically.
    """
    uniq, inverse = torch.unique(idx, return_inverse=True)
    pos = torch.arange(idx.numel(), device=idx.device)
    last = torch.full_like(uniq, -1).scatter_reduce(
        0, inverse, pos, reduce='amax', include_self=True)
    return uniq, last


def last_copy(idx: torch.Tensor) -> torch.Tensor:
    """For each position of ``idx``, the position of its value's last copy.

    Like :func:`last_occurrence` but without a data-dependent output size,
    so it runs on a GPU without waiting for it: a stable sort groups equal
    values in position order, and each run's end is found with a cumulative
    minimum.
    """
    b = idx.numel()
    sorted_idx, order = torch.sort(idx, stable=True)
    ends = torch.ones(b, dtype=torch.bool, device=idx.device)
    ends[:-1] = sorted_idx[1:] != sorted_idx[:-1]
    pos = torch.arange(b, device=idx.device)
    # for sorted position j, the first run end at or after j
    run_end = torch.where(ends, pos, b).flip(0).cummin(0).values.flip(0)
    out = torch.empty_like(order)
    out[order] = order[run_end]
    return out


@MODELS.register_module()
class HierarchicalMemoryBank(BaseModule):
    """Unit-norm feature banks keyed by dataset index, per depth and tempo.

    Bank ``(depth, tempo)`` is the buffer ``bank_{depth}_{tempo}`` of shape
    N × ``feat_dim``. Rows start as random unit vectors and are updated after
    each step with ``m_i ← normalise(β·m_i + (1 − β)·v_i)``.

    Args:
        depths (Sequence[str]): Depth names, e.g. ``('res3', 'res4',
            'res5')``.
        tempos (Sequence[str]): Tempo names. Defaults to ``('slow',
            'fast')``.
        feat_dim (int): Embedding size D. Defaults to 128.
        num_samples (int, optional): Bank size N, the dataset length. None
            leaves the banks empty until :meth:`resize` (the
            ``MemoryBankHook`` sizes them from the training set) or until a
            checkpoint is loaded. Defaults to None.
        momentum (float): β of the update. Defaults to 0.5.
        sharded (bool): Give each rank a slice of the rows instead of a full
            copy. Defaults to False.
        seed (int): Seed of the initial values and of the negative sampling.
            Defaults to 0.
        init_cfg (dict, optional): Unused; for the BaseModule interface.
    """

    def __init__(self,
                 depths: Sequence[str] = ('res3', 'res4', 'res5'),
                 tempos: Sequence[str] = ('slow', 'fast'),
                 feat_dim: int = 128,
                 num_samples: Optional[int] = None,
                 momentum: float = 0.5,
                 sharded: bool = False,
                 seed: int = 0,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f'memory momentum must be in [0, 1), got '
                             f'{momentum}')
        self.depths = tuple(depths)
        self.tempos = tuple(tempos)
        self.feat_dim = feat_dim
        self.momentum = momentum
        self.sharded = sharded
        self.seed = seed
        self.num_samples = 0
        # True once the size comes from the config or the training set; a
        # checkpoint with another size is then refused instead of adopted
        self.size_fixed = False
        self.row_offset = 0  # first global row held here (sharded mode)
        # set by MemoryBankHook, which keeps the buffer sync off the banks
        # and saves sharded banks; distributed training needs it
        self.hook_attached = False
        # steps taken; seeds the negatives, so it travels in checkpoints
        self.register_buffer('num_updates', torch.zeros((), dtype=torch.long))
        # its value on the host, so that a step does not wait for the GPU to
        # read it; keyed by the buffer's identity and version, which any
        # other write (loading a checkpoint, .to(), +=) changes
        self._num_updates_host = (None, 0)
        for key in self.bank_names():
            # sharded slices differ per rank: they are saved whole by
            # MemoryBankHook, never through the (rank-0) state dict
            self.register_buffer(
                key, torch.zeros(0, feat_dim), persistent=not sharded)
        if num_samples is not None:
            self.resize(num_samples, fixed=True)

    # ------------------------------------------------------------- layout
    @property
    def keys(self) -> List[Tuple[str, str]]:
        """``(depth, tempo)`` of every bank."""
        return [(d, t) for d in self.depths for t in self.tempos]

    def bank_names(self) -> List[str]:
        return [f'bank_{d}_{t}' for d, t in self.keys]

    def bank(self, depth: str, tempo: str) -> torch.Tensor:
        return getattr(self, f'bank_{depth}_{tempo}')

    @property
    def is_sized(self) -> bool:
        return self.num_samples > 0

    def shard_range(self,
                    num_samples: Optional[int] = None) -> Tuple[int, int]:
        """Global rows ``[lo, hi)`` this rank holds."""
        n = self.num_samples if num_samples is None else num_samples
        if not self.sharded:
            return 0, n
        rank, world = get_dist_info()
        rows = -(-n // world)
        return min(rank * rows, n), min((rank + 1) * rows, n)

    def resize(self, num_samples: int, fixed: bool = True) -> None:
        """(Re)allocate every bank with N = ``num_samples`` random rows.

        Args:
            num_samples (int): Bank size N.
            fixed (bool): Refuse later checkpoints of another size.
        """
        if num_samples < 1:
            raise ValueError(f'memory bank size must be positive, got '
                             f'{num_samples}')
        self.num_samples = int(num_samples)
        self.size_fixed = fixed
        lo, hi = self.shard_range()
        self.row_offset = lo
        for i, name in enumerate(self.bank_names()):
            old = getattr(self, name)
            setattr(self, name,
                    self.initial_rows(i, lo, hi).to(old.device, old.dtype))

    def initial_rows(self, bank_id: int, lo: int, hi: int) -> torch.Tensor:
        """Random unit rows ``[lo, hi)`` of bank ``bank_id``.

        Each chunk of ``_INIT_CHUNK`` rows has its own seed, so any slice is
        generated without materialising the whole bank.
        """
        out = torch.empty(hi - lo, self.feat_dim)
        first, last = lo // _INIT_CHUNK, -(-hi // _INIT_CHUNK)
        for c in range(first, last):
            g = torch.Generator().manual_seed(
                (self.seed * 1000003 + bank_id) * 1000003 + c)
            chunk = F.normalize(
                torch.randn(_INIT_CHUNK, self.feat_dim, generator=g), dim=1)
            c_lo, c_hi = c * _INIT_CHUNK, (c + 1) * _INIT_CHUNK
            s, e = max(lo, c_lo), min(hi, c_hi)
            if s < e:
                out[s - lo:e - lo] = chunk[s - c_lo:e - c_lo]
        return out

    def _check_sized(self) -> None:
        if not self.is_sized:
            raise RuntimeError(
                'the memory banks have no size yet: set '
                'model.head.memory.num_samples to the dataset length, or '
                "set default_hooks.sync_buffers=dict(type='MemoryBankHook') "
                '(as the shipped configs do) so it is taken from the '
                'training set')

    # ------------------------------------------------------------ reading
    def _num_updates_key(self) -> tuple:
        buf = self.num_updates
        return (buf.data_ptr(), buf.device, buf._version)

    def steps_taken(self) -> int:
        """``num_updates`` as an int, read from the device only after a
        write other than :meth:`update`'s (a GPU read waits for every
        queued kernel)."""
        key, value = self._num_updates_host
        if key != self._num_updates_key():
            value = int(self.num_updates)
            self._num_updates_host = (self._num_updates_key(), value)
        return value

    def sample_negatives(self, shape: Iterable[int],
                         device=None) -> torch.Tensor:
        """Random dataset indices of a step, drawn from (seed, step).

        Args:
            shape (Iterable[int]): ``(K, )``, shared by the batch and the
                same on every rank; or ``(B, K)``, per query: in a
                distributed run this rank's B rows of one ``(ΣB, K)`` draw
                over the global batch in rank order, so that the ranks'
                queries get different negatives, those a single process
                with the global batch would draw.
            device (torch.device, optional): Where the indices go.
                Defaults to the memory's device.
        """
        self._check_sized()
        shape = tuple(shape)
        rows = None  # this rank's rows of a per-query draw
        if len(shape) == 2 and _is_dist():
            sizes = gather_sizes(shape[0], self.num_updates.device)
            start = sum(sizes[:torch_dist.get_rank()])
            rows = slice(start, start + shape[0])
            shape = (sum(sizes), shape[1])
        g = torch.Generator().manual_seed(self.seed * 1000003 +
                                          self.steps_taken())
        idx = torch.randint(self.num_samples, shape, generator=g)
        if rows is not None:
            idx = idx[rows]
        return host_to_device(
            idx, device if device is not None else self.num_updates.device)

    def fetch(self,
              index: torch.Tensor,
              negatives: torch.Tensor,
              keys: Optional[Sequence[Tuple[str, str]]] = None
              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Rows of G banks for the local batch and the negatives.

        Args:
            index (Tensor): Dataset indices of the local batch, shape (B, ).
            negatives (Tensor): Indices from :meth:`sample_negatives`, shape
                (K, ), the same on every rank, or (B, K), this rank's.
            keys (Sequence[tuple], optional): The G ``(depth, tempo)`` banks
                to read, in this order. Defaults to all of them. Reading
                fewer at a time keeps fewer K (or B·K) rows alive.

        Returns:
            tuple: Positives (G, B, D) and negatives (G, K, D) or
            (G, B, K, D).
        """
        self._check_sized()
        keys = self.keys if keys is None else [tuple(k) for k in keys]
        b = index.numel()
        if not self.sharded or not _is_dist():
            # one row copy per bank for the batch and the negatives
            # together; rows start at 0 here: one process holds every row
            rows = self._read_rows(keys,
                                   torch.cat([index, negatives.reshape(-1)]))
            pos, neg = rows[:, :b], rows[:, b:]
        else:
            # every rank needs rows others own: each fills what it holds and
            # one all_reduce(SUM) assembles them (x + 0 is exact in float)
            all_index, sizes = all_gather_rows(index, return_sizes=True)
            wanted = torch.cat([all_index, negatives.reshape(-1)])
            lo, hi = self.shard_range()
            mine = (wanted >= lo) & (wanted < hi)
            rows = torch.zeros(
                len(keys), wanted.numel(), self.feat_dim,
                device=self.num_updates.device)
            local = wanted[mine] - lo
            for i, (d, t) in enumerate(keys):
                rows[i, mine] = self.bank(d, t).index_select(0, local)
            torch_dist.all_reduce(rows)
            rank, _ = get_dist_info()
            start = sum(sizes[:rank])
            pos, neg = rows[:, start:start + b], rows[:, all_index.numel():]
        return pos, neg.unflatten(1, tuple(negatives.shape))

    def _read_rows(self, keys: Sequence[Tuple[str, str]],
                   rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` of the banks ``keys`` as one (G, len(rows), D)
        tensor: index_select of a flat index (a plain row copy, several
        times faster on CPU than advanced indexing) written in place."""
        out = self.bank(*keys[0]).new_empty(
            (len(keys), rows.numel(), self.feat_dim))
        for i, key in enumerate(keys):
            torch.index_select(self.bank(*key), 0, rows, out=out[i])
        return out

    # ----------------------------------------------------------- updating
    @torch.no_grad()
    def update(self,
               index: torch.Tensor,
               feats: Dict[Tuple[str, str], torch.Tensor],
               write: Optional[Callable] = None) -> None:
        """Momentum-update the rows of the global batch, on every rank.

        Args:
            index (Tensor): Dataset indices of the local batch, (B, ).
            feats (dict): ``(depth, tempo)`` → local embeddings (B, D).
            write (callable, optional): Stands in for :meth:`write_rows`
                (the head passes its compiled form). Defaults to None.
        """
        write = self.write_rows if write is None else write
        self.check_update()
        stacked = torch.stack([feats[k].detach() for k in self.keys], dim=1)
        index = all_gather_rows(index)
        stacked = all_gather_rows(stacked)
        if self.sharded:
            lo, hi = self.shard_range()
            uniq, last = last_occurrence(index)
            mine = (uniq >= lo) & (uniq < hi)
            write(uniq[mine] - lo, stacked[last][mine])
        else:
            write(index, stacked, dedup=True)
        self.count_step()

    def check_update(self) -> None:
        """Refuse an update the banks cannot take (see :meth:`update`)."""
        self._check_sized()
        if not self.hook_attached and _is_dist():
            raise RuntimeError(
                'distributed training with memory banks needs '
                "default_hooks.sync_buffers=dict(type='MemoryBankHook') (the "
                'shipped VTHCL configs set it): without it the stock buffer '
                'sync averages the banks across ranks, and sharded banks are '
                'left out of checkpoints')

    @torch.no_grad()
    def write_rows(self,
                   rows: torch.Tensor,
                   feats: torch.Tensor,
                   dedup: bool = False) -> None:
        """The momentum update of ``rows`` of every bank, tensors only.

        It reads nothing back to the host, so the head can compile it
        (``HierarchicalContrastiveHead(compile=...)``) into a few kernels.

        Args:
            rows (Tensor): Local rows to update, (R, ).
            feats (Tensor): Their new embeddings, (R, banks, D), banks in
                :attr:`keys` order.
            dedup (bool): ``rows`` may repeat (a sampler padding the epoch):
                every copy then writes its last copy's result, which is
                deterministic. Defaults to False (distinct rows).
        """
        if dedup:
            # no torch.unique: its data-dependent size waits for the GPU
            feats = feats[last_copy(rows)]
        # all banks in one batch of operations: a handful of kernels per
        # step instead of a handful per bank
        new = feats.transpose(0, 1)
        old = self._read_rows(self.keys, rows)
        beta = self.momentum
        mixed = F.normalize(
            old.mul_(beta).add_(new.to(old.dtype), alpha=1 - beta), dim=-1)
        for i, (d, t) in enumerate(self.keys):
            self.bank(d, t).index_copy_(0, rows, mixed[i])

    def count_step(self) -> None:
        """Count a step in ``num_updates`` (which seeds the negatives)."""
        steps = self.steps_taken()
        self.num_updates += 1
        self._num_updates_host = (self._num_updates_key(), steps + 1)

    # -------------------------------------------------------- checkpoints
    def full_banks(self, chunk_rows: int = 65536) -> Dict[str, torch.Tensor]:
        """Every bank with all N rows, on CPU, on rank 0 (collective).

        In sharded mode every rank must call it; the slices are gathered to
        rank 0 ``chunk_rows`` rows per rank at a time, so the extra device
        memory stays W × ``chunk_rows`` rows however large N is, and only
        rank 0 holds the result (other ranks get an empty dict). Used to save
        sharded banks whole, so a checkpoint does not depend on the world
        size or the mode.
        """
        if not self.sharded or not _is_dist():
            return {n: getattr(self, n).cpu() for n in self.bank_names()}
        rank, world = get_dist_info()
        rows = -(-self.num_samples // world)
        out = {}
        for name in self.bank_names():
            local = getattr(self, name)
            full = torch.empty(rows * world, self.feat_dim) \
                if rank == 0 else None
            for c in range(0, rows, chunk_rows):
                parts = gather_rows(local[c:c + chunk_rows], dst=0)
                for r, part in enumerate(parts):
                    full[r * rows + c:r * rows + c + len(part)] = part.cpu()
            if rank == 0:
                out[name] = full[:self.num_samples]
        return out

    def _take_size(self, name: str, rows: int) -> None:
        """Make the banks ``rows`` long, as checkpoint bank ``name`` is: a
        size left open is adopted, one fixed by the config or the training
        set is refused."""
        if rows == self.num_samples:
            return
        if self.size_fixed:
            raise ValueError(
                f'checkpoint memory bank {name} has {rows} rows but this '
                f'run expects {self.num_samples} (the training set length '
                'or model.head.memory.num_samples): the checkpoint comes '
                'from another dataset')
        self.resize(rows, fixed=False)

    def load_full_bank(self, name: str, full: torch.Tensor) -> None:
        """Take this rank's rows of a whole bank (sharded mode)."""
        self._take_size(name, full.shape[0])
        lo, hi = self.shard_range()
        bank = getattr(self, name)
        bank.copy_(full[lo:hi].to(bank.device, bank.dtype))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Checkpoints hold whole banks. A bank of another size is adopted
        # when the size was left open (an evaluation tool loading a
        # checkpoint) and refused when the config or the training set fixed
        # it; a sharded memory keeps only its rows.
        names = [prefix + n for n in self.bank_names()]
        if self.sharded:
            for name in names:
                if name in state_dict:
                    self.load_full_bank(name[len(prefix):], state_dict[name])
        elif names[0] in state_dict:
            self._take_size(names[0], state_dict[names[0]].shape[0])
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.sharded:  # consumed above; not buffers of the state dict
            unexpected_keys[:] = [k for k in unexpected_keys
                                  if k not in names]

    def extra_repr(self) -> str:
        return (f'depths={self.depths}, tempos={self.tempos}, '
                f'num_samples={self.num_samples}, feat_dim={self.feat_dim}, '
                f'momentum={self.momentum}, sharded={self.sharded}')
