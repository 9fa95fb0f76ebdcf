"""Reliability: bad videos, bad annotation lines, numerical safety, checkpoint
loading that runs nothing from the file, and run-start config validation.

Bad-video fixtures are made from the shared real videos: a copy cut in half,
an empty file, a text file named ``.mp4``, a truncated AVI (which makes decord
0.6.0 crash the process, so the container check must catch it first), a
one-frame and an all-black MP4 written with OpenCV.
"""
import json
import os
import os.path as osp
import random
import re

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import DefaultSampler, pseudo_collate
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from mmaction.registry import DATASETS, MODELS
from mmvthcl.compat import load_tensors_only
from mmvthcl.datasets import (BadVideoError, ResumableSampler,
                              RobustVideoDataset, SeededIndex,
                              probe_video_file)
from mmvthcl.models import HierarchicalMemoryBank

from .conftest import (R18_CONFIG, ROOT, VIDEOS, Boom, free_port,
                       init_gloo, load_tool, run_tool)

R50_CONFIG = osp.join(ROOT, 'configs', 'vthcl_r50_k400.py')
GOOD = ['demo.mp4', 'demo_skeleton.mp4', 'demo_spatiotemporal_det.mp4',
        'test.avi', 'test.mp4', 'test_video_structuralize.mp4']

# --------------------------------------------------------------- helpers
# Hooks the end-to-end tests add to a run (imported by tools/train.py
# through custom_imports from a directory put on PYTHONPATH).
HELPERS = '''
import json
import os
import random

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmaction.registry import HOOKS


@HOOKS.register_module()
class KillAfterIter(Hook):
    """Ends the process like a pre-emption, right after iteration `iters`
    (and its checkpoint: CheckpointHook runs before, at VERY_LOW)."""
    priority = 'LOWEST'

    def __init__(self, iters):
        self.iters = iters

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.iters:
            os._exit(3)


@HOOKS.register_module()
class RecordSteps(Hook):
    """Per iteration: what the model could draw from the generators, the
    batch's dataset indices and pixel sums, the exact losses."""

    def __init__(self, out):
        self.out = out

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self._rec = dict(
            iter=runner.iter,
            draws=[random.random(), float(np.random.rand()),
                   float(torch.rand(1))],
            sample_idx=[int(s.sample_idx)
                        for s in data_batch['data_samples']],
            inputs={k: float(torch.stack(list(v)).double().sum())
                    for k, v in data_batch['inputs'].items()})

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self._rec['losses'] = {k: float(v) for k, v in outputs.items()}
        with open(self.out, 'a') as f:
            f.write(json.dumps(self._rec) + '\\n')


@HOOKS.register_module()
class NaNAtIter(Hook):
    """Makes one projection output NaN from iteration `iter` on."""

    def __init__(self, iter, projection='res4_fast'):
        self.iter = iter
        self.projection = projection

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.iter:
            model = runner.model.module if is_model_wrapper(
                runner.model) else runner.model
            model.head.projections[self.projection].register_forward_hook(
                lambda module, args, out: out * float('nan'))
'''


@pytest.fixture(scope='session')
def helpers_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('helpers')
    (root / 'reliability_helpers.py').write_text(HELPERS)
    return str(root)


def write_tiny_config(path, ann_file, data_root=VIDEOS, loop='iter',
                      max_iters=5, max_epochs=2, workers=0, hooks=(),
                      skip_bad_videos=False, ckpt_interval=1, helpers=True,
                      batch_size=2, drop_last=True, extra=''):
    """A tiny R18 pretraining config (base 8, 32 px, 4-frame clips) that
    keeps everything of the shipped one: RobustVideoDataset,
    ResumableSampler (shuffled), ExactResumeHook, BadVideoHook, a cosine
    learning rate. One iteration takes a fraction of a second on CPU."""
    if loop == 'iter':
        train_cfg = ("dict(_delete_=True, type='IterBasedTrainLoop', "
                     f'max_iters={max_iters})')
    else:
        train_cfg = ("dict(type='EpochBasedTrainLoop', "
                     f'max_epochs={max_epochs})')
    imports = ['mmvthcl', 'reliability_helpers'] if helpers else ['mmvthcl']
    text = f"""
_base_ = [{R18_CONFIG!r}]
custom_imports = dict(imports={imports!r}, allow_failed_imports=False)
clip_pipeline = [
    dict(type='Resize', scale=(-1, 40)),
    dict(type='RandomResizedCrop', area_range=(0.2, 1.0)),
    dict(type='Resize', scale=(32, 32), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='ClipColorJitter', p=0.8),
    dict(type='ClipGrayscale', p=0.2),
    dict(type='FormatShape', input_format='NCTHW'),
]
train_dataloader = dict(
    batch_size={batch_size}, drop_last={drop_last}, num_workers={workers},
    persistent_workers={workers > 0},
    dataset=dict(
        ann_file={str(ann_file)!r},
        data_prefix=dict(video={str(data_root)!r}),
        skip_bad_videos={skip_bad_videos},
        pipeline=[
            dict(type='DecordInit'),
            dict(type='TempoPairSampleFrames', clip_len=4, frame_interval=4,
                 alpha=2),
            dict(type='TempoPairDecode', clip_pipeline=clip_pipeline),
            dict(type='PackActionInputs', collect_keys=('imgs', 'imgs_fast'),
                 algorithm_keys=('sample_idx', )),
        ]))
model = dict(backbone=dict(base_channels=8), head=dict(num_negatives=4))
train_cfg = {train_cfg}
param_scheduler = [dict(type='CosineAnnealingLR', T_max=6, eta_min=0,
                        by_epoch=False, begin=0, end=6)]
log_processor = dict(by_epoch={loop == 'epoch'}, window_size=1)
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval={ckpt_interval}, by_epoch=False,
                    max_keep_ckpts=-1))
custom_hooks = [{', '.join(hooks)}]
{extra}
"""
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


