"""Each workaround in mmvthcl/compat.py does what it says, and only then."""
import os
import os.path as osp
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmvthcl import compat

from .conftest import ROOT, Boom, free_port, init_gloo


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          capture_output=True, text=True, env=full_env,
                          cwd=ROOT)


def test_drn_shim_only_when_the_wheel_lacks_it():
    assert compat.drn_is_missing()  # the 1.2.0 wheel installed here
    # without the shim, `import mmaction.models` fails on this install ...
    out = _run("""
        import mmaction.models
    """)
    assert 'mmaction.models.localizers.drn' in out.stderr
    # ... with it, it works, and DRN says why it is unavailable
    out = _run("""
        import mmvthcl, mmaction.models
        from mmaction.models.localizers.drn.drn import DRN
        try:
            DRN()
        except ImportError as e:
            print('refused:', e)
    """)
    assert out.returncode == 0, out.stderr
    assert 'refused: DRN is not part of the installed mmaction2' in out.stdout


def _fake_transformers(root, modeling_utils: str) -> str:
    """An installed-looking transformers 5 (package + dist-info), so that
    mmaction's ``transformers>=4.28.0`` check passes and VindLU imports it."""
    pkg = root / 'transformers'
    pkg.mkdir()
    (pkg / '__init__.py').write_text("__version__ = '5.0.0'\n")
    (pkg / 'modeling_utils.py').write_text(modeling_utils)
    info = root / 'transformers-5.0.0.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text(
        'Metadata-Version: 2.1\nName: transformers\nVersion: 5.0.0\n')
    return str(root)


# compat.py alone, without the package's __init__ (which applies the fixes)
_COMPAT_ALONE = f"""
import importlib.util
spec = importlib.util.spec_from_file_location(
    'compat_alone', {osp.join(ROOT, 'mmvthcl', 'compat.py')!r})
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
"""


