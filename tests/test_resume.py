"""Exact resume through tools/train.py, and a NaN loss that loses nothing.

A run is killed (``os._exit``, like a pre-emption) right after iteration k
and its checkpoint, then resumed with ``--resume``; its final checkpoint must
equal an uninterrupted run's bit for bit (model, memory banks and
``num_updates``, optimizer, schedulers), and so must every iteration's data
(dataset indices, pixel sums), draws from the main process's generators and
losses. The reference runs load in the main process (``num_workers=0``);
runs with two workers must give the very same numbers, since every sample's
augmentation is seeded from (seed, epoch, index). Everything runs on one
thread, where PyTorch's CPU kernels are deterministic.
"""
import re

import pytest
import torch

from .test_reliability import helpers_dir  # noqa: F401 (a fixture)
from .test_reliability import read_records, train, write_tiny_config

pytestmark = pytest.mark.slow

# run → (loop, batch size, drop_last, length in iterations, checkpoint that
# ends it), over the 6 shared videos
RUNS = {
    'iter': ('iter', 2, True, 5, 'iter_5.pth'),
    'epoch': ('epoch', 2, True, 6, 'iter_6.pth'),
    # passes of a batch of 4 and one of 2
    'iter-partial': ('iter', 4, False, 5, 'iter_5.pth'),
    # passes of one batch of 4; the other 2 indices are drawn, then dropped
    'iter-dropped': ('iter', 4, True, 5, 'iter_5.pth'),
    # the videos twice over through a RepeatDataset (EXTRA)
    'iter-repeat': ('iter', 2, True, 5, 'iter_5.pth'),
}
# config lines of a run, after the dataloader's
EXTRA = {
    'iter-repeat': (
        "train_dataloader['dataset'] = dict(_delete_=True, "
        "type='RepeatDataset', times=2, dataset=dict("
        "type='RobustVideoDataset', **train_dataloader['dataset']))"),
}


def assert_same(a, b, path='checkpoint'):
    """Equal structure, equal plain values, torch.equal tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            assert_same(a[k], b[k], f'{path}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{path}[{i}]')
    else:
        assert a == b, (path, a, b)


def load_run_state(path):
    # the run's own checkpoint, as Runner.resume reads it
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    return {k: ckpt[k] for k in ('state_dict', 'optimizer',
                                 'param_schedulers')}, ckpt['meta']


def logged_losses(stdout):
    return re.findall(r'\[\d+/\d+\] .*?  loss: (\S+)', stdout)


def tiny(tmp_path, name, video_list, run, workers, record, hooks=()):
    loop, batch_size, drop_last, _, _ = RUNS[run]
    return write_tiny_config(
        tmp_path / f'{name}.py', video_list, loop=loop, workers=workers,
        batch_size=batch_size, drop_last=drop_last, extra=EXTRA.get(run, ''),
        hooks=[f"dict(type='RecordSteps', out={str(record)!r})"] +
        list(hooks))


@pytest.fixture(scope='module')
def references(tmp_path_factory, helpers_dir, shared_videos):  # noqa: F811
    """Uninterrupted runs (num_workers=0), made when a test first asks."""
    root = tmp_path_factory.mktemp('reference')
    ann = root / 'videos.txt'
    ann.write_text(''.join(f'{v} 0\n' for v in shared_videos))
    out = {}

    def get(run):
        if run not in out:
            record = root / f'{run}.jsonl'
            cfg = tiny(root, run, str(ann), run, 0, record)
            work = root / run
            stdout = train(cfg, work, helpers_dir).stdout
            out[run] = dict(work=work, records=read_records(record),
                            losses=logged_losses(stdout), ann=str(ann))
        return out[run]

    return get


@pytest.mark.parametrize('run, workers, kill_after', [
    ('iter', 0, 2),
    ('iter', 2, 4),  # the resumed run re-draws a whole pass first
    ('epoch', 0, 3),  # saved after the epoch's last batch, before its end
    ('epoch', 2, 4),  # saved in the middle of the second epoch
    # the re-drawn passes hold fewer (partial last batch) or more (dropped
    # indices) indices than their batches
    ('iter-partial', 0, 3),
    ('iter-dropped', 2, 2),
    # the index the sampler drew seeds the sample through the wrapper
    ('iter-repeat', 2, 3),
])
def test_resumed_run_equals_uninterrupted_run(
        tmp_path, references, helpers_dir, run, workers,  # noqa: F811
        kill_after):
    ref = references(run)
    loop, _, _, n, final = RUNS[run]
    work = tmp_path / 'work'
    first, second = tmp_path / 'first.jsonl', tmp_path / 'second.jsonl'
    cfg = tiny(tmp_path, 'killed', ref['ann'], run, workers, first,
               hooks=[f"dict(type='KillAfterIter', iters={kill_after})"])
    killed = train(cfg, work, helpers_dir, check=False)
    assert killed.returncode == 3, killed.stdout[-3000:]
    assert not (work / final).exists()

    cfg = tiny(tmp_path, 'resumed', ref['ann'], run, workers, second)
    resumed = train(cfg, work, helpers_dir, '--resume',
                    str(work / f'iter_{kill_after}.pth')).stdout
    assert f'iter: {kill_after}' in resumed
    if loop == 'epoch':
        assert 'are skipped' in resumed

    # every iteration: same samples, same pixels, same draws, same losses
    records = read_records(first) + read_records(second)
    assert [r['iter'] for r in records] == list(range(n))
    assert records == ref['records']
    assert logged_losses(killed.stdout) + logged_losses(resumed) == \
        ref['losses']

    got, got_meta = load_run_state(str(work / final))
    expected, meta = load_run_state(str(ref['work'] / final))
    assert_same(got, expected)
    assert (got_meta['epoch'], got_meta['iter']) == (meta['epoch'],
                                                     meta['iter'])
    assert int(got['state_dict']['head.memory.num_updates']) == n


def test_nan_loss_stops_the_run_and_keeps_its_checkpoints(
        tmp_path, references, helpers_dir):  # noqa: F811
    ref = references('iter')
    work = tmp_path / 'work'
    cfg = tiny(tmp_path, 'nan', ref['ann'], 'iter', 0,
               tmp_path / 'steps.jsonl',
               hooks=["dict(type='NaNAtIter', iter=2)"])
    proc = train(cfg, work, helpers_dir, check=False)
    assert proc.returncode != 0
    error = re.search(r'FloatingPointError: (.*)', proc.stdout)
    assert error, proc.stdout[-3000:]
    assert error.group(1).startswith('loss_res4 is nan (depth res4: ')
    # nothing of the failed iteration reached a checkpoint, and the ones
    # written before are intact: equal to the uninterrupted run's
    assert sorted(p.name for p in work.glob('*.pth')) == [
        'iter_1.pth', 'iter_2.pth']
    for name in ('iter_1.pth', 'iter_2.pth'):
        got, _ = load_run_state(str(work / name))
        expected, _ = load_run_state(str(ref['work'] / name))
        assert_same(got, expected)
