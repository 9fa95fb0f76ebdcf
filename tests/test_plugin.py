"""The plugin registers its types and coexists with stock MMAction2 types."""
import subprocess
import sys
import textwrap

import torch
from mmengine.config import Config

from mmaction.registry import (DATA_SAMPLERS, DATASETS, HOOKS, MODELS,
                               TRANSFORMS)

#: every type mmvthcl registers: DESIGN.md's names and the rest of the
#: package's ``register_module`` (grep); a type added to the package and
#: not here fails the test below
REGISTERED = {
    MODELS: ['VTHCL', 'VTHCLResNet3d', 'HierarchicalContrastiveHead',
             'HierarchicalMemoryBank', 'ClipColorDataPreprocessor'],
    TRANSFORMS: ['TempoPairSampleFrames', 'TempoPairDecode',
                 'ClipColorJitter', 'ClipGrayscale'],
    HOOKS: ['ICMHook', 'KNNMonitorHook', 'MemoryBankHook', 'BadVideoHook',
            'ExactResumeHook'],
    DATASETS: ['RobustVideoDataset'],
    DATA_SAMPLERS: ['ResumableSampler'],
}


def test_import_registers_every_type_in_a_fresh_interpreter():
    """After ``import mmvthcl`` alone, each name resolves to mmvthcl's class
    (not a stock type of the same name), and mmvthcl registers nothing
    else."""
    names = {reg.name: names for reg, names in REGISTERED.items()}
    code = textwrap.dedent(f"""
        import mmvthcl
        import mmaction.registry
        from mmengine.registry import Registry
        expected = {names!r}
        # every registry of mmaction, to find types registered elsewhere
        regs = {{r.name: r for r in vars(mmaction.registry).values()
                 if isinstance(r, Registry)}}
        assert set(expected) <= set(regs), sorted(regs)
        wrong = [(r, n) for r, ns in expected.items() for n in ns
                 if not getattr(regs[r].module_dict.get(n), '__module__',
                                '').startswith('mmvthcl.')]
        assert not wrong, wrong
        extra = [(r, n) for r, reg in regs.items()
                 for n, cls in reg.module_dict.items()
                 if getattr(cls, '__module__', '').startswith('mmvthcl.')
                 and n not in expected.get(r, ())]
        assert not extra, extra
        print('ok')
    """)
    out = subprocess.run([sys.executable, '-c', code],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == 'ok'


def test_compiled_mmcv_ops_and_mmdet_are_real():
    import mmcv.ops
    import mmdet.models  # noqa: F401 (needs the compiled ops)
    roi_align = mmcv.ops.RoIAlign(output_size=2, spatial_scale=1.0,
                                  sampling_ratio=2, aligned=True)
    feat = torch.arange(16.).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0., 0., 0., 4., 4.]])
    out = roi_align(feat, rois)
    # 2x2 bins of a 4x4 ramp: each bin's mean is its centre's value
    expected = torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]])
    assert torch.allclose(out, expected)


CONFIG = """
custom_imports = dict(imports=['mmvthcl'], allow_failed_imports=False)
default_scope = 'mmaction'
stock_backbone = dict(type='ResNet3dSlowOnly', depth=18, pretrained=None,
                      pretrained2d=False)
vthcl = dict(
    type='VTHCL',
    backbone=dict(type='VTHCLResNet3d', depth=18, base_channels=8),
    head=dict(type='HierarchicalContrastiveHead', num_negatives=4,
              memory=dict(type='HierarchicalMemoryBank', num_samples=10)))
backbone = dict(type='VTHCLResNet3d', depth=18, base_channels=8)
head = dict(type='HierarchicalContrastiveHead', in_channels=(16, 32, 64),
            num_negatives=4,
            memory=dict(type='HierarchicalMemoryBank', num_samples=10))
memory = dict(type='HierarchicalMemoryBank', num_samples=10)
transforms = [
    dict(type='TempoPairSampleFrames'),
    dict(type='TempoPairDecode'),
    dict(type='ClipColorJitter'),
    dict(type='ClipGrayscale'),
    dict(type='SampleFrames', clip_len=8),
]
hooks = [dict(type='MemoryBankHook'), dict(type='CheckpointHook')]
"""


def test_one_config_builds_plugin_and_stock_types(tmp_path):
    path = tmp_path / 'mixed.py'
    path.write_text(CONFIG)
    cfg = Config.fromfile(str(path))
    built = {key: MODELS.build(cfg[key])
             for key in ('stock_backbone', 'vthcl', 'backbone', 'head',
                         'memory')}
    assert type(built['stock_backbone']).__name__ == 'ResNet3dSlowOnly'
    assert type(built['vthcl']).__name__ == 'VTHCL'
    assert type(built['backbone']).__name__ == 'VTHCLResNet3d'
    assert type(built['head']).__name__ == 'HierarchicalContrastiveHead'
    assert type(built['memory']).__name__ == 'HierarchicalMemoryBank'
    transforms = [TRANSFORMS.build(t) for t in cfg.transforms]
    assert [type(t).__name__ for t in transforms] == [
        t['type'] for t in cfg.transforms
    ]
    hooks = [HOOKS.build(h) for h in cfg.hooks]
    assert [type(h).__name__ for h in hooks] == [h['type'] for h in cfg.hooks]

    x = torch.rand(1, 3, 8, 32, 32)
    assert built['stock_backbone'](x).shape == (1, 512, 8, 1, 1)
    assert [f.shape[1] for f in built['backbone'](x)] == [16, 32, 64]


def test_shipped_configs_load_with_the_plugin():
    import glob
    import os.path as osp
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    paths = sorted(glob.glob(osp.join(root, 'configs', '**', '*.py'),
                             recursive=True))
    assert paths
    for path in paths:
        cfg = Config.fromfile(path)
        assert cfg.default_scope == 'mmaction', path
        text = cfg.pretty_text
        # nothing in a shipped config may reach the network
        for scheme in ('http://', 'https://', 'torchvision://',
                       'open-mmlab://', 'openmmlab://'):
            assert scheme not in text, (path, scheme)
