"""Clip colour augmentation: in the loader, or deferred to the model's device.

The deferred path draws the same parameters and must give the clips the
in-loader path gives, up to rounding: the loader rounds after each of the
four operations, the deferred path composes brightness, contrast and
saturation into one colour map. Its GPU hue shift reproduces OpenCV's 8-bit
HSV conversions bit for bit (tested here on the CPU against OpenCV; widths
are multiples of 64 because OpenCV's scalar code for a row's last few pixels
rounds where its SIMD code truncates). The in-loader path must give
MMAction2's ``ColorJitter`` formulas.
"""
import copy
import random

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope

from mmaction.datasets.transforms import ColorJitter
from mmaction.registry import MODELS, TRANSFORMS
from mmaction.structures import ActionDataSample
from mmvthcl.datasets.transforms.clip_augment import (
    _GREY, _ON, COLOR_PARAMS_FAST_KEY, COLOR_PARAMS_KEY, ClipColorJitter,
    ClipGrayscale, _shift_hue, _shift_hue_arith, _shift_hue_cpu,
    apply_color_params)
from mmvthcl.models.algorithms.vthcl import IMG_NORM, default_data_preprocessor

init_default_scope('mmaction')


def assert_nearly_equal(got, want, what=''):
    """Equal but for a rare value a few levels off (rounding order)."""
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    assert (diff > 0).mean() < 1e-4, (what, (diff > 0).mean())
    assert diff.max() <= 16, (what, diff.max())


def random_clip(rng, t=4, h=24, w=64):
    clip = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    clip[:, :3] = rng.integers(0, 2, (t, 3, w, 1)) * 255  # saturated
    clip[:, 3:6] = clip[:, 3:6, :, :1]  # grey pixels (no hue)
    return clip


def run_transforms(transforms, clip, seed):
    np.random.seed(seed)
    results = dict(imgs=list(clip.copy()))
    for t in transforms:
        results = t(results)
    return results


def to_tensor(clip):
    """(T, H, W, 3) uint8 -> (C, T, H, W) float, as FormatShape gives."""
    return torch.from_numpy(clip.astype(np.float32)).permute(3, 0, 1, 2)


def both_ways(clip, seed, **jitter):
    eager = run_transforms(
        [ClipColorJitter(**jitter), ClipGrayscale(p=0.3)], clip, seed)
    deferred = run_transforms(
        [ClipColorJitter(defer=True, **jitter),
         ClipGrayscale(p=0.3, defer=True)], clip, seed)
    # colour untouched in the loader, only recorded
    assert np.array_equal(np.stack(deferred['imgs']), clip)
    applied = apply_color_params(
        to_tensor(clip)[None], [deferred[COLOR_PARAMS_KEY]])[0]
    return np.stack(eager['imgs']), applied.permute(1, 2, 3, 0).numpy(), \
        deferred[COLOR_PARAMS_KEY]


@pytest.mark.parametrize('hue', [0.1, 0.5])
def test_deferred_jitter_equals_the_loaders(hue):
    rng = np.random.default_rng(0)
    seen_order, seen_grey, seen_off = set(), set(), 0
    eagers, deferreds = [], []
    for seed in range(30):
        clip = random_clip(rng)
        eager, deferred, record = both_ways(clip, seed, hue=hue)
        # measured: 5e-6 of the values differ, by 1-2 levels
        assert_nearly_equal(deferred, eager, seed)
        eagers.append(eager)
        deferreds.append(deferred)
        seen_order.add(tuple(record[5:9].astype(int)))
        seen_grey.add(bool(record[9]))
        seen_off += record[0] == 0
    assert_nearly_equal(deferreds, eagers, 'all')
    # the seeds covered many orders, grey and not, jitter skipped
    assert len(seen_order) > 10 and seen_grey == {False, True}
    assert 0 < seen_off < 30


