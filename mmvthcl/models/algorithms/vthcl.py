"""VTHCL: the self-supervised model. It only wires the parts together.

slow clip ─ backbone ──────┐                  ┌ loss_res3, loss_res4, loss_res5
                           ├─ head (φ, InfoNCE, memory banks)
fast clip ─ fast_backbone ─┘

Labels are never read: the only per-sample annotation used is the dataset
index (``sample_idx``), the key of the memory banks.
"""
import copy
from typing import Dict, List, Optional, Sequence, Union

import torch
from mmengine.model import BaseModel

from mmaction.registry import MODELS
from mmaction.structures import ActionDataSample
from ...datasets.transforms.clip_augment import (COLOR_PARAMS_FAST_KEY,
                                                 COLOR_PARAMS_KEY)
from ...utils import host_to_device
from ..backbones.vthcl_resnet3d import depth_indices

#: RGB 0-255 normalisation of MMAction2's Kinetics configs; keep it identical
#: downstream so the exported encoder sees the inputs it was trained on.
IMG_NORM = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])


def default_data_preprocessor() -> dict:
    """Normalise both clips like MMAction2's SlowOnly configs do, after the
    colour augmentation the pipeline may have deferred to the device."""
    pre = dict(
        type='ClipColorDataPreprocessor', format_shape='NCTHW', **IMG_NORM)
    return dict(
        type='MultiModalDataPreprocessor',
        preprocessors=dict(
            imgs=dict(pre, params_key=COLOR_PARAMS_KEY),
            imgs_fast=dict(pre, params_key=COLOR_PARAMS_FAST_KEY)))


