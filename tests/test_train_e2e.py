"""Pretraining on real videos through tools/train.py (CPU)."""
import re

import pytest
import torch

from mmvthcl.compat import load_tensors_only
from mmvthcl.models import HierarchicalMemoryBank

from .conftest import run_tool, write_pretrain_config

pytestmark = pytest.mark.slow


def test_pretrain_logs_depth_losses_and_saves_banks(tmp_path, video_list):
    cfg = write_pretrain_config(tmp_path / 'cfg.py', video_list, max_iters=2)
    work = tmp_path / 'work'
    out = run_tool('tools/train.py', cfg, '--work-dir', work).stdout
    logged = re.findall(r'Iter\(train\) \[(\d)/2\].*?loss: (\S+)\s+'
                        r'loss_res3: (\S+).*?loss_res4: (\S+).*?'
                        r'loss_res5: (\S+)', out)
    assert [int(m[0]) for m in logged] == [1, 2], out[-3000:]
    for m in logged:
        values = [float(v) for v in m[1:]]
        assert all(torch.isfinite(torch.tensor(values)))
        assert values[0] == pytest.approx(sum(values[1:]), rel=1e-3)

    ckpt = load_tensors_only(str(work / 'iter_2.pth'))
    sd = ckpt['state_dict']
    # 6 videos → 6 rows; unshuffled batches of 2 → iterations trained 0..3
    initial = HierarchicalMemoryBank(num_samples=6)
    for i, key in enumerate(initial.keys):
        bank = sd[f'head.memory.bank_{key[0]}_{key[1]}']
        assert bank.shape == (6, 128)
        changed = (bank != initial.bank(*key)).any(dim=1)
        assert changed.tolist() == [True] * 4 + [False] * 2, key
    assert int(sd['head.memory.num_updates']) == 2
    # resuming such a checkpoint through tools/train.py --resume (a full
    # MMEngine checkpoint on torch >= 2.6, no environment variable) is
    # tests/test_resume.py's: bit-identical to an uninterrupted run


def test_pretrain_with_the_compiled_head(tmp_path, video_list):
    """``model.head.compile=True`` through tools/train.py: the runner's
    steps, hooks and checkpoint work with the compiled head, and the
    checkpoint has the eager model's keys (nothing of the compiler's)."""
    cfg = write_pretrain_config(
        tmp_path / 'cfg.py', video_list, max_iters=2,
        extra='model = dict(head=dict(num_negatives=4, compile=True))')
    work = tmp_path / 'work'
    out = run_tool('tools/train.py', cfg, '--work-dir', work,
                   timeout=900).stdout
    losses = re.findall(r'Iter\(train\) \[\d/2\].*?loss: (\S+)', out)
    assert len(losses) == 2, out[-3000:]
    assert all(torch.isfinite(torch.tensor(float(v))) for v in losses)
    sd = load_tensors_only(str(work / 'iter_2.pth'))['state_dict']
    assert int(sd['head.memory.num_updates']) == 2
    from mmaction.registry import MODELS
    from mmengine.config import Config
    model_cfg = Config.fromfile(cfg).model
    model_cfg.head.compile = False
    assert sd.keys() == MODELS.build(model_cfg).state_dict().keys()


def test_bank_size_must_match_the_dataset(tmp_path, video_list):
    cfg = write_pretrain_config(
        tmp_path / 'cfg.py', video_list,
        extra='model = dict(head=dict(num_negatives=4, memory=dict('
        'num_samples=100)))')
    out = run_tool('tools/train.py', cfg, '--work-dir', tmp_path / 'w',
                   check=False)
    assert out.returncode != 0
    assert 'model.head.memory.num_samples=100 does not match the training ' \
        'set (6 samples' in out.stdout