@pytest.mark.parametrize('defer', [False, True])
def test_probabilities_decide_per_clip(defer):
    """``p`` of each transform is the chance that a clip is changed: over
    400 seeds, p = 0 never and p = 1 always (a grey clip has three equal
    channels; a jittered one differs from its input), and p = 0.8 / 0.2
    (the defaults) within 4 standard deviations of a binomial draw; the
    deferred records say the same as the pixels."""
    rng = np.random.default_rng(0)
    clip = random_clip(rng, t=2, h=8, w=8)
    n = 400

    def changed(cls, results):
        if defer:  # the record's flag: jitter on, or grey
            flag = _ON if cls is ClipColorJitter else _GREY
            return results[COLOR_PARAMS_KEY][flag] > 0
        out = np.stack(results['imgs'])
        if cls is ClipColorJitter:
            return not np.array_equal(out, clip)
        return np.array_equal(out[..., 0], out[..., 2])

    for cls in (ClipColorJitter, ClipGrayscale):
        for p in (0.0, 1.0, cls().p):
            hits = 0
            for seed in range(n):
                hits += bool(changed(cls, run_transforms(
                    [cls(p=p, defer=defer)], clip, seed)))
            sd = (n * p * (1 - p))**0.5
            assert abs(hits - n * p) <= 4 * sd, (cls.__name__, p, hits)


def test_hue_paths_for_cpu_and_gpu_give_the_same_batch():
    """The batch as a CPU processes it (OpenCV per clip) and as a GPU does
    (tensor operations on all clips needing a hue shift at once)."""
    rng = np.random.default_rng(4)
    clips = torch.stack([to_tensor(random_clip(rng))[None]
                         for _ in range(8)])
    records = [run_transforms([ClipColorJitter(hue=0.5, defer=True),
                               ClipGrayscale(p=0.3, defer=True)],
                              np.zeros((1, 1, 1, 3), np.uint8),
                              seed)[COLOR_PARAMS_KEY] for seed in range(8)]
    assert sum(r[0] > 0 for r in records) >= 4  # several hue shifts
    cpu = apply_color_params(clips, records, opencv_hue=True)
    gpu = apply_color_params(clips, records, opencv_hue=False)
    assert torch.equal(cpu, gpu)


def test_device_colour_path_reads_nothing_back():
    """On a GPU every value the colour needs goes host → device and none
    comes back: a read-back (a sync) would stall the host's queueing of the
    step's kernels. Checked on the 'meta' device, where reading any value
    raises, with records that have every operation (contrast included,
    whose offsets depend on the frames' mean colours)."""
    records = [run_transforms([ClipColorJitter(hue=0.5, defer=True),
                               ClipGrayscale(p=0.5, defer=True)],
                              np.zeros((1, 1, 1, 3), np.uint8),
                              seed)[COLOR_PARAMS_KEY] for seed in range(8)]
    # jitter with a hue shift (and contrast), grey, and jitter skipped
    assert any(r[0] > 0 and r[4] != 0 for r in records)
    assert any(r[9] > 0 for r in records) and any(r[0] == 0 for r in records)
    clips = torch.empty((8, 1, 3, 4, 6, 6), device='meta')
    out = apply_color_params(clips, records, opencv_hue=False)
    assert out.shape == clips.shape and out.device.type == 'meta'


def test_deferred_jitter_of_a_batch_equals_each_clip_alone():
    rng = np.random.default_rng(1)
    clips, records = [], []
    for seed in range(6):
        clip = random_clip(rng)
        _, _, record = both_ways(clip, seed)
        clips.append(to_tensor(clip)[None])  # (1, C, T, H, W) per sample
        records.append(record)
    out = apply_color_params(torch.stack(clips), records)
    for i, (clip, record) in enumerate(zip(clips, records)):
        alone = apply_color_params(clip[None], [record])[0]
        assert torch.equal(out[i], alone), i
        assert not torch.equal(out[i], clip) or not record[0], i