def train(cfg, work_dir, helpers_dir, *args, check=True):
    """tools/train.py in a subprocess, one thread (2 shared cores)."""
    return run_tool(
        'tools/train.py', cfg, '--work-dir', work_dir, *args,
        env=dict(OMP_NUM_THREADS='1', PYTHONPATH=helpers_dir + os.pathsep +
                 ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')),
        check=check)


def read_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _write_mp4(path, frames):
    writer = cv2.VideoWriter(
        str(path), cv2.VideoWriter_fourcc(*'mp4v'), 25,
        (frames[0].shape[1], frames[0].shape[0]))
    for frame in frames:
        writer.write(frame)
    writer.release()


@pytest.fixture(scope='module')
def media(tmp_path_factory, shared_videos):
    """A video directory: links to the six real videos and bad files."""
    root = tmp_path_factory.mktemp('media')
    for name in GOOD:
        os.symlink(osp.join(VIDEOS, name), root / name)
    mp4 = open(osp.join(VIDEOS, 'test.mp4'), 'rb').read()
    avi = open(osp.join(VIDEOS, 'test.avi'), 'rb').read()
    (root / 'truncated.mp4').write_bytes(mp4[:len(mp4) // 2])
    (root / 'truncated.avi').write_bytes(avi[:len(avi) // 2])
    (root / 'empty.mp4').write_bytes(b'')
    (root / 'text.mp4').write_text('this is not a video\n' * 20)
    frame = np.full((48, 64, 3), 128, np.uint8)
    frame[10:30, 20:40] = 255
    _write_mp4(root / 'one_frame.mp4', [frame])
    _write_mp4(root / 'black.mp4', [np.zeros((48, 64, 3), np.uint8)] * 6)
    return root


def tempo_pipeline(clip_len=8, frame_interval=8, crop=32):
    clip = [
        dict(type='Resize', scale=(crop, crop), keep_ratio=False),
        dict(type='Flip', flip_ratio=0.5),
        dict(type='ClipColorJitter', p=0.8),
        dict(type='FormatShape', input_format='NCTHW'),
    ]
    return [
        dict(type='DecordInit'),
        dict(type='TempoPairSampleFrames', clip_len=clip_len,
             frame_interval=frame_interval, alpha=2),
        dict(type='TempoPairDecode', clip_pipeline=clip),
        dict(type='PackActionInputs', collect_keys=('imgs', 'imgs_fast'),
             algorithm_keys=('sample_idx', )),
    ]


def make_dataset(tmp_path, media, lines, **kwargs):
    ann = tmp_path / 'ann.txt'
    ann.write_text(''.join(line + '\n' for line in lines))
    kwargs.setdefault('pipeline', tempo_pipeline())
    return RobustVideoDataset(
        str(ann), data_prefix=dict(video=str(media)), **kwargs)


# ----------------------------------------------------------- bad videos
BAD_CASES = [
    ('missing.mp4', 'file not found'),
    ('empty.mp4', r'empty file \(0 bytes\)'),
    ('truncated.mp4', "truncated MP4: box 'mdat' at byte 40 needs"),
    # decord 0.6.0 dies with SIGSEGV on this one: only the container
    # check stands between it and the whole run
    ('truncated.avi', "truncated AVI: chunk 'RIFF' at byte 0 needs"),
    ('text.mp4', "DecordInit cannot read it: .*starts with b'this is not"),
]


@pytest.mark.parametrize('name, reason', BAD_CASES)
def test_bad_video_error_names_file_reason_and_line(tmp_path, media, name,
                                                    reason):
    ds = make_dataset(tmp_path, media, ['test.mp4 0', '', f'{name} 3'])
    assert len(ds) == 2  # blank lines are not samples
    path = osp.join(str(media), name)
    with pytest.raises(BadVideoError) as info:
        ds[1]
    msg = str(info.value)
    assert msg.startswith(f'bad video {path}: ')
    assert re.search(reason, msg), msg
    assert f'(sample 1, line 3 of {tmp_path / "ann.txt"})' in msg
    assert 'skip_bad_videos=True' in msg
    assert info.value.path == path


def test_bad_video_error_crosses_worker_processes(tmp_path, media):
    ds = make_dataset(tmp_path, media, ['empty.mp4 0'])
    loader = DataLoader(ds, batch_size=1, num_workers=1,
                        collate_fn=pseudo_collate)
    with pytest.raises(BadVideoError, match=r'bad video \S*empty.mp4: '
                       r'empty file \(0 bytes\) \(sample 0, line 1 of'):
        next(iter(loader))


def test_probe_accepts_every_real_video(shared_videos, media):
    for path in shared_videos + [str(media / 'one_frame.mp4'),
                                 str(media / 'black.mp4')]:
        assert probe_video_file(path) is None, path


@pytest.mark.parametrize('line, kwargs, match', [
    ('a.mp4 x', {}, "label 'x' is not an integer"),
    ('a.mp4 -3', {}, 'label -3 is negative'),
    ('a.mp4 1 2', {}, '3 fields where "path label" was expected'),
    ('a.mp4 7', dict(num_classes=5), 'label 7 is not below num_classes=5'),
    ('videos/ 1', {}, "the path 'videos/' names a directory"),
    (',3', dict(delimiter=','), 'empty video path'),
    ('a.mp4', dict(multi_class=True, num_classes=5), 'no label'),
])
def test_bad_annotation_lines_name_file_and_line(tmp_path, media, line,
                                                 kwargs, match):
    ok = 'test.mp4,0' if kwargs.get('delimiter') == ',' else 'test.mp4 0'
    with pytest.raises(ValueError) as info:
        make_dataset(tmp_path, media, [ok, ok, line], **kwargs)
    assert f'{tmp_path / "ann.txt"}, line 3: ' in str(info.value)
    assert match in str(info.value)


@pytest.mark.parametrize('name, total', [('one_frame.mp4', 1),
                                         ('demo_spatiotemporal_det.mp4', 57)])
def test_short_videos_load_by_looping(tmp_path, media, name, total):
    # an 8x8 window spans 64 frames: longer than both videos
    ds = make_dataset(tmp_path, media, [f'{name} 0'])
    data = ds[0]
    assert data['inputs']['imgs'].shape == (1, 3, 8, 32, 32)
    assert data['inputs']['imgs_fast'].shape == (1, 3, 16, 32, 32)
    results = ds.pipeline.transforms[1](ds.pipeline.transforms[0](
        ds.get_data_info(0)))
    assert results['total_frames'] == total
    assert results['frame_inds'].tolist() == [
        i % total for i in range(0, 64, 8)]


def test_skipped_video_is_replaced_with_the_replacements_index(
        tmp_path, media):
    lines = ['test.mp4 0', 'empty.mp4 0', 'demo.mp4 0', 'test.avi 0']
    ds = make_dataset(tmp_path, media, lines, skip_bad_videos=True)
    key = SeededIndex(1, seed=7, epoch=2)
    data = ds[key]
    sample = data['data_samples']
    expected = ds.replacement(1, attempt=0, seed=7, epoch=2)
    assert expected != 1
    # the bank row written is the replacement's, never the bad video's
    assert sample.sample_idx == expected
    assert sample.metainfo['bad_videos'] == (
        (osp.join(str(media), 'empty.mp4'), 'empty file (0 bytes)'), )
    # deterministic: the same sample again, whatever the generators hold
    random.random(), np.random.rand(), torch.rand(1)
    again = ds[SeededIndex(1, seed=7, epoch=2)]
    assert again['data_samples'].sample_idx == expected
    for k in ('imgs', 'imgs_fast'):
        assert torch.equal(again['inputs'][k], data['inputs'][k])
    # good samples carry no bad_videos
    assert 'bad_videos' not in ds[SeededIndex(0, 7, 2)][
        'data_samples'].metainfo


def test_too_many_bad_videos_in_a_row_stop(tmp_path, media):
    ds = make_dataset(tmp_path, media,
                      ['empty.mp4 0', 'text.mp4 0', 'missing.mp4 0'],
                      skip_bad_videos=True, max_retries=3)
    with pytest.raises(BadVideoError, match='3 replacements in a row are '
                       'bad videos .*the data, or the storage'):
        ds[0]


def assert_same_numpy_state(got, expected):
    """``np.random.get_state()`` tuples (name, key array, position,
    has_gauss, cached_gaussian) are equal; ``==`` on them would compare the
    key arrays elementwise."""
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert tuple(got[2:]) == tuple(expected[2:])


def test_augmentation_depends_on_seed_epoch_and_index_only(tmp_path, media):
    ds = make_dataset(tmp_path, media, ['test.mp4 0', 'demo.mp4 0'])

    def clips(key):
        data = ds[key]
        return torch.cat([data['inputs']['imgs'].flatten(),
                          data['inputs']['imgs_fast'].flatten()])

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    first = clips(SeededIndex(0, 3, 1))
    # the caller's generators are untouched (loading in the main process
    # must not change what the model draws): Python's, numpy's (its whole
    # state: key array, position and cached Gaussian) and torch's
    assert random.getstate() == state[0]
    assert_same_numpy_state(np.random.get_state(), state[1])
    assert torch.equal(torch.get_rng_state(), state[2])
    np.random.rand(7), torch.rand(3)
    assert torch.equal(clips(SeededIndex(0, 3, 1)), first)
    assert not torch.equal(clips(SeededIndex(0, 3, 2)), first)  # epoch
    assert not torch.equal(clips(SeededIndex(0, 4, 1)), first)  # seed
    # a worker process gives the same clips
    loader = DataLoader(ds, batch_size=1, num_workers=1,
                        collate_fn=pseudo_collate,
                        sampler=[SeededIndex(0, 3, 1)])
    batch = next(iter(loader))
    assert torch.equal(
        torch.cat([batch['inputs']['imgs'][0].flatten(),
                   batch['inputs']['imgs_fast'][0].flatten()]), first)


def test_repeat_dataset_keeps_per_sample_seeds(tmp_path, media, caplog):
    """Through a RepeatDataset (index % length) the sample still draws its
    augmentation from (seed, epoch, the index the sampler drew): the same
    clips whatever the caller's generators, the unwrapped dataset's clips
    for the first repeat, other clips for the next repeat of the same
    video; a discarded index is still not loaded. A wrapper that looks
    indices up in a table hands over plain ones, and the check the resume
    hook makes says so."""
    from mmengine.dataset import RepeatDataset

    from mmvthcl.datasets.samplers import keeps_sample_seeds
    ds = make_dataset(tmp_path, media, ['test.mp4 0', 'demo.mp4 1'])
    repeated = RepeatDataset(ds, times=3)

    def clips(dataset, key):
        data = dataset[key]
        return torch.cat([data['inputs']['imgs'].flatten(),
                          data['inputs']['imgs_fast'].flatten()])

    key = SeededIndex(3, 5, 2)  # video 1, second repeat
    inner = key % 2
    assert (type(inner), int(inner), inner.seed, inner.epoch, inner.drawn) \
        == (SeededIndex, 1, 5, 2, 3)
    assert type(key % 2.0) is float and type(key + 1) is int
    import pickle
    back = pickle.loads(pickle.dumps(inner))
    assert (int(back), back.seed, back.epoch, back.drawn) == (1, 5, 2, 3)

    np.random.seed(0)
    first = clips(repeated, key)
    np.random.seed(1), torch.manual_seed(1), random.seed(1)
    assert torch.equal(clips(repeated, key), first)
    assert repeated[key].get('data_samples').sample_idx == 1
    assert torch.equal(clips(repeated, SeededIndex(1, 5, 2)),
                       clips(ds, SeededIndex(1, 5, 2)))
    assert not torch.equal(clips(repeated, SeededIndex(1, 5, 2)), first)
    assert repeated[SeededIndex(5, 5, 2, discard=True)] == dict(discarded=1)

    assert keeps_sample_seeds(ds) and keeps_sample_seeds(repeated)

    class TableLookup:
        """A wrapper that maps indices by a table, as ClassBalancedDataset
        does (which cannot wrap a video dataset: it needs class ids)."""
        dataset, table = ds, [0, 0, 1]

        def _get_ori_dataset_idx(self, idx):
            return self.table[idx]

        def __len__(self):
            return len(self.table)

    assert not keeps_sample_seeds(TableLookup())

    import logging
    from types import SimpleNamespace

    from mmvthcl.engine.hooks import ExactResumeHook
    for dataset, warns in ((repeated, False), (TableLookup(), True)):
        caplog.clear()
        loader = SimpleNamespace(dataset=dataset,
                                 sampler=ResumableSampler(dataset, seed=0))
        ExactResumeHook().before_train(SimpleNamespace(
            train_dataloader=loader, iter=0,
            logger=logging.getLogger('resume')))
        assert ('TableLookup, which hands its inner dataset plain indices'
                in caplog.text) == warns, caplog.text


def test_resumable_sampler_keeps_default_order_and_skips(tmp_path, media):
    ds = make_dataset(tmp_path, media, [f'{n} 0' for n in GOOD])
    stock = DefaultSampler(ds, shuffle=True, seed=5)
    ours = ResumableSampler(ds, shuffle=True, seed=5)
    for epoch in (0, 3):
        stock.set_epoch(epoch)
        ours.set_epoch(epoch)
        keys = list(ours)
        assert keys == list(stock)
        assert all(k.seed == 5 and k.epoch == epoch and not k.discard
                   for k in keys)
    order = list(stock)
    ours.skip_next(4)
    assert len(ours) == 2
    assert list(ours) == order[4:]
    assert len(ours) == 2  # for the pass just made
    assert list(ours) == order and len(ours) == 6  # the next pass is whole
    with pytest.raises(ValueError, match='cannot skip 7 samples'):
        ours.skip_next(7)
    # discarded indices are not loaded at all
    ours.discard_next(3)
    keys = list(ours)
    assert [k.discard for k in keys] == [True] * 3 + [False] * 3
    assert ds[keys[0]] == dict(discarded=int(keys[0]))
    import pickle
    back = pickle.loads(pickle.dumps(keys[0]))
    assert (type(back), int(back), back.seed, back.epoch, back.discard) == (
        SeededIndex, int(keys[0]), 5, 3, True)


def test_resume_hook_restores_sampler_seed_and_epoch_position(tmp_path,
                                                              media):
    """With randomness.seed=None a resumed run's sampler gets a new seed:
    the checkpoint's is put back; a mid-epoch position becomes a skip."""
    import logging
    from types import SimpleNamespace

    from mmvthcl.engine.hooks import ExactResumeHook
    ds = make_dataset(tmp_path, media, [f'{n} 0' for n in GOOD])

    def runner_with(seed, it=0, epoch=0):
        sampler = ResumableSampler(ds, seed=seed)
        loader = DataLoader(ds, batch_size=2, sampler=sampler)
        return SimpleNamespace(train_dataloader=loader, iter=it, epoch=epoch,
                               train_loop=SimpleNamespace(),
                               logger=logging.getLogger('resume'),
                               seed=seed), sampler

    saving, _ = runner_with(seed=11)
    checkpoint = dict(meta=dict(epoch=1, iter=4))
    ExactResumeHook().before_save_checkpoint(saving, checkpoint)
    assert checkpoint['meta']['sampler_seed'] == 11

    resumed, sampler = runner_with(seed=99, it=4, epoch=1)
    hook = ExactResumeHook()
    hook.after_load_checkpoint(resumed, checkpoint)
    hook.before_train(resumed)
    assert sampler.seed == 11
    hook.before_train_epoch(resumed)  # 3 batches per epoch, 1 trained
    sampler.set_epoch(1)
    stock = DefaultSampler(ds, seed=11)
    stock.set_epoch(1)
    assert list(sampler) == list(stock)[2:]


def test_resume_hook_discards_the_redrawn_batches_of_an_iteration_loop(
        tmp_path, media):
    """Resumed at iteration 4 of an iteration loop (6 samples, batch 2),
    the loop re-draws 4 batches to move its sampler: exactly those 8
    indices are marked discarded, the next is loaded."""
    import logging
    from types import SimpleNamespace

    from mmengine.runner import IterBasedTrainLoop
    from mmengine.runner.loops import _InfiniteDataloaderIterator

    from mmvthcl.engine.hooks import ExactResumeHook
    ds = make_dataset(tmp_path, media, [f'{n} 0' for n in GOOD])
    sampler = ResumableSampler(ds, seed=3)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, drop_last=True,
                        collate_fn=pseudo_collate)
    loop = IterBasedTrainLoop.__new__(IterBasedTrainLoop)
    loop.dataloader = loader
    loop.dataloader_iterator = _InfiniteDataloaderIterator(loader)
    runner = SimpleNamespace(train_dataloader=loader, iter=4, epoch=0,
                             train_loop=loop, seed=3,
                             logger=logging.getLogger('resume'))
    hook = ExactResumeHook()
    hook.after_load_checkpoint(runner, dict(meta=dict(sampler_seed=3)))
    hook.before_train(runner)
    marks = [k.discard for k in list(sampler) + list(sampler)]
    assert marks == [True] * 8 + [False] * 4


def test_resume_hook_reseeds_from_the_iteration():
    """Before every iteration the main process's generators are seeded
    from (seed, iteration): the same draws at the same iteration whatever
    was drawn before, other draws at another iteration or seed."""
    from types import SimpleNamespace

    from mmvthcl.engine.hooks import ExactResumeHook
    hook = ExactResumeHook()

    def draws(seed, it):
        random.random(), np.random.rand(3), torch.rand(5)  # earlier draws
        hook.before_train_iter(SimpleNamespace(seed=seed, iter=it), 0)
        return (random.random(), float(np.random.rand()),
                float(torch.rand(1)))

    assert draws(1, 5) == draws(1, 5)
    assert draws(1, 5) != draws(1, 6)
    assert draws(1, 5) != draws(2, 5)


def test_seed_generators_depend_on_every_part_of_the_key():
    """Per-sample augmentation and retries are seeded with keys of several
    integers (seed, epoch, index, attempt): changing any one of them, the
    last included, changes every generator's draws."""
    from mmvthcl.utils import seed_generators

    def draws(*key):
        seed_generators(*key, cuda=False)
        return (random.random(), float(np.random.rand()),
                float(torch.rand(1)))

    key = (7, 2, 11, 0)
    base = draws(*key)
    assert draws(*key) == base
    for i in range(len(key)):
        other = list(key)
        other[i] += 1
        assert all(a != b for a, b in zip(draws(*other), base)), i


def test_shipped_configs_use_the_reliable_parts():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'vthcl_r18_k400.py'))
    data = cfg.train_dataloader
    assert data.dataset.type == 'RobustVideoDataset'
    assert data.dataset.skip_bad_videos is False
    assert data.sampler.type == 'ResumableSampler'
    assert cfg.default_hooks.exact_resume.type == 'ExactResumeHook'
    assert cfg.default_hooks.bad_videos == dict(
        type='BadVideoHook', max_bad_fraction=0.01)
    assert DATASETS.get('RobustVideoDataset') is RobustVideoDataset


@pytest.mark.parametrize('depth', [18, 50])
def test_shipped_configs_hold_the_documented_recipe(depth):
    """The values README's "Defaults" table documents, in both pretraining
    configs: K, T, the bank momentum, the clips, the crop, the colour
    probabilities, the optimiser and the batch."""
    cfg = Config.fromfile(
        osp.join(ROOT, 'configs', f'vthcl_r{depth}_k400.py'))
    head = cfg.model.head
    assert cfg.model.backbone.depth == depth
    assert (head.num_negatives, head.temperature, head.feat_dim) == (
        16384, 0.07, 128)
    assert head.depths == ('res3', 'res4', 'res5')
    assert head.loss_weights == (1.0, 1.0, 1.0)
    assert head.memory.momentum == 0.5 and not head.per_sample_negatives
    assert not cfg.model.share_encoder
    steps = {t['type']: t for t in cfg.train_dataloader.dataset.pipeline}
    sampler = steps['TempoPairSampleFrames']
    assert (sampler.clip_len, sampler.frame_interval, sampler.alpha,
            sampler.same_num_frames) == (8, 8, 2, False)
    assert not steps['TempoPairDecode'].share_crop
    clip = {t['type']: t for t in cfg.clip_pipeline}
    assert clip['RandomResizedCrop'].area_range == (0.2, 1.0)
    assert clip['Flip'].flip_ratio == 0.5
    assert (clip['ClipColorJitter'].p, clip['ClipGrayscale'].p) == (0.8, 0.2)
    sgd = cfg.optim_wrapper.optimizer
    assert (sgd.type, sgd.momentum, sgd.weight_decay) == ('SGD', 0.9, 1e-4)
    # 0.03 x total batch / 256, 8 GPUs x 8 clips
    assert cfg.train_dataloader.batch_size == 8
    assert cfg.auto_scale_lr.base_batch_size == 64
    assert sgd.lr == pytest.approx(0.03 * 64 / 256)
    assert cfg.train_cfg.max_epochs == 100
    assert cfg.param_scheduler[0].type == 'CosineAnnealingLR'


def _bad_run_ann(tmp_path):
    # 6 good videos and 2 bad ones, at indices 2 and 5
    names = GOOD[:2] + ['empty.mp4'] + GOOD[2:4] + ['text.mp4'] + GOOD[4:]
    ann = tmp_path / 'ann.txt'
    ann.write_text(''.join(f'{n} 0\n' for n in names))
    return ann


@pytest.mark.slow
def test_bad_video_stops_a_default_run_naming_it(tmp_path, media,
                                                 helpers_dir):
    ann = _bad_run_ann(tmp_path)
    cfg = write_tiny_config(tmp_path / 'cfg.py', ann, data_root=media,
                            loop='epoch', max_epochs=1, workers=2,
                            ckpt_interval=100)
    proc = train(cfg, tmp_path / 'work', helpers_dir, check=False)
    assert proc.returncode != 0
    # the last line of the output says what is wrong and where
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        r'mmvthcl\.datasets\.video_checks\.BadVideoError: bad video '
        + re.escape(str(media)) + r'/(empty\.mp4: empty file \(0 bytes\) '
        r'\(sample 2, line 3|text\.mp4: DecordInit cannot read it: .* '
        r'\(sample 5, line 6) of ' + re.escape(str(ann)) +
        r'\); fix or remove it, or pass skip_bad_videos=True to the '
        r'dataset to train on without it', last), last


@pytest.mark.slow
def test_skip_bad_videos_end_to_end(tmp_path, media, helpers_dir):
    ann = _bad_run_ann(tmp_path)
    rec = tmp_path / 'steps.jsonl'
    cfg = write_tiny_config(
        tmp_path / 'cfg.py', ann, data_root=media, loop='epoch',
        max_epochs=1, workers=2, skip_bad_videos=True,
        hooks=[f"dict(type='RecordSteps', out={str(rec)!r})"],
        ckpt_interval=100, extra="default_hooks.update(bad_videos=dict("
        "type='BadVideoHook', max_bad_fraction=0.25))")
    work = tmp_path / 'work'
    out = train(cfg, work, helpers_dir).stdout
    for name, reason in (('empty.mp4', 'empty file (0 bytes)'),
                         ('text.mp4', 'DecordInit cannot read it')):
        path = osp.join(str(media), name)
        # logged once, with the reason
        assert out.count(f'bad video {path}: ') == 1, out[-4000:]
        assert f'bad video {path}: {reason}' in out
    assert re.search(r'2 of the 10 videos read in this run were bad '
                     r'\(20\.000%\) and replaced by other instances; 2 '
                     r'distinct files; listed in \S*bad_videos.txt', out)
    listed = (work / 'bad_videos.txt').read_text().splitlines()
    assert [line.split('\t')[0] for line in listed] == [
        osp.join(str(media), 'empty.mp4'), osp.join(str(media), 'text.mp4')]

    trained = [i for r in read_records(rec) for i in r['sample_idx']]
    assert len(trained) == 8 and not {2, 5} & set(trained)
    banks = load_tensors_only(str(work / 'iter_4.pth'))['state_dict']
    initial = HierarchicalMemoryBank(num_samples=8)
    for d, t in initial.keys:
        bank = banks[f'head.memory.bank_{d}_{t}']
        changed = (bank != initial.bank(d, t)).any(dim=1).tolist()
        # the bad videos' rows never receive the replacements' features
        assert changed == [i in trained for i in range(8)], (d, t)


@pytest.mark.slow
def test_too_many_bad_videos_stop_the_run(tmp_path, media, helpers_dir):
    ann = _bad_run_ann(tmp_path)
    cfg = write_tiny_config(
        tmp_path / 'cfg.py', ann, data_root=media, loop='epoch',
        max_epochs=1, skip_bad_videos=True, ckpt_interval=100,
        extra="default_hooks.update(bad_videos=dict(type='BadVideoHook', "
        'max_bad_fraction=0.1, interval=1, min_samples=4))')
    proc = train(cfg, tmp_path / 'work', helpers_dir, check=False)
    assert proc.returncode != 0
    msg = re.search(r'RuntimeError: (\d+ of the .*)', proc.stdout).group(1)
    assert 'more than BadVideoHook.max_bad_fraction=0.1' in msg
    assert osp.join(str(media), 'empty.mp4') + ' (empty file (0 bytes))' \
        in msg
    # stopped at the first check past min_samples, not at the end
    assert 'Epoch(train) [1][4/4]' not in proc.stdout


def _bad_video_hook_rank(rank, port, work_dir, out):
    """One rank of a 2-process gloo group: 4 samples, some bad, and the end
    of an epoch under two limits."""
    import logging
    from types import SimpleNamespace

    import torch.distributed as dist
    from mmengine.structures import BaseDataElement

    from mmvthcl.engine.hooks import BadVideoHook
    init_gloo(rank, port)
    runner = SimpleNamespace(epoch=0, max_epochs=1, iter=0,
                             logger=logging.getLogger(f'rank{rank}'),
                             work_dir=work_dir)
    # rank 0: 1 bad of 5 read (20%), rank 1: 2 of 6 (33%); together 3 of 11
    samples = [BaseDataElement() for _ in range(4)]
    for i in range(rank + 1):
        samples[i].set_metainfo(dict(bad_videos=(
            (f'/data/r{rank}_{i}.mp4', 'empty file (0 bytes)'), )))
    results = []
    for limit in (0.3, 0.25):
        hook = BadVideoHook(max_bad_fraction=limit, interval=0)
        hook.before_train_epoch(runner)
        hook.after_train_iter(runner, 0, dict(data_samples=samples))
        try:
            hook.after_train_epoch(runner)
            results.append('ok')
        except RuntimeError as e:
            results.append(str(e))
    with open(out, 'w') as f:
        json.dump(results, f)
    dist.destroy_process_group()


def test_bad_video_counts_are_summed_over_ranks(tmp_path):
    import torch.multiprocessing as mp
    port = free_port()
    outs = [str(tmp_path / f'rank{r}.json') for r in range(2)]
    ctx = mp.get_context('spawn')
    procs = [ctx.Process(target=_bad_video_hook_rank,
                         args=(r, port, str(tmp_path), outs[r]))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    (ok0, stop0), (ok1, stop1) = [json.load(open(o)) for o in outs]
    # 27% overall is under 0.3: both ranks go on (rank 1 alone would stop)
    assert ok0 == ok1 == 'ok'
    listed = (tmp_path / 'bad_videos.txt').read_text().splitlines()
    assert [line.split('\t')[0] for line in listed] == [
        '/data/r0_0.mp4', '/data/r1_0.mp4', '/data/r1_1.mp4']
    # over 0.25: every rank stops, with the global numbers and all paths
    assert stop0 == stop1
    assert stop0.startswith(
        '3 of the 11 videos read in this run were bad (27.27%), more than '
        'BadVideoHook.max_bad_fraction=0.25: /data/r0_0.mp4 (empty file (0 '
        'bytes)); /data/r1_0.mp4')


def test_bad_video_limits_at_their_boundaries(tmp_path):
    """The run stops when the bad fraction exceeds max_bad_fraction (at
    it, it goes on); intermediate checks wait for min_samples videos, the
    end of an epoch does not."""
    import logging
    from types import SimpleNamespace

    from mmaction.structures import ActionDataSample
    from mmvthcl.engine.hooks import BadVideoHook

    def batch(bad):
        samples = []
        for i in range(4):
            ds = ActionDataSample()
            if i < bad:
                ds.set_metainfo(dict(bad_videos=((f'/d/{i}.mp4', 'x'), )))
            samples.append(ds)
        return dict(data_samples=samples)

    def run(hook, bad_per_batch, epoch_end=True):
        runner = SimpleNamespace(epoch=0, iter=0, max_epochs=1,
                                 work_dir=str(tmp_path),
                                 logger=logging.getLogger('bad'))
        hook.before_train_epoch(runner)
        for i, bad in enumerate(bad_per_batch):
            runner.iter = i
            hook.after_train_iter(runner, i, batch(bad))
        if epoch_end:
            hook.after_train_epoch(runner)

    # 1 bad + its replacement among 5 reads (4 samples + 1 retry): 0.2
    run(BadVideoHook(max_bad_fraction=0.2, interval=0), [1])
    with pytest.raises(RuntimeError, match=r'1 of the 5 videos read'):
        run(BadVideoHook(max_bad_fraction=0.19, interval=0), [1])
    # checked every iteration, but only once 10 videos have been read
    hook = BadVideoHook(max_bad_fraction=0.1, interval=1, min_samples=10)
    run(hook, [1], epoch_end=False)  # 5 read: too few to judge
    with pytest.raises(RuntimeError, match=r'2 of the 10 videos read'):
        run(hook, [1], epoch_end=False)  # the same epoch goes on: 10 read


# --------------------------------------------------- numerical safety
def _tiny_vthcl(num_samples=4):
    cfg = Config.fromfile(R18_CONFIG).model
    cfg.backbone.base_channels = 8
    cfg.head.num_negatives = 3
    cfg.head.memory.num_samples = num_samples
    return MODELS.build(cfg)


def test_all_black_clips_train_without_nan(tmp_path, media):
    ds = make_dataset(tmp_path, media, ['black.mp4 0', 'black.mp4 0'],
                      pipeline=tempo_pipeline(4, 4))
    batch = pseudo_collate([ds[0], ds[1]])
    assert all(int(x.max()) == 0 for x in batch['inputs']['imgs'])
    torch.manual_seed(0)
    model = _tiny_vthcl()
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    from mmengine.optim import OptimWrapper
    wrapper = OptimWrapper(optim)
    for _ in range(2):  # a second step reads the rows the first wrote
        log = model.train_step(batch, wrapper)
        assert all(torch.isfinite(v) for v in log.values()), log
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(torch.isfinite(b).all() for b in model.buffers())


def test_bank_row_that_cancels_to_zero_stays_finite():
    model = _tiny_vthcl()
    head, memory = model.head, model.head.memory
    index = torch.tensor([0, 1])
    # features opposite to the rows: β·m + (1 − β)·v = 0 with β = 0.5
    feats = {key: -memory.bank(*key)[index] for key in memory.keys}
    memory.update(index, feats)
    zero = memory.bank(*memory.keys[0])[0]
    assert torch.equal(zero, torch.zeros_like(zero))
    emb = {d: torch.nn.functional.normalize(torch.randn(2, 128), dim=1)
           for d in head.depths}
    losses = head.loss(emb, emb, index)
    assert all(torch.isfinite(v) for v in losses.values())
    zeros = {d: torch.zeros(2, 128) for d in head.depths}
    losses = head.loss(zeros, zeros, index)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(memory.bank(*k)).all() for k in memory.keys)


# ------------------------------------------ config validation at run start
def test_k_larger_than_the_bank_sized_from_the_dataset(tmp_path,
                                                       video_list):
    cfg = Config.fromfile(write_tiny_config(
        tmp_path / 'cfg.py', video_list, helpers=False,
        extra="model['head']['num_negatives'] = 100"))
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=r'head.num_negatives=100 is larger '
                       r'than the memory bank \(6 samples\)'):
        runner.train()


