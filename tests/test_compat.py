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

from .conftest import ROOT, free_port, init_gloo


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


def test_package_lookup_matches_pkg_resources():
    assert compat._is_installed('mmaction2')
    assert not compat._is_installed('surely-not-a-package-xyz')
    import mmaction
    assert osp.realpath(compat._get_installed_path('mmaction2')) == \
        osp.realpath(osp.dirname(mmaction.__file__))


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


def test_color_jitter_hue_fixed_for_numpy2():
    from mmaction.datasets.transforms import ColorJitter
    img = np.full((2, 2, 3), 200, np.float32)
    img[..., 0] = 50
    out = ColorJitter.adjust_hue(img, -0.1)  # raised OverflowError before
    # hue shifted, brightness kept: a reference through float HSV
    import cv2
    hsv = cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + int(-0.1 * 255)) % 180
    ref = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    np.testing.assert_array_equal(out, ref.astype(np.float32))


class _Boom:
    """Pickles as a call to os.system: what a malicious checkpoint holds."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f'touch {self.path}', ))


def test_load_tensors_only_never_runs_pickled_code(tmp_path):
    marker = tmp_path / 'pwned'
    ckpt = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(2)},
                'meta': {'x': _Boom(marker)}}, str(ckpt))
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
                'meta': {'hub': _Boom(marker)}}, str(ckpt))
    loaded = _load_checkpoint(str(ckpt), map_location='cpu')
    assert torch.equal(loaded['state_dict']['w'], torch.ones(2))
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        _load_checkpoint(str(tmp_path / 'nope.pth'))


def test_resume_loader_trusts_only_the_resumed_file(tmp_path):
    from mmengine.runner import Runner
    assert Runner.resume._mmvthcl_trusted
    # outside resume, torch.load keeps refusing pickled objects
    path = tmp_path / 'c.pth'
    torch.save({'meta': {'x': _Boom(tmp_path / 'm')}}, str(path))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(str(path))


def test_process_group_released_after_a_run():
    import torch.distributed as dist
    assert not compat.release_process_group()  # none: nothing to do
    port = free_port()
    init_gloo(0, port, world_size=1)
    assert compat.release_process_group()
    assert not dist.is_initialized()
