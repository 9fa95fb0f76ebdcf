"""Export a VTHCL encoder as a tensors-only backbone checkpoint for transfer.

A VTHCL training checkpoint holds the slow encoder (``backbone.*``), the fast
encoder (``fast_backbone.*``, absent with ``share_encoder=True``), and the
projection heads and memory banks (``head.*``). Downstream MMAction2 models
need only one encoder, in one of two key layouts:

- ``'prefixed'``: ``backbone.<key>``, the layout of a stock recognizer or
  AVA ``FastRCNN``. It is taken by ``load_from`` and by the detector-level
  ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
- ``'backbone'``: bare ``<key>``, taken by the backbone itself through
  ``backbone.pretrained=...`` with ``pretrained2d=False``.

The file written is ``{'state_dict': {...}}`` and nothing else, so it loads
with ``torch.load(weights_only=True)`` (the default since torch 2.6), unlike a
full MMEngine checkpoint.
"""
import os
import os.path as osp
from typing import Dict, Tuple

import torch

from ..utils import VTHCL_KEYS, checkpoint_state_dict, is_vthcl_state_dict

#: State-dict prefix of each encoder inside :class:`VTHCL`.
ENCODER_PREFIX = {'slow': 'backbone.', 'fast': 'fast_backbone.'}
#: Key layouts of the exported file.
FORMATS = ('prefixed', 'backbone')


def _describe(state_dict: Dict[str, torch.Tensor]) -> str:
    """A few words on what a non-VTHCL state dict looks like."""
    if not state_dict:
        return 'it holds no weights'
    tops = sorted({k.split('.', 1)[0] for k in state_dict})
    if 'cls_head' in tops:
        return ('it looks like a recognizer checkpoint (cls_head.*), '
                'not a VTHCL pretraining one')
    if tops == ['backbone']:
        return 'it looks like an already exported backbone'
    return f'its top-level modules are {tops[:8]}'


def encoder_state_dict(state_dict: Dict[str, torch.Tensor],
                       encoder: str = 'slow',
                       source: str = 'the checkpoint'
                       ) -> Tuple[Dict[str, torch.Tensor], bool]:
    """Pick one encoder's weights out of a VTHCL model state dict.

    Args:
        state_dict (dict): The ``state_dict`` of a :class:`VTHCL` model.
        encoder (str): ``'slow'`` (the encoder kept for transfer) or
            ``'fast'``. Defaults to ``'slow'``.
        source (str): Name of the file, used in error messages.

    Returns:
        tuple[dict, bool]: The encoder's tensors with bare keys (as in
        :class:`ResNet3dSlowOnly`), and whether the model shared one encoder
        between both tempos (then ``'fast'`` returns ``backbone.*``).

    Raises:
        ValueError: When ``state_dict`` is not a VTHCL model's.
    """
    if encoder not in ENCODER_PREFIX:
        raise ValueError(f"encoder must be 'slow' or 'fast', got {encoder!r}")
    slow = ENCODER_PREFIX['slow']
    if not is_vthcl_state_dict(state_dict):
        raise ValueError(
            f'{source} holds no VTHCL encoder: a VTHCL training checkpoint '
            'has ' + ' and '.join(f"'{p}*'" for p in VTHCL_KEYS) +
            f' keys, but {_describe(state_dict)}')
    shared = not any(k.startswith(ENCODER_PREFIX['fast']) for k in state_dict)
    # with share_encoder=True the one encoder embeds both tempos
    prefix = slow if shared else ENCODER_PREFIX[encoder]
    weights = {
        k[len(prefix):]: v.detach().clone()
        for k, v in state_dict.items() if k.startswith(prefix)
    }
    return weights, shared


def export_encoder(checkpoint: str,
                   out: str,
                   encoder: str = 'slow',
                   fmt: str = 'prefixed',
                   overwrite: bool = False) -> Dict[str, object]:
    """Write one encoder of a VTHCL checkpoint as a tensors-only file.

    The checkpoint is read with :func:`mmvthcl.utils.checkpoint_state_dict`
    (:func:`mmvthcl.compat.load_tensors_only` underneath), so nothing
    pickled in it is executed.

    Args:
        checkpoint (str): A VTHCL training checkpoint (MMEngine format, or a
            bare model state dict).
        out (str): The file to write; its directory is created.
        encoder (str): ``'slow'`` or ``'fast'``. Defaults to ``'slow'``.
        fmt (str): ``'prefixed'`` (``backbone.<key>``, for ``load_from`` and
            the AVA detector's ``init_cfg``) or ``'backbone'`` (bare keys,
            for ``backbone.pretrained``). Defaults to ``'prefixed'``.
        overwrite (bool): Replace ``out`` if it exists. Defaults to False.

    Returns:
        dict: ``num_tensors``, ``shared`` (whether the model shared its
        encoders) and ``out``.
    """
    if fmt not in FORMATS:
        raise ValueError(f'format must be one of {FORMATS}, got {fmt!r}')
    if osp.exists(out):
        if osp.exists(checkpoint) and osp.samefile(out, checkpoint):
            raise ValueError(f'{out} is the checkpoint being exported; '
                             'choose another output file')
        if not overwrite:
            raise FileExistsError(f'{out} exists; pass --overwrite '
                                  '(overwrite=True) to replace it')
    # an MMEngine checkpoint, or a model's bare state dict
    state_dict = checkpoint_state_dict(checkpoint)
    if state_dict is None:
        raise ValueError(f'{checkpoint} holds no VTHCL encoder: it is not a '
                         'checkpoint dict')
    weights, shared = encoder_state_dict(state_dict, encoder, checkpoint)
    if fmt == 'prefixed':
        weights = {ENCODER_PREFIX['slow'] + k: v for k, v in weights.items()}
    out_dir = osp.dirname(osp.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    torch.save({'state_dict': weights}, out)
    return dict(num_tensors=len(weights), shared=shared, out=out)