@pytest.mark.parametrize('offset', [-25, 13, 90])
def test_gpu_hue_shift_is_opencvs_bit_for_bit(offset):
    """The tensor hue shift (what a GPU runs) against OpenCV's, on every
    8-bit colour once (256³ = 64 · 256 · 1024 pixels)."""
    levels = np.arange(256, dtype=np.uint8)
    r, g, b = np.meshgrid(levels, levels, levels, indexing='ij')
    rgb = np.stack([r, g, b], -1).reshape(1, 1024, 64 * 256, 3)
    rgb = rgb.reshape(1, 16384, 1024, 3)  # 1024 wide: no scalar tail
    x = torch.from_numpy(rgb.astype(np.float32)).permute(3, 0, 1, 2)[None]
    offsets = torch.tensor([offset], dtype=torch.int32)
    want = _shift_hue_cpu(x[0], offset)  # OpenCV
    # the tables' lookups and the arithmetic they are built from
    assert torch.equal(_shift_hue(x, offsets)[0], want)
    assert torch.equal(_shift_hue_arith(x, offsets)[0], want)
    # and OpenCV's is MMAction2's adjust_hue
    ref = ColorJitter.adjust_hue(rgb[0, :64].astype(np.float32),
                                 offset / 255 + 1e-9 * np.sign(offset))
    assert np.array_equal(want.permute(1, 2, 3, 0).numpy()[0, :64], ref)


def reference_jitter(clip, b, c, s, h, order):
    """MMAction2's ColorJitter frame by frame, with the given draws."""
    out = []
    for img in clip:
        img = img.astype(np.float32)
        for op in order:
            if op == 0:
                img = img * np.float32(b)
            elif op == 1:
                img = ColorJitter.adjust_contrast(img, c)
            elif op == 2:
                img = ColorJitter.adjust_saturation(img, s)
            else:
                img = ColorJitter.adjust_hue(img, h)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def test_loader_jitter_equals_mmaction2_formulas():
    rng = np.random.default_rng(2)
    for seed in range(12):
        clip = random_clip(rng)
        res = run_transforms([ClipColorJitter(p=1.0, defer=True)], clip,
                             seed)
        b, c, s, h = res[COLOR_PARAMS_KEY][1:5]
        order = res[COLOR_PARAMS_KEY][5:9].astype(int)
        eager = run_transforms([ClipColorJitter(p=1.0)], clip, seed)
        ref = reference_jitter(clip, b, c, s, h, order)
        diff = np.abs(np.stack(eager['imgs']).astype(int) - ref)
        # stock computes a frame's mean grey in float32 with numpy's
        # summation order, ours over the clip: at most a rare level
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, seed


def test_preprocessor_applies_records_then_normalises():
    rng = np.random.default_rng(3)
    pre = MODELS.build(default_data_preprocessor())
    stock = MODELS.build(
        dict(type='ActionDataPreprocessor', format_shape='NCTHW',
             **IMG_NORM))
    inputs = {'imgs': [], 'imgs_fast': []}
    samples, expected = [], {'imgs': [], 'imgs_fast': []}
    for i in range(3):
        ds = ActionDataSample()
        for key, t in (('imgs', 2), ('imgs_fast', 4)):
            clip = random_clip(rng, t=t)
            eager, _, record = both_ways(clip, 10 * i + t)
            inputs[key].append(
                torch.from_numpy(clip).permute(3, 0, 1, 2)[None])  # uint8
            expected[key].append(
                torch.from_numpy(eager).permute(3, 0, 1, 2)[None])
            suffix = '' if key == 'imgs' else '_fast'
            ds.set_field(record, COLOR_PARAMS_KEY + suffix)
        samples.append(ds)
    records = {key: [ds.get(COLOR_PARAMS_KEY + suffix) for ds in samples]
               for key, suffix in (('imgs', ''), ('imgs_fast', '_fast'))}
    out = pre(dict(inputs=inputs, data_samples=samples), training=True)
    for key in ('imgs', 'imgs_fast'):
        # the records applied, then ActionDataPreprocessor's normalisation
        applied = apply_color_params(
            torch.stack(inputs[key]).float(), records[key])
        ref, _ = stock.preprocess(list(applied), None)
        assert torch.equal(out['inputs'][key], ref), key
        eager, _ = stock.preprocess(expected[key], None)
        assert_nearly_equal(out['inputs'][key] * 57, eager * 57, key)
    # consumed: VTHCL refuses records left over
    assert all(COLOR_PARAMS_KEY not in ds and
               COLOR_PARAMS_KEY + '_fast' not in ds
               for ds in out['data_samples'])

    # without records it is ActionDataPreprocessor
    plain = [ActionDataSample() for _ in range(3)]
    out = pre(dict(inputs={k: list(v) for k, v in expected.items()},
                   data_samples=plain))
    ref, _ = stock.preprocess(expected['imgs'], None)
    assert torch.equal(out['inputs']['imgs'], ref)