@MODELS.register_module()
class VTHCL(BaseModel):
    """Visual-tempo hierarchical contrastive learning (arXiv 2006.15489).

    Inputs are the dict ``{'imgs': slow, 'imgs_fast': fast}`` that
    ``PackActionInputs(collect_keys=('imgs', 'imgs_fast'))`` produces, each
    (B, 1, C, T, H, W) after the data preprocessor.

    Modes of :meth:`forward`:

    - ``'loss'``: the per-depth losses; updates the memory banks.
    - ``'tensor'``: ``{'{depth}_{tempo}': (B, D) embeddings}`` for every clip
      present in ``inputs`` (a slow clip alone is fine).
    - ``'predict'``: the same embeddings as fields of the data samples.

    Args:
        backbone (dict): The slow encoder, e.g. ``VTHCLResNet3d``; it is the
            one exported for transfer (``backbone.*`` keys, as in MMAction2
            recognizers). Its ``out_indices`` follow ``head.depths``.
        head (dict): A :class:`HierarchicalContrastiveHead`; its
            ``in_channels`` are taken from the backbone.
        fast_backbone (dict, optional): The fast encoder. Defaults to a copy
            of ``backbone`` with separate weights.
        share_encoder (bool): Use one encoder for both tempos.
            Defaults to False.
        data_preprocessor (dict, optional): Defaults to a
            ``MultiModalDataPreprocessor`` normalising both clips.
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 fast_backbone: Optional[dict] = None,
                 share_encoder: bool = False,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(
            data_preprocessor=data_preprocessor or
            default_data_preprocessor(),
            init_cfg=init_cfg)
        head = copy.deepcopy(dict(head))
        depths = tuple(
            head.setdefault('depths', ('res3', 'res4', 'res5')))
        out_indices = depth_indices(depths)
        if share_encoder and fast_backbone is not None:
            raise ValueError('share_encoder=True uses the backbone for both '
                             'tempos; remove model.fast_backbone')
        if share_encoder and backbone.get('with_cp', False):
            # mmaction's blocks checkpoint reentrantly: a parameter used by
            # both tempos then reports two gradients, which DDP refuses at
            # the first backward ("mark a variable ready only once")
            raise ValueError('share_encoder=True runs the backbone twice per '
                             'step, which its checkpointed blocks cannot do '
                             'under DDP; set model.backbone.with_cp=False or '
                             'share_encoder=False')
        self.share_encoder = share_encoder
        # One draw of the global generator, before anything is built: the
        # seed of init_weights (see there), so it depends on the run's seed
        # only, not on how many modules were built after it.
        self._init_seed = int(torch.randint(2**62, ()))
        self.backbone = self._build_encoder(backbone, out_indices, 'backbone')
        if share_encoder:
            self.fast_backbone = None
        else:
            self.fast_backbone = self._build_encoder(
                fast_backbone if fast_backbone is not None else backbone,
                out_indices, 'fast_backbone')
            if self.fast_backbone.out_channels != self.backbone.out_channels:
                raise ValueError(
                    'model.fast_backbone must give the same channels per '
                    f'depth as model.backbone ({self.backbone.out_channels}'
                    f' vs {self.fast_backbone.out_channels})')
        head.setdefault('in_channels', self.backbone.out_channels)
        self.head = MODELS.build(head)
        # The banks are kept equal on all ranks by the memory itself; DDP
        # must neither broadcast them (hundreds of MB per step) nor, for a
        # sharded memory, overwrite each rank's slice with rank 0's.
        self._ddp_params_and_buffers_to_ignore = [
            f'head.memory.{name}' for name in self.head.memory.bank_names()
        ]

    @staticmethod
    def _build_encoder(cfg: dict, out_indices: tuple, name: str):
        cfg = copy.deepcopy(dict(cfg))
        given = cfg.setdefault('out_indices', out_indices)
        if tuple(given) != out_indices:
            raise ValueError(
                f'model.{name}.out_indices={tuple(given)} disagrees with '
                f'model.head.depths (needs {out_indices}); leave out_indices '
                'unset, it follows the depths')
        encoder = MODELS.build(cfg)
        if not hasattr(encoder, 'out_channels'):
            raise TypeError(
                f'model.{name} ({type(encoder).__name__}) must report its '
                'out_channels per depth, as VTHCLResNet3d does')
        return encoder

    def init_weights(self) -> None:
        """Initialise the encoders, then the head, from a generator seeded
        at construction.

        Building the model draws from the global generator (every φ takes
        default-initialised weights), so without this a head with fewer
        depths would leave the generator elsewhere and, with the same seed,
        the encoders would start from other weights: an ablation of the
        head would also compare two random encoders. The global generator
        is left as it was.
        """
        cuda = sorted({p.device.index for p in self.parameters()
                       if p.is_cuda})
        with torch.random.fork_rng(devices=cuda):
            # only the generators forked here: torch.manual_seed would also
            # reseed the other GPUs' and leave them reseeded
            torch.random.default_generator.manual_seed(self._init_seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(
                    self._init_seed)
            super().init_weights()

    @property
    def depths(self) -> tuple:
        return self.head.depths

    def encoder(self, tempo: str) -> torch.nn.Module:
        """The encoder of ``'slow'`` or ``'fast'`` clips."""
        if tempo == 'slow' or self.share_encoder:
            return self.backbone
        if tempo == 'fast':
            return self.fast_backbone
        raise ValueError(f"tempo must be 'slow' or 'fast', got {tempo!r}")

    def extract_feat(self, imgs: torch.Tensor,
                     tempo: str = 'slow') -> tuple:
        """Backbone feature maps of one clip batch, in ``depths`` order.

        Args:
            imgs (Tensor): (B, C, T, H, W) or (B, V, C, T, H, W) with V views
                folded into the batch.
            tempo (str): Which encoder to use.
        """
        if imgs.dim() == 6:
            imgs = imgs.flatten(0, 1)
        return self.encoder(tempo)(imgs)

    def embed(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, dict]:
        """φ embeddings of every clip present in ``inputs``."""
        out = {}
        for tempo, key in (('slow', 'imgs'), ('fast', 'imgs_fast')):
            if key in inputs:
                feats = self.extract_feat(inputs[key], tempo)
                out[tempo] = self.head.project(feats, tempo)
        if not out:
            raise KeyError('VTHCL inputs need "imgs" (slow clip) and/or '
                           f'"imgs_fast", got keys {sorted(inputs)}')
        return out

    @staticmethod
    def sample_index(data_samples: Sequence[ActionDataSample],
                     device,
                     num_samples: Optional[int] = None) -> torch.Tensor:
        """Dataset indices of the batch (the memory-bank keys), checked
        against the bank size ``num_samples`` on the host (on a GPU an index
        out of range would only raise a device-side assert)."""
        try:
            index = [int(ds.sample_idx) for ds in data_samples]
        except (AttributeError, TypeError):
            raise KeyError(
                'VTHCL needs each sample\'s dataset index: end the pipeline '
                "with PackActionInputs(..., algorithm_keys=('sample_idx',))")
        if num_samples is not None:
            bad = [i for i in index if not 0 <= i < num_samples]
            if bad:
                raise IndexError(
                    f'sample_idx {bad[0]} is outside the memory banks '
                    f'({num_samples} rows, model.head.memory.num_samples): '
                    'the banks must have one row per training sample')
        return host_to_device(index, device, torch.long)

    @staticmethod
    def check_colors_applied(data_samples: Sequence[ActionDataSample]):
        """Refuse records of deferred colour augmentation left unapplied.

        ``ClipColorDataPreprocessor`` consumes them; a stock preprocessor
        would ignore them and the run would train without colour jitter.
        """
        for key in (COLOR_PARAMS_KEY, COLOR_PARAMS_FAST_KEY):
            if any(key in ds for ds in data_samples or ()):
                raise ValueError(
                    f'the data pipeline deferred colour augmentation '
                    f'("{key}") but model.data_preprocessor did not apply '
                    "it: use type='ClipColorDataPreprocessor' for both "
                    "clips (VTHCL's default data_preprocessor does)")

    def loss(self, inputs: Dict[str, torch.Tensor],
             data_samples: Sequence[ActionDataSample]) -> dict:
        if 'imgs' not in inputs or 'imgs_fast' not in inputs:
            raise KeyError('VTHCL training needs both clips: inputs must '
                           "hold 'imgs' and 'imgs_fast' (see "
                           'TempoPairDecode)')
        self.check_colors_applied(data_samples)
        memory = self.head.memory
        index = self.sample_index(
            data_samples, inputs['imgs'].device,
            memory.num_samples if memory.is_sized else None)
        if self.training and index.numel() < 2 and self._plain_batch_norm():
            raise ValueError(
                "a training batch of 1 clip: φ's BatchNorm needs at least 2 "
                '(set train_dataloader.drop_last=True, which drops a last '
                'partial batch, or a batch size of 2 or more)')
        return self.head.loss_from_features(
            self.extract_feat(inputs['imgs'], 'slow'),
            self.extract_feat(inputs['imgs_fast'], 'fast'), index)

    def _plain_batch_norm(self) -> bool:
        """Whether φ normalises over the local batch (SyncBN does not)."""
        return any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and not isinstance(m, torch.nn.SyncBatchNorm)
            for m in self.head.projections.modules())

    def forward(self,
                inputs: Dict[str, torch.Tensor],
                data_samples: Optional[List[ActionDataSample]] = None,
                mode: str = 'tensor') -> Union[dict, list]:
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        emb = self.embed(inputs)
        flat = {
            f'{depth}_{tempo}': v
            for tempo, per_depth in emb.items()
            for depth, v in per_depth.items()
        }
        if mode == 'tensor':
            return flat
        if mode == 'predict':
            rows = next(iter(flat.values())).shape[0]
            if data_samples is None:
                data_samples = [ActionDataSample() for _ in range(rows)]
            # views were folded into the batch: (B·V, D) -> (B, V, D)
            views = rows // len(data_samples)
            for name, v in flat.items():
                if views > 1:
                    v = v.unflatten(0, (len(data_samples), views))
                for ds, row in zip(data_samples, v):
                    ds.set_field(row, name)
            return data_samples
        raise ValueError(f'Invalid mode "{mode}": use loss, tensor or '
                         'predict')
