"""Small helpers shared across the package (models, transforms, hooks,
evaluation, visualisation)."""
import contextlib
import random
from typing import Iterator, List

import numpy as np
import torch

#: ``TempoPairSampleFrames`` arguments that define a model's tempos
SAMPLER_KEYS = ('clip_len', 'frame_interval', 'alpha', 'same_num_frames',
                'out_of_bound_opt')


def host_to_device(values, device, dtype=None) -> torch.Tensor:
    """Small host values (a list, an array or a CPU tensor) on ``device``,
    copied without waiting: a blocking copy to a GPU first waits for every
    kernel queued before it, which stalls the host mid-step."""
    return torch.as_tensor(values, dtype=dtype).to(device, non_blocking=True)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without consuming the Python, numpy and torch RNGs.

    Evaluating or drawing during training must not change what the data
    pipeline or the model draw next.
    """
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put every submodule in eval mode, then restore each one's own flag.

    Restoring flag by flag (instead of ``model.train()``) leaves modules that
    training keeps in eval mode on purpose (frozen BN, ``norm_eval``) exactly
    as they were.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def inner_dataset(dataset):
    """The dataset behind wrappers of one dataset (``RepeatDataset``,
    ``ClassBalancedDataset``), whose indices its samples carry; a
    ``ConcatDataset``, which wraps several, is returned as it is."""
    while hasattr(dataset, 'dataset') and hasattr(dataset.dataset,
                                                  '__len__'):
        dataset = dataset.dataset
    return dataset


def is_transform(transform: dict, name: str) -> bool:
    """Whether a transform config has type ``name`` (scoped or a class)."""
    kind = transform.get('type')
    kind = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    return kind.split('.')[-1] == name


def train_pipeline(cfg) -> List[dict]:
    """The training pipeline of a config, through dataset wrappers."""
    if cfg is None:
        return []
    dataset = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    while 'pipeline' not in dataset and isinstance(dataset.get('dataset'),
                                                   dict):
        dataset = dataset['dataset']  # RepeatDataset and the like
    return list(dataset.get('pipeline') or [])


def tempo_sampling(cfg) -> dict:
    """The ``TempoPairSampleFrames`` arguments of a training config.

    Only the keys that define the tempos (:data:`SAMPLER_KEYS`); empty when
    the config has no such transform (the defaults then apply).
    """
    for t in train_pipeline(cfg):
        if is_transform(t, 'TempoPairSampleFrames'):
            return {k: t[k] for k in SAMPLER_KEYS if k in t}
    return {}


def train_crop_size(cfg, default: int = 224) -> int:
    """The square input size a config trains at.

    The last fixed-size ``Resize`` (or ``CenterCrop``) of the
    ``TempoPairDecode`` clip pipeline; ``default`` when there is none.
    """
    size = default
    for t in train_pipeline(cfg):
        if not is_transform(t, 'TempoPairDecode'):
            continue
        for s in t.get('clip_pipeline') or []:
            value = s.get('scale') if is_transform(s, 'Resize') else \
                s.get('crop_size') if is_transform(s, 'CenterCrop') else None
            if isinstance(value, int) and value > 0:
                size = value
            elif isinstance(value, (tuple, list)) and min(value) > 0:
                size = int(min(value))
    return size


def load_vthcl_weights(model: torch.nn.Module, path: str) -> None:
    """Load a VTHCL checkpoint's weights tensors-only; refuse anything else.

    The memory banks are skipped: kNN evaluation and the ICM do not use them
    and their size depends on the training set. Every other weight must
    match the model.

    Raises:
        ValueError: The file is missing, not a VTHCL checkpoint, or does not
            match the model; the message names the file.
    """
    from .compat import load_tensors_only
    try:
        ckpt = load_tensors_only(path)
    except FileNotFoundError:
        raise ValueError(f'{path}: checkpoint not found')
    except RuntimeError as e:  # the message names the file
        raise ValueError(f'not a VTHCL checkpoint: {e}')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(
            any(k.startswith(p) for k in state)
            for p in ('backbone.', 'head.projections.')):
        raise ValueError(f'{path}: not a VTHCL checkpoint (no backbone.* '
                         'and head.projections.* weights)')
    state = {
        k: v
        for k, v in state.items() if not k.startswith('head.memory.')
    }
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f'{path}: does not match the config: {e}')
    missing = [k for k in missing if not k.startswith('head.memory.')]
    if missing or unexpected:
        raise ValueError(f'{path}: does not match the config (missing '
                         f'{missing[:5]}, unexpected {unexpected[:5]})')