def test_mixed_batch_is_refused_naming_the_key():
    pre = MODELS.build(
        dict(type='ClipColorDataPreprocessor', format_shape='NCTHW',
             **IMG_NORM))
    a, b = ActionDataSample(), ActionDataSample()
    a.set_field(np.zeros(10), COLOR_PARAMS_KEY)
    clips = [torch.zeros(1, 3, 2, 8, 8, dtype=torch.uint8)] * 2
    with pytest.raises(ValueError, match='1 of 2 samples lack "color_params"'):
        pre.preprocess(clips, [a, b])


PAIR_CLIP = [
    dict(type='Resize', scale=(-1, 80)),
    dict(type='RandomResizedCrop', area_range=(0.3, 1.0)),
    dict(type='Resize', scale=(64, 64), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='ClipColorJitter', p=0.8),
    dict(type='ClipGrayscale', p=0.2),
    dict(type='FormatShape', input_format='NCTHW'),
]


def pair_pipeline(defer, share_crop=False):
    clip = copy.deepcopy(PAIR_CLIP)
    keys = ('sample_idx', )
    if defer:
        clip[4]['defer'] = clip[5]['defer'] = True
        keys += ('color_params', 'color_params_fast')
    return [
        TRANSFORMS.build(dict(type='DecordInit')),
        TRANSFORMS.build(dict(type='TempoPairSampleFrames')),
        TRANSFORMS.build(dict(type='TempoPairDecode', clip_pipeline=clip,
                              share_crop=share_crop)),
        TRANSFORMS.build(dict(type='PackActionInputs',
                              collect_keys=('imgs', 'imgs_fast'),
                              algorithm_keys=keys)),
    ]


@pytest.mark.parametrize('share_crop', [False, True])
def test_tempo_pair_with_deferred_colour_equals_in_loader(
        shared_videos, share_crop):
    pre = MODELS.build(default_data_preprocessor())
    outs = {}
    for defer in (False, True):
        batch = {'inputs': {'imgs': [], 'imgs_fast': []},
                 'data_samples': []}
        for seed, video in enumerate(shared_videos[:3]):
            np.random.seed(seed)
            random.seed(seed)  # RandomResizedCrop's offsets
            results = dict(filename=video, start_index=0, modality='RGB',
                           sample_idx=seed)
            for t in pair_pipeline(defer, share_crop):
                results = t(results)
            for key in ('imgs', 'imgs_fast'):
                batch['inputs'][key].append(results['inputs'][key])
            batch['data_samples'].append(results['data_samples'])
        if defer:
            ds = batch['data_samples'][0]
            assert ds.color_params.shape == ds.color_params_fast.shape == (
                10, )
            assert np.array_equal(ds.color_params, ds.color_params_fast) \
                is share_crop
        outs[defer] = pre(batch, training=True)['inputs']
    for key in ('imgs', 'imgs_fast'):
        # in levels (the normalisation divides by std ≈ 57)
        assert_nearly_equal(outs[True][key] * 57, outs[False][key] * 57, key)