def test_banks_follow_the_instances_behind_dataset_wrappers(
        tmp_path, video_list):
    """Samples carry their inner dataset's index: through RepeatDataset the
    banks get one row per video, not per repeat; a ConcatDataset, whose
    parts would share rows, is refused."""
    cfg = Config.fromfile(write_tiny_config(
        tmp_path / 'cfg.py', video_list, helpers=False, max_iters=1,
        extra="train_dataloader['dataset'] = dict(_delete_=True, "
        "type='RepeatDataset', times=3, dataset=dict("
        "type='RobustVideoDataset', **train_dataloader['dataset']))"))
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert len(runner.train_dataloader.dataset) == 18
    assert runner.model.head.memory.num_samples == 6

    from mmengine.dataset import ConcatDataset

    from mmvthcl.engine.hooks.memory_bank_hook import instance_dataset
    inner = runner.train_dataloader.dataset.dataset
    assert instance_dataset(runner.train_dataloader.dataset) is inner
    with pytest.raises(ValueError, match='is a ConcatDataset'):
        instance_dataset(ConcatDataset([inner, inner]))


# ------------------------------------------------- tensors-only loading
@pytest.fixture
def evil(tmp_path):
    """A tiny VTHCL checkpoint whose meta runs a command when unpickled,
    and the same backbone in the exported (prefixed) form."""
    torch.manual_seed(0)
    model = _tiny_vthcl()
    marker = tmp_path / 'pwned'
    full = tmp_path / 'evil_full.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'hub': Boom(marker)}}, str(full))
    prefixed = tmp_path / 'evil_backbone.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in
                               model.backbone.state_dict().items()},
                'meta': {'hub': Boom(marker)}}, str(prefixed))
    return dict(model=model, marker=marker, full=str(full),
                prefixed=str(prefixed))


