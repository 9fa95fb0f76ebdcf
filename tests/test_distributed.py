"""Distributed pretraining on CPU (gloo, 2 processes via dist_train.sh).

Per-sample computation is made batch-independent (BN in eval mode in the
encoders, no norm in φ, deterministic clips), so a 2-process run and a
1-process run over the same global batches must give the same banks.
"""
import os

import pytest
import torch

from mmvthcl.compat import load_tensors_only
from mmvthcl.models import HierarchicalMemoryBank

from .conftest import (ROOT, free_port, init_gloo, run_tool,
                       write_pretrain_config)

pytestmark = pytest.mark.slow

EXTRA = """
custom_imports = dict(imports=['mmvthcl', 'tests.dist_probe'],
                      allow_failed_imports=False)
model = dict(
    backbone=dict(base_channels=8, norm_eval=True),
    head=dict(num_negatives=4, norm_cfg=None))
custom_hooks = [dict(type='DumpRankStateHook')]
"""
DETERMINISTIC_PIPELINE = """[
    dict(type='DecordInit'),
    dict(type='TempoPairSampleFrames', clip_len=4, frame_interval=4,
         alpha=2, test_mode=True),
    dict(type='TempoPairDecode', clip_pipeline=[
        dict(type='Resize', scale=(-1, 40)),
        dict(type='CenterCrop', crop_size=32),
        dict(type='FormatShape', input_format='NCTHW')]),
    dict(type='PackActionInputs', collect_keys=('imgs', 'imgs_fast'),
         algorithm_keys=('sample_idx', )),
]"""


def train(tmp_path, video_list, name, nproc, batch, *cfg_options):
    cfg = write_pretrain_config(tmp_path / f'{name}.py', video_list,
                                max_iters=3, batch_size=batch,
                                pipeline=DETERMINISTIC_PIPELINE, extra=EXTRA)
    work = tmp_path / name
    args = ['bash', os.path.join(ROOT, 'tools', 'dist_train.sh'), cfg,
            str(nproc), '--work-dir', str(work)]
    if cfg_options:
        args += ['--cfg-options', *cfg_options]
    run_tool(*args, env=dict(PORT=str(free_port()), OMP_NUM_THREADS='1'))
    ranks = [torch.load(work / f'rank{r}.pth') for r in range(nproc)]
    return work, ranks


def whole_banks(ranks):
    """Concatenate the rank slices of a sharded memory."""
    names = ranks[0]['banks']
    return {n: torch.cat([r['banks'][n] for r in ranks]) for n in names}


@pytest.fixture(scope='module')
def runs(tmp_path_factory, shared_videos):
    tmp = tmp_path_factory.mktemp('dist')
    ann = tmp / 'videos.txt'
    ann.write_text(''.join(f'{os.path.basename(v)} 0\n'
                           for v in shared_videos))
    return dict(
        two=train(tmp, ann, 'two', 2, 1),
        one=train(tmp, ann, 'one', 1, 2),
        sharded=train(tmp, ann, 'sharded', 2, 1,
                      'model.head.memory.sharded=True'))


def test_ranks_see_different_samples_of_the_same_global_batches(runs):
    _, (r0, r1) = runs['two']
    _, (single, ) = runs['one']
    for a, b, both in zip(r0['indices'], r1['indices'], single['indices']):
        assert len(a) == len(b) == 1 and a != b
        assert sorted(a + b) == sorted(both)


def test_replicated_banks_are_bit_identical_across_ranks(runs):
    _, (r0, r1) = runs['two']
    for name, bank in r0['banks'].items():
        assert bank.shape == (6, 128)
        assert torch.equal(bank, r1['banks'][name]), name


def test_banks_equal_a_one_process_run_over_the_same_global_batch(runs):
    _, (r0, r1) = runs['two']
    _, (single, ) = runs['one']
    for name, bank in r0['banks'].items():
        assert torch.allclose(bank, single['banks'][name], atol=1e-5), name
    # and training did move them, so the equality is not that of two
    # untouched banks: 3 steps of a global batch of 2 over the 6 videos
    # (unshuffled) trained every row once, and every row of every bank
    # differs from the initial ones (the memory's seeded random rows)
    seen = sorted(i for rank in (r0, r1) for step in rank['indices']
                  for i in step)
    assert seen == list(range(6))
    initial = HierarchicalMemoryBank(num_samples=6)
    for depth, tempo in initial.keys:
        name = f'bank_{depth}_{tempo}'
        changed = (r0['banks'][name] != initial.bank(depth, tempo)).any(
            dim=1)
        assert changed.all(), (name, changed.tolist())
    work, _ = runs['two']
    sd = load_tensors_only(str(work / 'iter_3.pth'))['state_dict']
    assert int(sd['head.memory.num_updates']) == 3