def test_single_clip_pipeline_can_defer_too(tmp_path, shared_videos):
    """Outside tempo pairs: one clip, its record in ``color_params``. The
    preprocessor makes of it the clip the eager pipeline gives: both draw
    the same numbers in the same order (the deferred transforms only skip
    the pixel work), and the dataset seeds the sample from (seed, epoch,
    index), so the two pipelines decode, crop and flip alike."""
    from mmvthcl.datasets import RobustVideoDataset, SeededIndex
    ann = tmp_path / 'list.txt'
    ann.write_text(f'{shared_videos[0]} 3\n')
    pre = MODELS.build(dict(type='ClipColorDataPreprocessor',
                            format_shape='NCTHW', **IMG_NORM))
    outs = {}
    for defer in (False, True):
        clip = copy.deepcopy(PAIR_CLIP)
        clip[4]['p'] = 1.0  # jitter every time: the record does something
        clip[4]['defer'] = clip[5]['defer'] = defer
        ds = RobustVideoDataset(str(ann), [
            dict(type='DecordInit'),
            dict(type='SampleFrames', clip_len=4, frame_interval=2,
                 num_clips=1),
            dict(type='DecordDecode')
        ] + clip + [dict(type='PackActionInputs', algorithm_keys=(
            'color_params', ) if defer else ())])
        sample = ds[SeededIndex(0, seed=1, epoch=0)]
        if defer:
            record = sample['data_samples'].color_params
            assert record[0] == 1  # jitter on, with drawn factors
            assert not np.allclose(record[1:4], 1)
            # the clip left the loader uncoloured
            plain = pre(dict(inputs=[sample['inputs']],
                             data_samples=[ActionDataSample()]))['inputs']
        else:
            assert 'color_params' not in sample['data_samples']
        outs[defer] = pre(dict(inputs=[sample['inputs']],
                               data_samples=[sample['data_samples']]))[
                                   'inputs']
    assert not torch.equal(outs[True], plain)  # the record was applied
    # the loader rounds after its hue step where the deferred path rounds
    # its composed colour map once (module docstring): a rare value some
    # levels off; in levels (the normalisation divides by std ≈ 57)
    assert_nearly_equal(outs[True] * 57, outs[False] * 57)


def test_unpacked_records_are_refused_by_the_dataset(tmp_path,
                                                     shared_videos):
    ann = tmp_path / 'list.txt'
    ann.write_text(f'{shared_videos[0]} 0\n')
    pipeline = copy.deepcopy(PAIR_CLIP)
    pipeline[4]['defer'] = pipeline[5]['defer'] = True
    train = [
        dict(type='DecordInit'), dict(type='TempoPairSampleFrames'),
        dict(type='TempoPairDecode', clip_pipeline=pipeline),
        dict(type='PackActionInputs', collect_keys=('imgs', 'imgs_fast'),
             algorithm_keys=('sample_idx', ))
    ]
    from mmvthcl.datasets import RobustVideoDataset
    with pytest.raises(ValueError, match=r"list\.txt.*'color_params', "
                       r"'color_params_fast'.*algorithm_keys"):
        RobustVideoDataset(str(ann), train)


@pytest.mark.parametrize('after', ['RandomResizedCrop', 'ClipGrayscale'])
def test_deferred_colour_before_a_crop_or_eager_colour_is_refused(after):
    # a crop changes the frame mean the contrast pivots around; an eager
    # grey would run before the deferred jitter instead of after it
    clip = [dict(type='ClipColorJitter', defer=True), dict(type=after),
            dict(type='FormatShape', input_format='NCTHW')]
    with pytest.raises(ValueError,
                       match=f'{after} comes after ClipColorJitter'):
        TRANSFORMS.build(dict(type='TempoPairDecode', clip_pipeline=clip))