def test_transformers_without_vindlu_helpers_leaves_mmaction_importable(
        tmp_path):
    path = _fake_transformers(tmp_path, 'class PreTrainedModel:\n    pass\n')
    env = dict(PYTHONPATH=path + os.pathsep + ROOT)
    # what VindLU does at import, and what broke `import mmaction.models`
    out = _run(_COMPAT_ALONE + """
from mmaction.utils.dependency import WITH_MULTIMODAL
print(compat.transformers_breaks_multimodal(), WITH_MULTIMODAL)
from transformers.modeling_utils import apply_chunking_to_forward
""", **env)
    assert out.stdout.split() == ['True', 'True'], out.stderr
    assert 'ImportError' in out.stderr
    # with the fix, mmaction's multimodal models step aside
    out = _run("""
        import mmvthcl, mmaction.models
        from mmaction.utils import dependency
        print(dependency.WITH_MULTIMODAL)
    """, **env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['False']


def test_compatible_transformers_keeps_multimodal(tmp_path):
    helpers = ''.join(f'def {n}():\n    pass\n' for n in (
        'apply_chunking_to_forward', 'find_pruneable_heads_and_indices',
        'prune_linear_layer'))
    path = _fake_transformers(tmp_path,
                              'class PreTrainedModel:\n    pass\n' + helpers)
    out = _run(_COMPAT_ALONE + """
print(compat.transformers_breaks_multimodal())
print(compat.disable_multimodal_if_transformers_incompatible())
from mmaction.utils.dependency import WITH_MULTIMODAL
print(WITH_MULTIMODAL)
""", PYTHONPATH=path + os.pathsep + ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['False', 'False', 'True']


def test_drn_shim_not_installed_when_sources_exist(tmp_path, monkeypatch):
    drn = tmp_path / 'models' / 'localizers' / 'drn'
    drn.mkdir(parents=True)
    (drn / 'drn.py').write_text('')
    monkeypatch.setattr(compat, '_mmaction_dir', lambda: str(tmp_path))
    assert not compat.drn_is_missing()
    saved = {k: sys.modules.pop(k) for k in list(sys.modules)
             if k.startswith('mmaction.models.localizers.drn')}
    try:
        assert compat.install_drn_shim_if_missing() is False
        assert 'mmaction.models.localizers.drn' not in sys.modules
    finally:
        sys.modules.update(saved)


def test_mmaction_base_configs_without_pkg_resources(tmp_path):
    """setuptools >= 82 removed pkg_resources; mmaction:: bases still load."""
    cfg = tmp_path / 'c.py'
    cfg.write_text("_base_ = ['mmaction::_base_/default_runtime.py']\n")
    blocker = tmp_path / 'blocker'
    blocker.mkdir()
    # a pkg_resources that fails to import, as on setuptools >= 82
    (blocker / 'pkg_resources.py').write_text(
        "raise ModuleNotFoundError(\"No module named 'pkg_resources'\")\n")
    code = f"""
        from mmengine.config import Config
        try:
            Config.fromfile({str(cfg)!r})
        except ModuleNotFoundError as e:
            print('stock:', e)
        import mmvthcl
        print('patched:', Config.fromfile({str(cfg)!r}).default_scope)
    """
    out = _run(code, PYTHONPATH=str(blocker))
    assert out.returncode == 0, out.stderr
    assert "stock: No module named 'pkg_resources'" in out.stdout
    assert 'patched: mmaction' in out.stdout


def test_package_lookup_finds_modules_named_unlike_their_distribution():
    assert compat._is_installed('mmaction2')
    assert not compat._is_installed('surely-not-a-package-xyz')
    import mmaction
    assert osp.realpath(compat._get_installed_path('mmaction2')) == \
        osp.realpath(osp.dirname(mmaction.__file__))


#: distributions whose top-level module has another name (mmaction2 →
#: mmaction, PyYAML → yaml, ...); those installed here are compared
OTHER_MODULE_NAME = ('mmaction2', 'opencv-python', 'PyYAML', 'pillow',
                     'importlib-metadata', 'python-dateutil')


def _stock_package_utils():
    """MMEngine's own ``package_utils`` (the pkg_resources lookups the
    patch replaces), loaded from its file as a separate module: the
    imported one holds the patched functions."""
    import importlib.util

    import mmengine.utils.package_utils as patched
    spec = importlib.util.spec_from_file_location('stock_package_utils',
                                                  patched.__file__)
    stock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stock)
    assert stock.get_installed_path is not compat._get_installed_path
    return stock


@pytest.mark.filterwarnings('ignore:pkg_resources is deprecated')
def test_package_lookup_matches_pkg_resources():
    """Same answers as MMEngine's pkg_resources-based originals, for
    distributions whose module has another name, for module names, and
    for something not installed."""
    pytest.importorskip('pkg_resources')
    from importlib import metadata
    stock = _stock_package_utils()
    installed = []
    for name in OTHER_MODULE_NAME:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        installed.append(name)
    assert 'mmaction2' in installed
    for name in installed + ['mmaction', 'yaml', 'cv2',
                             'surely-not-a-package-xyz']:
        assert compat._is_installed(name) == stock.is_installed(name), name
    compared = []
    for name in installed:
        try:
            want = stock.get_installed_path(name)
        except ValueError:  # no top_level.txt: stock cannot tell either
            continue
        got = compat._get_installed_path(name)
        assert osp.realpath(got) == osp.realpath(want), name
        assert osp.isdir(got), name
        compared.append((name, osp.basename(got)))
    # the case the lookup exists for: the directory is not the
    # distribution's name, for more than one distribution
    assert sum(dist != module for dist, module in compared) >= 2, compared


def test_cpu_set_device_is_a_noop_without_cuda():
    if torch.cuda.is_available():
        pytest.skip('a CUDA machine keeps the real set_device')
    torch.cuda.set_device(0)  # raised before the fix
    assert torch.cuda.set_device._mmvthcl_noop


def test_config_adapted_for_cpu_distributed_runs():
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    compat.adapt_config_for_device(cfg, 'none')
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'  # not distributed
    compat.adapt_config_for_device(cfg, 'pytorch')
    if torch.cuda.is_available():
        assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    else:
        assert cfg.env_cfg.dist_cfg.backend == 'gloo'
        assert cfg.model_wrapper_cfg.device_ids is None
        assert cfg.model_wrapper_cfg.broadcast_buffers is False
        assert cfg.model_wrapper_cfg.find_unused_parameters is False
    # the top-level key MMEngine reads for the wrapper it builds itself
    cfg = Config(dict(find_unused_parameters=True))
    compat.adapt_config_for_device(cfg, 'pytorch')
    if not torch.cuda.is_available():
        assert cfg.model_wrapper_cfg.find_unused_parameters is True


def test_gpu_machines_keep_the_stock_device_handling(monkeypatch):
    """Where CUDA is available (simulated here), set_device stays torch's
    and a distributed config keeps its nccl backend and wrapper."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)

    def stock(device):  # stands for torch's (monkeypatch restores it)
        pass

    monkeypatch.setattr(torch.cuda, 'set_device', stock)
    assert compat.patch_cpu_set_device() is False
    assert torch.cuda.set_device is stock
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    compat.adapt_config_for_device(cfg, 'pytorch')
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    assert 'model_wrapper_cfg' not in cfg


def test_color_jitter_hue_fixed_for_numpy2():
    from mmaction.datasets.transforms import ColorJitter
    stock = getattr(ColorJitter, '_mmvthcl_stock_adjust_hue', None)
    if stock is None:
        pytest.skip('ColorJitter.adjust_hue works here: nothing was replaced')
    # a grid of the RGB cube: every OpenCV hue, dark and light, grey too
    v = np.arange(0, 256, 5, dtype=np.float32)
    img = np.stack(np.meshgrid(v, v, v, indexing='ij'), -1).reshape(-1, 1, 3)
    with pytest.raises(OverflowError):
        stock(img, -0.1)  # the numpy-2 failure the fix is for
    # Stock is right where it does not fail and its uint8 sum does not wrap
    # (hue + offset < 256: offsets up to 76); the fix must equal it there.
    for offset in (0, 1, 25, 76):
        f = (offset + 0.5) / 255  # int(f * 255) == offset
        np.testing.assert_array_equal(
            ColorJitter.adjust_hue(img, f), stock(img, f), err_msg=offset)
    # A negative offset o is the same rotation of the 180-step circle as
    # 180 + o, which stock computes without failing or wrapping if <= 76.
    for offset in (-104, -127):
        np.testing.assert_array_equal(
            ColorJitter.adjust_hue(img, (offset - 0.5) / 255),
            stock(img, (180 + offset + 0.5) / 255),
            err_msg=offset)


def test_load_tensors_only_never_runs_pickled_code(tmp_path):
    marker = tmp_path / 'pwned'
    ckpt = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(2)},
                'meta': {'x': Boom(marker)}}, str(ckpt))
    loaded = compat.load_tensors_only(str(ckpt))
    assert not marker.exists()
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))
    # a plain load of the same file would have run it
    torch.load(str(ckpt), weights_only=False)
    assert marker.exists()


def test_load_tensors_only_reports_the_file(tmp_path):
    bad = tmp_path / 'not_a_checkpoint.pth'
    bad.write_bytes(b'hello')
    with pytest.raises(RuntimeError, match='not_a_checkpoint.pth'):
        compat.load_tensors_only(str(bad))
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        compat.load_tensors_only(str(tmp_path / 'missing.pth'))


def test_load_from_reads_full_checkpoints_tensors_only(tmp_path):
    """load_from / tools/test.py of a full checkpoint on torch >= 2.6."""
    from mmengine.runner.checkpoint import _load_checkpoint
    marker = tmp_path / 'pwned'
    ckpt = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': {'w': torch.ones(2)},
                'meta': {'hub': Boom(marker)}}, str(ckpt))
    loaded = _load_checkpoint(str(ckpt), map_location='cpu')
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        _load_checkpoint(str(tmp_path / 'nope.pth'))


def test_resume_loader_trusts_only_the_resumed_file(tmp_path):
    """The real wrapper of ``Runner.resume`` (compat.patch_resume_loader)
    around the stock method: while it runs, the file being resumed is read
    whole through MMEngine's (patched) loader, any other file stays
    refused or tensors-only, and ``torch.load`` is given back afterwards,
    also when resuming fails."""
    from fractions import Fraction

    from mmengine.runner import Runner
    from mmengine.runner.checkpoint import _load_checkpoint
    assert Runner.resume._mmvthcl_trusted
    own = tmp_path / 'iter_2.pth'
    # an object torch's weights-only unpickler refuses and a full one
    # rebuilds, as the message hub in a real checkpoint's meta
    torch.save({'state_dict': {'w': torch.ones(2)},
                'meta': {'hub': Fraction(1, 3)}}, str(own))
    marker = tmp_path / 'pwned'
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'w': torch.zeros(2)},
                'meta': {'hub': Boom(marker)}}, str(other))
    original = torch.load
    seen = {}

    class Stop(Exception):
        pass

    class StubRunner:
        """The stock ``resume`` starts with ``self.load_checkpoint``; this
        one loads like ``Runner.load_checkpoint`` does (through
        ``_load_checkpoint``), tries the other file, then stops the stock
        method before it needs a real runner."""

        def load_checkpoint(self, filename, map_location='cpu'):
            seen['wrapped'] = torch.load is not original
            seen['own'] = _load_checkpoint(filename, map_location)
            try:
                torch.load(str(other))
                seen['other_plain'] = 'loaded'
            except pickle.UnpicklingError:
                seen['other_plain'] = 'refused'
            seen['other'] = _load_checkpoint(str(other), map_location)
            raise Stop

    with pytest.raises(Stop):
        Runner.resume(StubRunner(), str(own), map_location='cpu')
    assert seen['wrapped']  # the patch was active inside resume ...
    assert seen['own']['meta']['hub'] == Fraction(1, 3)  # ... read whole
    assert torch.equal(seen['own']['state_dict']['w'], torch.ones(2))
    # another file during resume: torch's refusal, and tensors only
    # through MMEngine's loader; its pickled command never ran
    assert seen['other_plain'] == 'refused'
    assert torch.equal(seen['other']['state_dict']['w'], torch.zeros(2))
    assert not marker.exists()
    # torch.load is restored although resume raised, and the resumed file
    # is refused again outside resume
    assert torch.load is original
    with pytest.raises(pickle.UnpicklingError):
        torch.load(str(own))
    assert not isinstance(_load_checkpoint(str(own))['meta']['hub'],
                          Fraction)


def test_process_group_released_after_a_run():
    import torch.distributed as dist
    assert not compat.release_process_group()  # none: nothing to do
    port = free_port()
    init_gloo(0, port, world_size=1)
    assert compat.release_process_group()
    assert not dist.is_initialized()


def test_importing_mmvthcl_settles_mkl_vml_first():
    # this process imported mmvthcl (above), which ran the warm-up
    assert compat.mkl_vml_warmed_up() == torch.backends.mkl.is_available()
    assert not compat.warm_up_mkl_vml()  # once per process


# A fresh process (compat.py alone, so nothing has called MKL yet), warmed up
# with argument 'warm' ('cold': not, to measure the race), then the first and
# the second call of every VML op in both precisions on 4112 elements: three
# chunks, two intra-op threads. The second call runs on a settled kernel
# choice; the first must equal it bit for bit.
_VML_FIRST_CALLS = _COMPAT_ALONE + """
import sys
import torch
if sys.argv[1] == 'warm':
    assert compat.warm_up_mkl_vml()
wrong = []
# exp first, as in training (the InfoNCE softmax)
ops = sorted(compat._MKL_VML_OPS, key=lambda name: name != 'exp')
for dtype in (torch.float32, torch.float64):
    x = torch.linspace(0.1, 0.9, 4112, dtype=dtype)  # every op's domain
    for name in ops:
        op = getattr(torch, name)
        if not torch.equal(op(x), op(x)):
            wrong.append(f'{name}/{dtype}')
print(len(wrong), ' '.join(wrong))
"""


@pytest.mark.slow
@pytest.mark.skipif(not torch.backends.mkl.is_available(),
                    reason='this torch does not use MKL')
def test_mkl_vml_warm_up_makes_first_calls_exact():
    # oneMKL 2024.2 picks a VML kernel at a function's first call; two
    # threads making it at once can get a low-accuracy one (compat.py, 6).
    # 'cold', 3 of 40 of these processes had a wrong first call here, so
    # 20 clean ones without the warm-up would be luck once in 5. One at a
    # time: two processes at once on 2 cores hit the race less (0 of 40;
    # their threads start apart).
    for _ in range(20):
        out = subprocess.run([sys.executable, '-c', _VML_FIRST_CALLS, 'warm'],
                             capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split()[0] == '0', out.stdout