def test_sharded_mode_matches_replicated_losses_and_banks(runs):
    _, rep = runs['two']
    work, shard = runs['sharded']
    assert [r['row_offset'] for r in shard] == [0, 3]
    assert all(r['banks']['bank_res5_slow'].shape == (3, 128)
               for r in shard)
    for rank in range(2):
        for a, b in zip(rep[rank]['losses'], shard[rank]['losses']):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-7), k
    whole = whole_banks(shard)
    for name, bank in rep[0]['banks'].items():
        assert torch.allclose(whole[name], bank, atol=1e-6), name
    # the checkpoint holds the banks whole, as a replicated run's does
    sd = load_tensors_only(str(work / 'iter_3.pth'))['state_dict']
    for name, bank in whole.items():
        assert torch.equal(sd[f'head.memory.{name}'], bank), name


def test_depths_that_stop_before_res5_train_under_ddp(tmp_path, video_list):
    """res5 is not trained then; DDP, which waits for a gradient of every
    parameter that requires one, stopped at the second iteration."""
    work, ranks = train(tmp_path, video_list, 'res34', 2, 1,
                        'model.head.depths=[res3,res4]',
                        'model.head.loss_weights=[1.0,1.0]')
    assert [len(r['losses']) for r in ranks] == [3, 3]
    assert all(set(loss) >= {'loss_res3', 'loss_res4'}
               for r in ranks for loss in r['losses'])


def _per_query_negatives_rank(rank, port, batch, out):
    import torch.distributed as dist

    from mmvthcl.models.memories import HierarchicalMemoryBank
    init_gloo(rank, port)
    mem = HierarchicalMemoryBank(depths=('res5', ), num_samples=50)
    shared = mem.sample_negatives((7, ))
    per_query = mem.sample_negatives((batch[rank], 7))
    torch.save(dict(shared=shared, per_query=per_query), f'{out}{rank}.pth')
    dist.destroy_process_group()


def test_per_query_negatives_are_rows_of_one_global_draw(tmp_path):
    """Ranks of 3 and 2 queries get the rows of a 1-process draw for the 5
    (they all got the first rows, the same negatives on every rank);
    shared negatives are the same everywhere."""
    import torch.multiprocessing as mp

    from mmvthcl.models.memories import HierarchicalMemoryBank
    mp.spawn(_per_query_negatives_rank,
             args=(free_port(), (3, 2), str(tmp_path / 'rank')), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pth') for r in range(2)]
    single = HierarchicalMemoryBank(depths=('res5', ), num_samples=50)
    whole = single.sample_negatives((5, 7))
    assert torch.equal(ranks[0]['per_query'], whole[:3])
    assert torch.equal(ranks[1]['per_query'], whole[3:])
    assert torch.equal(ranks[0]['shared'], ranks[1]['shared'])
    assert torch.equal(ranks[0]['shared'], single.sample_negatives((7, )))


def _update_without_hook_rank(rank, port, out):
    import torch.distributed as dist

    from mmvthcl.models.memories import HierarchicalMemoryBank
    init_gloo(rank, port)
    mem = HierarchicalMemoryBank(depths=('res5', ), num_samples=10)
    feats = {k: torch.nn.functional.normalize(torch.randn(2, 128), dim=1)
             for k in mem.keys}
    index = torch.tensor([2 * rank, 2 * rank + 1])
    try:
        mem.update(index, feats)
        refused = ''
    except RuntimeError as e:
        refused = str(e)
    mem.hook_attached = True  # what MemoryBankHook.before_run does
    mem.update(index, feats)
    torch.save(dict(refused=refused, bank=mem.bank('res5', 'slow')),
               f'{out}{rank}.pth')
    dist.destroy_process_group()


def test_distributed_banks_need_the_memory_bank_hook(tmp_path):
    """Without MemoryBankHook the stock buffer sync would average the banks:
    every rank refuses the first update, before any collective."""
    import torch.multiprocessing as mp
    mp.spawn(_update_without_hook_rank,
             args=(free_port(), str(tmp_path / 'rank')), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pth') for r in range(2)]
    for r in ranks:
        assert "sync_buffers=dict(type='MemoryBankHook')" in r['refused']
    assert torch.equal(ranks[0]['bank'], ranks[1]['bank'])