def test_deferred_grey_before_deferred_jitter_is_refused():
    """Records are applied jitter first, then grey: a pipeline asking for
    grey first would silently be reordered. Grey in the loader, before a
    deferred jitter, is the order it asks for and is accepted."""
    def build(grey_defer):
        clip = [dict(type='ClipGrayscale', defer=grey_defer),
                dict(type='ClipColorJitter', defer=True),
                dict(type='FormatShape', input_format='NCTHW')]
        return TRANSFORMS.build(
            dict(type='TempoPairDecode', clip_pipeline=clip))

    with pytest.raises(ValueError, match=r'ClipColorJitter\(defer=True\) '
                       r'comes after ClipGrayscale\(defer=True\).*put '
                       'ClipGrayscale after ClipColorJitter'):
        build(grey_defer=True)
    build(grey_defer=False)


@pytest.mark.parametrize('key', [COLOR_PARAMS_KEY, COLOR_PARAMS_FAST_KEY])
def test_vthcl_refuses_records_a_stock_preprocessor_left(key):
    """A stock preprocessor leaves either clip's record unapplied: the model
    refuses to train without that clip's colour augmentation."""
    pre = dict(type='ActionDataPreprocessor', format_shape='NCTHW',
               **IMG_NORM)
    model = MODELS.build(dict(
        type='VTHCL',
        backbone=dict(type='VTHCLResNet3d', depth=18, base_channels=8),
        head=dict(type='HierarchicalContrastiveHead', num_negatives=2,
                  memory=dict(type='HierarchicalMemoryBank', num_samples=4)),
        data_preprocessor=dict(type='MultiModalDataPreprocessor',
                               preprocessors=dict(imgs=pre, imgs_fast=pre))))
    ds = ActionDataSample(metainfo={})
    ds.set_field(0, 'sample_idx')
    ds.set_field(np.zeros(10), key)
    data = dict(inputs={'imgs': [torch.zeros(1, 3, 2, 16, 16)],
                        'imgs_fast': [torch.zeros(1, 3, 4, 16, 16)]},
                data_samples=[ds])
    data = model.data_preprocessor(data, training=True)
    with pytest.raises(ValueError, match='ClipColorDataPreprocessor'):
        model(**data, mode='loss')


def test_shipped_fused_crop_matches_the_unfused_pipeline(shared_videos):
    """The K400 configs crop lazily (one resize from the original frame,
    MMAction2's Fuse); the clip must be the unfused pipeline's up to the
    interpolation of one resize instead of two."""
    from mmengine.config import Config
    from mmengine.dataset import Compose

    from .conftest import R18_CONFIG
    shipped = [t for t in Config.fromfile(R18_CONFIG).clip_pipeline
               if not t['type'].startswith('Clip')]
    assert [t['type'] for t in shipped][-2:] == ['Fuse', 'FormatShape']
    assert all(t.get('lazy') for t in shipped[:-2])
    unfused = [{k: v for k, v in t.items() if k != 'lazy'}
               for t in shipped if t['type'] != 'Fuse']
    decode = [TRANSFORMS.build(dict(type='DecordInit')),
              TRANSFORMS.build(dict(type='SampleFrames', clip_len=8,
                                    frame_interval=8, num_clips=1)),
              TRANSFORMS.build(dict(type='DecordDecode'))]
    for seed, video in enumerate(shared_videos):
        outs = []
        for cfg in (shipped, unfused):
            np.random.seed(seed)
            random.seed(seed)
            results = dict(filename=video, start_index=0, modality='RGB')
            for t in decode:
                results = t(results)
            outs.append(Compose(copy.deepcopy(cfg))(results)['imgs'])
        fused, ref = (o.astype(np.float32) for o in outs)
        assert fused.shape == ref.shape == (1, 3, 8, 224, 224), video
        # same crop and flip (measured: identical for 256p videos, mean
        # |diff| 1.3-2.5 levels and correlation 0.998 for the others; a
        # crop a few pixels off or a missed flip is far below 0.99)
        assert np.abs(fused - ref).mean() < 3, video
        assert np.corrcoef(fused.ravel(), ref.ravel())[0, 1] > 0.99, video
