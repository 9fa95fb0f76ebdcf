"""Every workaround mmvthcl needs for its stack, in one place.

The supported stack is MMAction2 1.2.x / MMEngine 0.10.x / MMCV 2.1 on a
current PyTorch (>= 2.6), numpy 2 and setuptools. Each function below fixes
one measured breakage, says what it fixes, and is covered by
``tests/test_compat.py``. :func:`apply` runs the import-time fixes; it is
called at the very top of ``mmvthcl/__init__.py`` so that it precedes any
import of ``mmaction.models``.

Nothing here fakes an mmcv module: the compiled ``mmcv.ops`` are required for
AVA detection and are used as they are.
"""
import importlib.util
import os
import os.path as osp
import sys
import types
from typing import Optional

_APPLIED = False


def apply() -> None:
    """Apply the import-time workarounds once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    install_drn_shim_if_missing()
    disable_multimodal_if_transformers_incompatible()
    patch_package_lookup_without_pkg_resources()
    patch_cpu_set_device()
    patch_checkpoint_loader()
    patch_resume_loader()
    fix_color_jitter_hue_numpy2()
    warm_up_mkl_vml()
    _APPLIED = True


# --------------------------------------------------------------------------
# 1. mmaction2 1.2.0 wheel lacks ``mmaction/models/localizers/drn``
# --------------------------------------------------------------------------
def _mmaction_dir() -> Optional[str]:
    spec = importlib.util.find_spec('mmaction')
    if spec is None or spec.origin is None:
        return None
    return osp.dirname(spec.origin)


def drn_is_missing() -> bool:
    """Whether the installed mmaction2 lacks the ``localizers/drn`` sources.

    The PyPI wheel and sdist of mmaction2 1.2.0 skip that directory (it has no
    ``__init__.py``, so ``find_packages`` misses it), and
    ``mmaction/models/localizers/__init__.py`` imports ``.drn.drn``, so
    ``import mmaction.models`` fails (open-mmlab/mmaction2#2714). A source
    install has the files; then nothing must be shimmed.
    """
    root = _mmaction_dir()
    if root is None:
        return False
    return not osp.isfile(osp.join(root, 'models', 'localizers', 'drn',
                                   'drn.py'))


class _MissingDRN:
    """Stands in for ``mmaction.models.localizers.drn.drn.DRN``.

    The class is only imported by ``mmaction.models.localizers``; it is not
    registered, so configs asking for ``type='DRN'`` fail with the usual
    "not in the registry" error. Building it directly says why.
    """

    def __init__(self, *args, **kwargs):
        raise ImportError(
            'DRN is not part of the installed mmaction2 wheel (its sources '
            'are missing from the 1.2.0 release); install mmaction2 from '
            'source to use it.')


def install_drn_shim_if_missing() -> bool:
    """Insert ``mmaction.models.localizers.drn`` modules when really missing.

    Returns:
        bool: True when the shim was installed.
    """
    name = 'mmaction.models.localizers.drn'
    if name in sys.modules or not drn_is_missing():
        return False
    pkg = types.ModuleType(name)
    pkg.__path__ = []  # a package, so ``.drn.drn`` resolves
    pkg.__doc__ = 'mmvthcl shim: the 1.2.0 wheel lacks this package.'
    mod = types.ModuleType(name + '.drn')
    mod.DRN = _MissingDRN
    pkg.drn = mod
    sys.modules[name] = pkg
    sys.modules[name + '.drn'] = mod
    return True


# --------------------------------------------------------------------------
# 2. setuptools >= 82 has no ``pkg_resources``
# --------------------------------------------------------------------------
def _is_installed(package: str) -> bool:
    from importlib import metadata
    try:
        metadata.distribution(package)
        return True
    except metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def _package2module(dist) -> str:
    """Top-level module of a distribution (``mmaction2`` → ``mmaction``)."""
    top = (dist.read_text('top_level.txt') or '').split()
    if top:
        return top[0]
    return dist.metadata['Name'].replace('-', '_')


def _get_installed_path(package: str) -> str:
    from importlib import metadata
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise
        return osp.dirname(spec.origin)
    module = _package2module(dist)
    location = str(dist.locate_file(''))
    for name in (package, module):
        path = osp.join(location, name)
        if osp.isdir(path):
            return path
    # editable installs: the module does not live beside the metadata
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.origin is not None:
        return osp.dirname(spec.origin)
    return osp.join(location, module)


def patch_package_lookup_without_pkg_resources() -> None:
    """Resolve ``mmaction::`` config bases without ``pkg_resources``.

    MMEngine 0.10.7's ``is_installed``/``get_installed_path`` import
    ``pkg_resources``, which setuptools 82 removed; every config with
    ``_base_ = 'mmaction::...'`` then fails with ``ModuleNotFoundError``
    (fixed on mmengine main, unreleased). Both functions are replaced, where
    ``mmengine.config`` looks them up, by ``importlib.metadata`` equivalents.
    This is done whether or not ``pkg_resources`` is present: the answers are
    the same, and it spares a ``pkg_resources`` import and reload (about a
    second) per ``mmaction::`` base.
    """
    import mmengine.config.config as config_mod
    import mmengine.utils as utils_mod
    import mmengine.utils.package_utils as pkg_mod
    for mod in (config_mod, utils_mod, pkg_mod):
        mod.is_installed = _is_installed
        mod.get_installed_path = _get_installed_path


# --------------------------------------------------------------------------
# 3. Distributed runs on CPU-only machines (gloo)
# --------------------------------------------------------------------------
def patch_cpu_set_device() -> bool:
    """Make ``torch.cuda.set_device`` a no-op when CUDA is unavailable.

    MMEngine's ``_init_dist_pytorch`` calls ``torch.cuda.set_device`` for
    every launcher, which raises on a CPU-only torch build, so
    ``--launcher pytorch`` could not run on CPU at all.

    Returns:
        bool: True when the function was replaced.
    """
    import torch
    if torch.cuda.is_available():
        return False
    if getattr(torch.cuda.set_device, '_mmvthcl_noop', False):
        return True

    def _set_device_noop(device) -> None:
        del device  # nothing to select on a CPU-only machine

    _set_device_noop._mmvthcl_noop = True
    torch.cuda.set_device = _set_device_noop
    return True


def adapt_config_for_device(cfg, launcher: str = 'none') -> None:
    """Adjust a loaded config for the machine it runs on.

    On a machine without CUDA, a distributed run needs the gloo backend
    (stock configs ask for nccl), and DDP must not receive ``device_ids``
    (MMEngine passes ``[LOCAL_RANK]``, which DDP rejects for CPU modules).
    Memory banks are synchronised by VTHCL itself, so the wrapper never
    broadcasts buffers. A top-level ``find_unused_parameters``, which MMEngine
    reads only when it builds the wrapper itself, is carried into the
    wrapper built here. GPU runs are left untouched.

    Args:
        cfg (mmengine.Config): The config, modified in place.
        launcher (str): The launcher given to ``tools/train.py``.
    """
    import torch
    if launcher == 'none' or torch.cuda.is_available():
        return
    # (Config.setdefault returns a detached dict for a missing key)
    env_cfg = dict(cfg.get('env_cfg') or {})
    env_cfg['dist_cfg'] = dict(env_cfg.get('dist_cfg') or {}, backend='gloo')
    cfg.env_cfg = env_cfg
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False)))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper


def release_process_group(runner=None) -> bool:
    """Destroy the default process group once a run has finished.

    MMEngine leaves it alive. At interpreter exit gloo's threads are then
    torn down in no set order, and a rank can abort with "terminate called
    without an active exception" after training finished (seen in 2 of 4
    runs of ``tests/test_distributed.py``'s two-process CPU training; none in
    8 runs with this), which fails the launcher. The DDP wrapper of the
    runner's model holds the group too, and kept it alive past
    ``destroy_process_group`` until exit (seen in 2 of 14 runs of a
    two-process test): given the runner, its model is dropped first.
    ``tools/train.py`` and ``tools/test.py`` call this last.

    Args:
        runner (mmengine.runner.Runner, optional): The finished runner,
            whose model is released.

    Returns:
        bool: True when a process group was destroyed.
    """
    import gc

    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return False
    dist.barrier()  # no rank tears down while another still talks
    if runner is not None:
        runner.model = None
        gc.collect()
    dist.destroy_process_group()
    return True


# --------------------------------------------------------------------------
# 3b. transformers >= 5 breaks ``import mmaction.models``
# --------------------------------------------------------------------------
#: what mmaction2 1.2.0's multimodal models (VindLU) import from transformers
_VINDLU_NEEDS = ('PreTrainedModel', 'apply_chunking_to_forward',
                 'find_pruneable_heads_and_indices', 'prune_linear_layer')


def transformers_breaks_multimodal() -> bool:
    """Whether an installed transformers lacks what VindLU imports.

    mmaction2 1.2.0 imports its multimodal models whenever transformers
    >= 4.28 is installed, and ``vindlu/modeling_bert.py`` imports helpers
    that transformers 5 removed from ``transformers.modeling_utils``; then
    ``import mmaction.models`` fails with an ImportError although nothing of
    VTHCL needs those models (seen on a GPU machine with transformers 5).
    """
    if importlib.util.find_spec('transformers') is None:
        return False
    try:
        utils = importlib.import_module('transformers.modeling_utils')
    except Exception:  # a broken transformers breaks mmaction the same way
        return True
    return not all(hasattr(utils, name) for name in _VINDLU_NEEDS)


def disable_multimodal_if_transformers_incompatible() -> bool:
    """Turn mmaction's multimodal models off when they cannot import.

    ``mmaction.models.multimodal`` reads ``WITH_MULTIMODAL`` when it is
    imported and registers placeholders when it is False (as without
    transformers), so this must run before ``import mmaction.models``.
    Returns whether it did.
    """
    if not transformers_breaks_multimodal():
        return False
    from mmaction.utils import dependency
    dependency.WITH_MULTIMODAL = False
    return True


# --------------------------------------------------------------------------
# 4. numpy 2: ColorJitter's hue shift overflows uint8
# --------------------------------------------------------------------------
def _adjust_hue(img, factor):
    """MMAction2's hue shift, computed in int16.

    Stock adds ``int(factor * 255)`` to OpenCV's 8-bit hue (0..179), then
    takes it modulo 180. Under numpy 1 a negative offset promoted the sum to
    int16, and that is what this computes for every offset. A positive one
    stays uint8 under both numpy versions and wraps at 256 before the
    modulo when hue + offset >= 256, possible only for offsets >= 77
    (``hue`` > 0.3, far above the 0.1 of the design and of stock configs);
    there this gives the rotation the modulo means instead of the wrap.
    """
    import cv2
    import numpy as np
    img = np.clip(img, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    offset = int(factor * 255)
    # int16 holds hue + offset for any offset in [-127, 127]
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + offset) % 180
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)


def color_jitter_hue_is_broken() -> bool:
    """Whether MMAction2's ``ColorJitter.adjust_hue`` fails for hue < 0.

    It adds a negative Python int to a uint8 array, which numpy 2 (NEP 50)
    rejects with ``OverflowError``; so every stock config with
    ``ColorJitter`` crashes on about half of its clips.
    """
    import numpy as np

    from mmaction.datasets.transforms import ColorJitter
    try:
        ColorJitter.adjust_hue(np.zeros((1, 1, 3), np.float32), -0.05)
    except OverflowError:
        return True
    return False


def fix_color_jitter_hue_numpy2() -> bool:
    """Replace ``ColorJitter.adjust_hue`` by a numpy-2-safe equivalent.

    Returns:
        bool: True when the method was replaced.
    """
    if not color_jitter_hue_is_broken():
        return False
    from mmaction.datasets.transforms import ColorJitter
    # kept for the test that compares the two where stock works
    ColorJitter._mmvthcl_stock_adjust_hue = ColorJitter.adjust_hue
    ColorJitter.adjust_hue = staticmethod(_adjust_hue)
    return True


# --------------------------------------------------------------------------
# 5. torch >= 2.6 loads checkpoints with ``weights_only=True``
# --------------------------------------------------------------------------
def patch_resume_loader() -> bool:
    """Let ``Runner.resume`` read the run's own full checkpoint.

    MMEngine 0.10.7 calls ``torch.load`` without ``weights_only``; since torch
    2.6 that means ``weights_only=True``, and resuming fails with
    "Unsupported global: mmengine.logging.history_buffer.HistoryBuffer"
    (open-mmlab/mmengine#1655). The message hub in ``meta`` pickles bound
    methods (``getattr(HistoryBuffer, 'min')``), so no allow-list can admit it
    without admitting ``getattr``. Resuming reads a checkpoint the run wrote
    itself, so inside ``Runner.resume`` only, and only for that file, the
    full unpickler is used; every other load (``load_from``, ``pretrained``,
    mmvthcl's tools) stays tensors-only. No environment variable needed.

    Returns:
        bool: True when ``Runner.resume`` was wrapped.
    """
    import torch
    from mmengine.runner import Runner
    if getattr(Runner.resume, '_mmvthcl_trusted', False):
        return True
    if 'weights_only' not in str(getattr(torch.load, '__doc__', '')):
        return False  # torch < 1.13: everything unpickles anyway
    resume = Runner.resume

    def trusted_resume(self, filename, *args, **kwargs):
        torch_load = torch.load
        target = osp.realpath(filename)

        def load(f, *a, **k):
            if isinstance(f, (str, os.PathLike)) and \
                    osp.realpath(f) == target:
                k['weights_only'] = False
            return torch_load(f, *a, **k)

        torch.load = load
        try:
            return resume(self, filename, *args, **kwargs)
        finally:
            torch.load = torch_load

    trusted_resume._mmvthcl_trusted = True
    trusted_resume.__doc__ = resume.__doc__
    Runner.resume = trusted_resume
    return True


def patch_checkpoint_loader() -> None:
    """Read local checkpoints tensors-only in ``load_from`` and friends.

    With torch >= 2.6, MMEngine's local loader (used by ``load_from``,
    ``tools/test.py``, ``backbone.pretrained`` and ``init_cfg``) cannot read
    the full checkpoints ``tools/train.py`` writes: their ``meta`` holds
    Python objects. The replacement loads through :func:`load_tensors_only`,
    which keeps every tensor and runs nothing from the file. Inside
    ``Runner.resume`` the run's own checkpoint is still read whole (see
    :func:`patch_resume_loader`).
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_from_local(filename, map_location):
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return load_tensors_only(filename, map_location)

    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local, force=True)


