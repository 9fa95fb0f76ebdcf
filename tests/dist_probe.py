"""Test-only hook: every rank saves its memory slice, losses and indices.

Imported by test configs through ``custom_imports`` so that each process of
a distributed run writes ``work_dir/rank{r}.pth``.
"""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from mmaction.registry import HOOKS
from mmvthcl.engine.hooks.memory_bank_hook import find_memory


@HOOKS.register_module()
class DumpRankStateHook(Hook):
    """Record what this rank saw and ended with."""

    def __init__(self):
        self.losses, self.indices = [], []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses.append({k: float(v) for k, v in outputs.items()})
        self.indices.append(
            [int(ds.sample_idx) for ds in data_batch['data_samples']])

    def after_run(self, runner):
        _, memory = find_memory(runner.model)
        torch.save(
            dict(
                banks={n: getattr(memory, n).clone()
                       for n in memory.bank_names()},
                row_offset=memory.row_offset,
                num_samples=memory.num_samples,
                losses=self.losses,
                indices=self.indices),
            osp.join(runner.work_dir, f'rank{get_rank()}.pth'))