def _same(got, expected):
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_export_backbone_runs_nothing_from_the_checkpoint(evil, tmp_path):
    tool = load_tool('export_backbone')
    out = tmp_path / 'out.pth'
    tool.main([evil['full'], str(out)])
    assert not evil['marker'].exists()
    sd = torch.load(str(out), weights_only=True)['state_dict']
    _same({k[len('backbone.'):]: v for k, v in sd.items()},
          evil['model'].backbone.state_dict())
    # the file does run code when fully unpickled: the test is meaningful
    torch.load(evil['full'], weights_only=False)
    assert evil['marker'].exists()


def test_visualize_icm_runs_nothing_from_the_checkpoint(evil, tmp_path,
                                                        video_list):
    tool = load_tool('visualize_icm')
    cfg = write_tiny_config(
        tmp_path / 'cfg.py', video_list, helpers=False,
        extra="model['head']['num_negatives'] = 3")
    out = tmp_path / 'icm.png'
    tool.main([cfg, evil['full'], osp.join(VIDEOS, 'test.mp4'), '--out',
               str(out), '--size', '32'])
    assert out.exists() and not evil['marker'].exists()


def test_transfer_config_fields_run_nothing_from_the_checkpoint(
        evil, tmp_path):
    """load_from (recognition), detector init_cfg (AVA) and
    backbone.pretrained all go through the patched MMEngine loader."""
    expected = evil['model'].backbone.state_dict()
    rec = Config.fromfile(osp.join(
        ROOT, 'configs', 'recognition',
        'slowonly_vthcl-k400-pre-r18_8xb8-8x8x1-100e_ucf101-split1-rgb.py'))
    rec.model.backbone.base_channels = 8
    rec.model.cls_head.in_channels = 64
    rec.load_from = evil['prefixed']
    rec.work_dir = str(tmp_path / 'rec')
    runner = Runner.from_cfg(rec)
    runner.load_or_resume()
    _same(runner.model.backbone.state_dict(), expected)

    det = Config.fromfile(osp.join(
        ROOT, 'configs', 'detection',
        'slowonly_vthcl-k400-pre-r18_8xb16-8x8x1-20e_ava21-rgb.py'))
    det.model.backbone.base_channels = 8
    det.model.init_cfg.checkpoint = evil['prefixed']
    detector = MODELS.build(det.model)
    detector.init_weights()
    _same(detector.backbone.state_dict(), expected)

    bare = tmp_path / 'evil_bare.pth'
    torch.save({'state_dict': evil['model'].backbone.state_dict(),
                'meta': {'hub': Boom(evil['marker'])}}, str(bare))
    backbone = MODELS.build(dict(
        type='ResNet3dSlowOnly', depth=18, base_channels=8,
        pretrained=str(bare), pretrained2d=False, lateral=False,
        conv1_kernel=(1, 7, 7), inflate=(0, 0, 1, 1)))
    backbone.init_weights()
    _same(backbone.state_dict(), expected)
    assert not evil['marker'].exists()


