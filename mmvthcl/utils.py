"""Small helpers shared across the package (models, transforms, hooks,
evaluation, visualisation)."""
import contextlib
import random
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

#: ``TempoPairSampleFrames`` arguments that define a model's tempos
SAMPLER_KEYS = ('clip_len', 'frame_interval', 'alpha', 'same_num_frames',
                'out_of_bound_opt')
#: State-dict key prefixes that make a VTHCL model's weights: the slow
#: encoder and the head's projections φ. A recognizer has ``backbone.*``
#: too, but ``cls_head.*``; an exported encoder has ``backbone.*`` only. The
#: memory banks (``head.memory.*``) are not required: they are not weights
#: and a file without them is still a VTHCL model.
VTHCL_KEYS = ('backbone.', 'head.projections.')

_MASK64 = (1 << 64) - 1


def host_to_device(values, device, dtype=None) -> torch.Tensor:
    """Small host values (a list, an array or a CPU tensor) on ``device``,
    copied without waiting: a blocking copy to a GPU first waits for every
    kernel queued before it, which stalls the host mid-step."""
    return torch.as_tensor(values, dtype=dtype).to(device, non_blocking=True)


def seed_words(*key: int) -> List[int]:
    """``key`` as ``SeedSequence`` entropy: each integer modulo 2**64
    (``SeedSequence`` takes non-negative integers; a config may give any
    int)."""
    return [int(k) & _MASK64 for k in key]


def seed_generators(*key: int, cuda: bool = True) -> None:
    """Seed Python's, numpy's and torch's generators from the integers
    ``key``, through numpy's ``SeedSequence`` (of :func:`seed_words`).

    Args:
        *key (int): What the seeds are a function of.
        cuda (bool): Seed torch's CUDA generators too (``torch.manual_seed``);
            False seeds its CPU generator only. Defaults to True.
    """
    state = np.random.SeedSequence(seed_words(*key)).generate_state(4)
    random.seed(int(state[0]))
    np.random.seed(state[:2])
    torch_seed = int(state[2]) << 32 | int(state[3])
    if cuda:
        torch.manual_seed(torch_seed)
    else:
        torch.random.default_generator.manual_seed(torch_seed)


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


def unwrap_model(model):
    """The model inside a DDP (or other MMEngine) wrapper; ``model`` itself
    when it is not wrapped."""
    from mmengine.model import is_model_wrapper
    return model.module if is_model_wrapper(model) else model


def select_depths(depths: Union[str, Sequence[str]],
                  available: Sequence[str],
                  what: str = 'the model depths',
                  error: type = ValueError) -> Tuple[str, ...]:
    """``depths`` (one name or several) as a tuple, each one of
    ``available``.

    Raises:
        error: For the first depth not in ``available``, e.g.
            ``depth 'res5' is not one of the model depths ('res3', 'res4')``.
    """
    depths = (depths, ) if isinstance(depths, str) else tuple(depths)
    for d in depths:
        if d not in available:
            raise error(f'depth {d!r} is not one of {what} '
                        f'{tuple(available)}')
    return depths


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


def checkpoint_state_dict(path: str) -> Optional[Dict[str, torch.Tensor]]:
    """The model weights in a checkpoint file, read tensors-only.

    The file may be an MMEngine checkpoint (its ``state_dict``) or a bare
    state dict. Only tensors under string keys are kept: the placeholders
    :func:`~mmvthcl.compat.load_tensors_only` leaves for other pickled
    objects are not weights.

    Returns:
        dict | None: The weights; None when the file holds no dict.

    Raises:
        FileNotFoundError: No such file.
        RuntimeError: The file cannot be read as a PyTorch checkpoint; the
            message names it.
    """
    from .compat import load_tensors_only
    ckpt = load_tensors_only(path)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        return None
    return {
        k: v
        for k, v in state.items()
        if isinstance(k, str) and isinstance(v, torch.Tensor)
    }


def is_vthcl_state_dict(state_dict: Dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is a VTHCL model's (:data:`VTHCL_KEYS`)."""
    return all(
        any(k.startswith(p) for k in state_dict) for p in VTHCL_KEYS)


def load_vthcl_weights(model: torch.nn.Module, path: str) -> None:
    """Load a VTHCL checkpoint's weights tensors-only; refuse anything else.

    The memory banks are skipped: kNN evaluation and the ICM do not use them
    and their size depends on the training set. Every other weight must
    match the model.

    Raises:
        ValueError: The file is missing, not a VTHCL checkpoint, or does not
            match the model; the message names the file.
    """
    try:
        state = checkpoint_state_dict(path)
    except FileNotFoundError:
        raise ValueError(f'{path}: checkpoint not found')
    except RuntimeError as e:  # the message names the file
        raise ValueError(f'not a VTHCL checkpoint: {e}')
    if state is None or not is_vthcl_state_dict(state):
        raise ValueError(f'{path}: not a VTHCL checkpoint (no ' +
                         ' and '.join(f'{p}*' for p in VTHCL_KEYS) +
                         ' weights)')
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


def load_tool_config(path: str, cfg_options: Optional[dict] = None):
    """The config of an evaluation tool (``tools/eval_knn.py``,
    ``tools/visualize_icm.py``): ``path`` with ``cfg_options`` merged in.
    Also sets the config's default scope and quiets MMEngine's logger to
    warnings."""
    import logging

    from mmengine.config import Config
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmaction'))
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    return cfg


def build_vthcl_model(cfg,
                      checkpoint: Optional[str] = None,
                      seed: Optional[int] = None) -> torch.nn.Module:
    """The model of a VTHCL config, on the CPU, for evaluation tools.

    It is built with torch seeded by ``seed``; then it takes the weights of
    ``checkpoint`` (:func:`load_vthcl_weights`) or, without one, is randomly
    initialised. Both happen on the CPU, so that the random model is the
    same whatever device it then runs on.

    Args:
        cfg (Config): The VTHCL config.
        checkpoint (str, optional): A VTHCL checkpoint; None for random
            weights. Defaults to None.
        seed (int, optional): None takes the config's ``randomness.seed``
            (0 if it has none): the random model is then the one training
            with that config starts from (MMEngine's Runner seeds torch
            with it before building the model), the baseline pretraining
            has to beat. Defaults to None.

    Raises:
        ValueError: The checkpoint is missing, not a VTHCL checkpoint, or
            does not match the config; the message names the file.
    """
    from mmaction.registry import MODELS
    if seed is None:
        seed = (cfg.get('randomness') or {}).get('seed')
    torch.manual_seed(0 if seed is None else seed)
    model = MODELS.build(cfg.model)
    if checkpoint:
        load_vthcl_weights(model, checkpoint)
    else:
        model.init_weights()
    return model