class _Inert:
    """Placeholder for any non-tensor object found in an untrusted file."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs) -> '_Inert':
        return _Inert()

    def __setstate__(self, state) -> None:
        pass

    def __repr__(self) -> str:
        return '<not loaded>'


def _tensor_only_pickle_module():
    """A ``pickle`` stand-in whose Unpickler resolves no code.

    Tensor rebuilding functions and plain containers resolve to the real
    objects; every other global (numpy, mmengine classes, builtins such as
    ``getattr``) becomes :class:`_Inert`, so loading runs nothing from the
    file and keeps the tensors.
    """
    import collections
    import pickle

    import torch
    allowed = {
        ('collections', 'OrderedDict'): collections.OrderedDict,
        ('torch._utils', '_rebuild_tensor_v2'):
        torch._utils._rebuild_tensor_v2,
        ('torch._utils', '_rebuild_parameter'):
        torch._utils._rebuild_parameter,
        ('torch', 'Size'): torch.Size,
        ('torch', 'device'): torch.device,
    }

    class Unpickler(pickle.Unpickler):

        def find_class(self, module, name):
            if (module, name) in allowed:
                return allowed[module, name]
            if module == 'torch' and isinstance(getattr(torch, name, None),
                                                torch.dtype):
                return getattr(torch, name)
            return _Inert

    mod = types.ModuleType('mmvthcl_tensor_only_pickle')
    mod.Unpickler = Unpickler
    mod.load = pickle.load
    mod.__name__ = 'mmvthcl_tensor_only_pickle'
    return mod


def load_tensors_only(path: str, map_location='cpu'):
    """Load a checkpoint without executing anything pickled in it.

    Tensor-only files load through ``torch.load(weights_only=True)``. Full
    MMEngine training checkpoints, whose ``meta`` holds Python objects, load
    through an unpickler that resolves only tensor types: ``state_dict`` is
    intact and other objects become inert placeholders.

    Args:
        path (str): Checkpoint file.
        map_location: Passed to :func:`torch.load`.

    Returns:
        dict: The checkpoint.
    """
    import pickle

    import torch
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        try:
            return torch.load(
                path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            # a global outside torch's allow-list: load, leaving it out
            return torch.load(
                path,
                map_location=map_location,
                weights_only=False,
                pickle_module=_tensor_only_pickle_module())
    except Exception as e:  # corrupt zip, truncated file, not a checkpoint
        raise RuntimeError(f'{path}: cannot be read as a PyTorch checkpoint '
                           f'({type(e).__name__}: {e})') from e


# --------------------------------------------------------------------------
# 6. oneMKL 2024.2: a VML function's first call can be low-precision
# --------------------------------------------------------------------------
#: the float ops ATen hands to MKL's VML (``ATen/cpu/vml.h``, torch 2.13)
_MKL_VML_OPS = ('acos', 'asin', 'atan', 'cos', 'erf', 'erfc', 'erfinv',
                'exp', 'log', 'log10', 'log2', 'sin', 'sqrt', 'tan', 'tanh',
                'trunc')
_MKL_VML_WARM = False


def warm_up_mkl_vml() -> bool:
    """Resolve MKL VML's kernel choice before two threads can race for it.

    On CPU, ATen computes ``exp``, ``log``, ``sqrt`` and the other ops in
    ``_MKL_VML_OPS`` of contiguous float32/float64 tensors with MKL's VML,
    in chunks of 2048 elements on the intra-op threads. oneMKL picks each
    VML function's kernel lazily, at its first call; when that first call
    runs on two threads at once, one of them can compute its whole chunk
    with a low-accuracy kernel although ATen asks for the high-accuracy one
    (oneMKL 2024.2, the version in the torch 2.13 wheels; not seen from
    2025.0 on; pytorch/pytorch#188792). Measured here (2 cores, Intel Xeon):
    the first ``torch.exp`` of a fresh process on 4112 elements was wrong in
    7 of 80 processes, each time by 1.5e-4 relative (about 12 correct bits
    of 24), and right in every later call. In VTHCL that first call is the
    InfoNCE softmax of the first step: such a run took another path from
    its first iteration, by chance, more often on a busy machine, and a run
    did not always repeat on one machine.

    A one-element call of each function and precision runs on one thread
    and settles the choice: 0 of 80 processes wrong after it. It takes about
    2 ms, once per process, and changes no result that was right (a
    one-epoch demo run trains bit-identically with and without it).

    Returns:
        bool: True when the calls were made (torch uses MKL, first time).
    """
    global _MKL_VML_WARM
    import torch
    if _MKL_VML_WARM or not torch.backends.mkl.is_available():
        return False
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1, ), 0.5, dtype=dtype)
        for name in _MKL_VML_OPS:
            getattr(torch, name)(x)
    _MKL_VML_WARM = True
    return True


def mkl_vml_warmed_up() -> bool:
    """Whether :func:`warm_up_mkl_vml` has run in this process."""
    return _MKL_VML_WARM