@pytest.mark.parametrize('n, batch, drop_last, round_up, expected', [
    (10, 2, True, True, [2, 2, 2]),     # padded to 4 each
    (10, 2, True, False, [2, 1, 1]),    # 4, 3, 3 samples
    (10, 4, False, False, [1, 1, 1]),
    (9, 2, False, False, [2, 2, 2]),
])
def test_batches_per_rank_follow_the_sampler(monkeypatch, n, batch,
                                             drop_last, round_up, expected):
    from mmengine.dataset import DefaultSampler
    from mmengine.dataset import sampler as mmengine_sampler
    from torch.utils.data import DataLoader

    from mmvthcl.engine.hooks.memory_bank_hook import batches_per_rank
    assert batches_per_rank(n, 3, batch, drop_last, round_up) == expected
    # the reference: MMEngine's sampler as each rank builds it, in a loader
    for rank in range(3):
        monkeypatch.setattr(mmengine_sampler, 'get_dist_info',
                            lambda: (rank, 3))
        sampler = DefaultSampler(list(range(n)), shuffle=False,
                                 round_up=round_up)
        loader = DataLoader(list(range(n)), batch_size=batch,
                            sampler=sampler, drop_last=drop_last)
        assert len(list(loader)) == expected[rank]


def test_uneven_batches_over_ranks_are_refused(monkeypatch):
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    from mmengine.dataset import DefaultSampler
    from mmengine.runner import BaseLoop
    from torch.utils.data import DataLoader

    from mmvthcl.engine.hooks import MemoryBankHook
    from mmvthcl.engine.hooks import memory_bank_hook

    class _Loop(BaseLoop):
        def run(self):
            pass

    monkeypatch.setattr(memory_bank_hook, 'get_world_size', lambda: 3)
    hook = MemoryBankHook()
    hook.distributed = True  # as on every rank of a 3-process run
    for round_up, refused in ((False, True), (True, False)):
        dataset = list(range(10))
        loader = DataLoader(dataset, batch_size=2, drop_last=True,
                            sampler=DefaultSampler(dataset,
                                                   round_up=round_up))
        runner = SimpleNamespace(model=_tiny_vthcl(10), hooks=[hook],
                                 logger=MagicMock())
        runner._train_loop = _Loop(runner, loader)
        if refused:
            with pytest.raises(ValueError, match='round_up=False gives the '
                               'ranks 1 or 2 batches'):
                hook.before_run(runner)
        else:
            hook.before_run(runner)


