"""TempoPairSampleFrames / TempoPairDecode: index sets and one decode."""
import numpy as np
import pytest

from mmaction.registry import TRANSFORMS
from mmvthcl.datasets.transforms import TempoPairDecode, TempoPairSampleFrames


def sample(total, seed=0, **kwargs):
    np.random.seed(seed)
    t = TempoPairSampleFrames(**kwargs)
    return t(dict(total_frames=total, start_index=0))


@pytest.mark.parametrize('alpha', [1, 2, 4])
@pytest.mark.parametrize('test_mode', [False, True])
def test_same_window_same_centre_alpha_denser(alpha, test_mode):
    for seed in range(20):
        r = sample(300, seed, clip_len=8, frame_interval=8, alpha=alpha,
                   test_mode=test_mode)
        slow, fast = r['frame_inds'], r['fast_frame_inds']
        assert len(slow) == 8 and len(fast) == 8 * alpha
        assert set(np.diff(slow)) == {8}
        assert set(np.diff(fast)) == {8 // alpha}
        # both cover the same 64-frame window [start, start + 64)
        assert slow[0] == fast[0]
        assert slow[-1] + 8 == fast[-1] + 8 // alpha
        slow_centre = (slow[0] + slow[-1] + 8) / 2
        assert slow_centre == (fast[0] + fast[-1] + 8 // alpha) / 2
        # the slow frames are a subset of the fast ones: one decode suffices
        assert set(slow) <= set(fast)
        assert 0 <= slow[0] and fast[-1] < 300
        assert r['fast_clip_len'] == 8 * alpha
        assert r['fast_frame_interval'] == 8 // alpha


def test_same_num_frames_is_centred_in_the_slow_window():
    r = sample(300, 3, clip_len=8, frame_interval=8, alpha=2,
               same_num_frames=True)
    slow, fast = r['frame_inds'], r['fast_frame_inds']
    assert len(fast) == 8 and set(np.diff(fast)) == {4}
    slow_centre = slow[0] + 8 * 8 / 2
    fast_centre = fast[0] + 8 * 4 / 2
    assert slow_centre == fast_centre


def test_test_mode_is_centred_and_deterministic():
    a = sample(300, 0, test_mode=True)
    b = sample(300, 99, test_mode=True)
    np.testing.assert_array_equal(a['frame_inds'], b['frame_inds'])
    np.testing.assert_array_equal(a['fast_frame_inds'], b['fast_frame_inds'])
    assert a['frame_inds'][0] == (300 - 64) // 2


def test_train_mode_start_is_random_and_spans_the_video():
    starts = {int(sample(100, s)['frame_inds'][0]) for s in range(200)}
    assert min(starts) == 0 and max(starts) == 100 - 64
    assert len(starts) > 20


@pytest.mark.parametrize('total', [1, 5, 63, 64])
def test_short_videos_loop_like_sampleframes(total):
    r = sample(total, 0)
    for inds in (r['frame_inds'], r['fast_frame_inds']):
        assert inds.min() >= 0 and inds.max() < total
    np.testing.assert_array_equal(r['frame_inds'],
                                  (np.arange(8) * 8) % total)
    rl = sample(total, 0, out_of_bound_opt='repeat_last')
    np.testing.assert_array_equal(rl['frame_inds'],
                                  np.minimum(np.arange(8) * 8, total - 1))


def test_start_index_is_added():
    np.random.seed(0)
    r = TempoPairSampleFrames(test_mode=True)(
        dict(total_frames=64, start_index=1))
    assert r['frame_inds'][0] == 1 and r['fast_frame_inds'][0] == 1


@pytest.mark.parametrize('kwargs, match', [
    (dict(frame_interval=8, alpha=3), 'alpha=3 must divide frame_interval'),
    (dict(alpha=0), 'alpha must be a positive integer'),
    (dict(clip_len=0), 'clip_len must be a positive integer'),
    (dict(out_of_bound_opt='wrap'), 'out_of_bound_opt'),
])
def test_bad_arguments_are_refused_at_build_time(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TempoPairSampleFrames(**kwargs)


class CountingReader:
    """A decord-like reader that records every get_batch call."""

    def __init__(self, num_frames=300, h=6, w=8):
        self.calls = []
        self.frames = np.stack([
            np.full((h, w, 3), i % 256, dtype=np.uint8)
            for i in range(num_frames)
        ])

    def __len__(self):
        return len(self.frames)

    def get_batch(self, inds):
        self.calls.append(np.asarray(inds).copy())

        class Batch:

            def __init__(self, a):
                self.a = a

            def asnumpy(self):
                return self.a

        return Batch(self.frames[np.asarray(inds)])


@pytest.mark.parametrize('alpha', [1, 2, 4])
def test_union_is_decoded_once_sorted_and_deduplicated(alpha):
    reader = CountingReader()
    results = dict(total_frames=300, start_index=0, video_reader=reader)
    np.random.seed(1)
    results = TempoPairSampleFrames(alpha=alpha)(results)
    results = TempoPairDecode()(results)
    assert len(reader.calls) == 1
    call = reader.calls[0]
    assert list(call) == sorted(set(call))
    assert set(call) == set(results['frame_inds']) | set(
        results['fast_frame_inds'])
    assert results['decoded_frames'] == len(call) == 8 * alpha
    # each clip got exactly its frames, in order (frame i is filled with i)
    assert [f[0, 0, 0] for f in results['imgs']] == list(
        results['frame_inds'] % 256)
    assert [f[0, 0, 0] for f in results['imgs_fast']] == list(
        results['fast_frame_inds'] % 256)
    assert results['video_reader'] is None
    # what FormatShape and the stock transforms read about each clip
    assert (results['clip_len'], results['fast_clip_len'],
            results['num_clips']) == (8, 8 * alpha, 1)


def test_short_video_union_has_no_duplicates():
    reader = CountingReader(num_frames=10)
    results = dict(total_frames=10, start_index=0, video_reader=reader)
    results = TempoPairDecode()(TempoPairSampleFrames()(results))
    call = reader.calls[0]
    assert len(reader.calls) == 1 and len(call) == len(set(call)) <= 10
    assert len(results['imgs']) == 8 and len(results['imgs_fast']) == 16


CLIP_PIPELINE = [
    dict(type='Resize', scale=(-1, 64)),
    dict(type='RandomResizedCrop', area_range=(0.2, 1.0)),
    dict(type='Resize', scale=(56, 56), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='ClipColorJitter', p=0.8),
    dict(type='ClipGrayscale', p=0.2),
    dict(type='FormatShape', input_format='NCTHW'),
]


def real_pipeline(share_crop=False, **sample_kwargs):
    return [
        TRANSFORMS.build(dict(type='DecordInit')),
        TRANSFORMS.build(dict(type='TempoPairSampleFrames', **sample_kwargs)),
        TRANSFORMS.build(
            dict(type='TempoPairDecode', clip_pipeline=CLIP_PIPELINE,
                 share_crop=share_crop)),
        TRANSFORMS.build(
            dict(type='PackActionInputs', collect_keys=('imgs', 'imgs_fast'),
                 algorithm_keys=('sample_idx', ))),
    ]


def run(pipeline, filename, seed=0):
    np.random.seed(seed)
    results = dict(filename=filename, start_index=0, modality='RGB',
                   sample_idx=5)
    for t in pipeline:
        results = t(results)
    return results


def test_real_videos_give_two_augmented_clips(shared_videos):
    pipeline = real_pipeline()
    for video in shared_videos:
        packed = run(pipeline, video)
        slow, fast = packed['inputs']['imgs'], packed['inputs']['imgs_fast']
        assert tuple(slow.shape) == (1, 3, 8, 56, 56), video
        assert tuple(fast.shape) == (1, 3, 16, 56, 56), video
        assert packed['data_samples'].sample_idx == 5


def test_clips_are_augmented_independently_unless_shared(shared_videos):
    video = shared_videos[0]
    # same_num_frames with alpha=1: identical frames, so any difference
    # between the clips comes from the spatial augmentation
    for share, should_match in ((False, False), (True, True)):
        packed = run(real_pipeline(share_crop=share, alpha=1,
                                   same_num_frames=True), video, seed=3)
        slow = packed['inputs']['imgs']
        fast = packed['inputs']['imgs_fast']
        assert slow.shape == fast.shape
        assert bool((slow == fast).all()) is should_match


def test_missing_reader_names_the_fix():
    t = TempoPairDecode()
    with pytest.raises(KeyError, match='DecordInit'):
        t(dict(frame_inds=np.arange(3), fast_frame_inds=np.arange(3)))