def test_memory_bank_hook_syncs_every_buffer_but_the_banks(monkeypatch):
    """In a distributed run the hook averages the model's buffers after an
    epoch as the stock hook does (BN statistics), never the banks (already
    identical on all ranks), and refuses to run beside a stock
    SyncBuffersHook, which would average them."""
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    from mmengine.hooks import SyncBuffersHook

    from mmvthcl.engine.hooks import MemoryBankHook
    from mmvthcl.engine.hooks import memory_bank_hook
    synced = []
    monkeypatch.setattr(memory_bank_hook, 'all_reduce_params',
                        lambda params, op: synced.extend(params))
    model = _tiny_vthcl(10)
    hook = MemoryBankHook()
    hook.distributed = True  # as on every rank of a 2-process run
    hook.after_train_epoch(SimpleNamespace(model=model, hooks=[hook]))
    ids = {id(b) for b in synced}
    assert not ids & {id(b) for b in model.head.memory.buffers()}
    assert id(model.backbone.conv1.bn.running_mean) in ids
    assert len(ids) == len(list(model.buffers())) - len(
        list(model.head.memory.buffers()))

    runner = SimpleNamespace(model=model, logger=MagicMock(),
                             hooks=[hook, SyncBuffersHook()])
    with pytest.raises(ValueError, match=r"set default_hooks.sync_buffers="
                       r"dict\(type='MemoryBankHook'\)"):
        hook.before_run(runner)


def test_sharded_memory_refuses_save_best_on_every_rank():
    """save_best saves outside the regular saves, for which a sharded
    memory gathers its banks; refused when the run starts."""
    from types import SimpleNamespace

    from mmengine.hooks import CheckpointHook

    from mmvthcl.engine.hooks import MemoryBankHook
    model = MODELS.build(dict(
        type='VTHCL',
        backbone=dict(type='VTHCLResNet3d', depth=18, base_channels=8),
        head=dict(type='HierarchicalContrastiveHead', num_negatives=2,
                  memory=dict(type='HierarchicalMemoryBank', num_samples=8,
                              sharded=True))))
    hook = MemoryBankHook()
    hook.distributed = True  # as on every rank of a multi-GPU run
    runner = SimpleNamespace(
        model=model, hooks=[hook, CheckpointHook(save_best='knn/top1')])
    with pytest.raises(ValueError, match=r'save_best=\['):
        hook.before_run(runner)
    runner.hooks[1] = CheckpointHook(interval=1)
    hook.before_run(runner)  # regular saves only: fine
