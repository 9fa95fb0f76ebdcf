"""Data path: one tempo pair decoded once vs the stock two-pass way.

For every video, one unit of work is getting the slow (8×8) and the fast
(16×4) clip of one window, augmented, ready to batch:

- ``pair``: ``DecordInit`` → ``TempoPairSampleFrames`` → ``TempoPairDecode``
  with the config's ``clip_pipeline`` (the VTHCL pipeline: lazy crop fused
  into one resize, colour only drawn, applied later on the model's device).
- ``pair-loader-colour``: ``pair`` with the crop unfused and the colour
  applied in the loader (the shipped pipeline before both changes).
- ``stock``: the stock MMAction2 way, once per clip: ``DecordInit`` →
  ``SampleFrames`` → ``DecordDecode`` → the same ``clip_pipeline``.
  ``SampleFrames`` runs (its cost counts) but its indices are replaced by the
  pair's, so both ways read the same window.
- ``fast-decode``: the limit, every needed frame decoded once and nothing
  else: ``DecordInit`` → the fast clip's indices → ``DecordDecode``.
- ``pair-noaug``: ``pair`` without augmentation (the decoding part alone).

Variants are interleaved, each repetition on a new random window that all
variants share, with the augmentations reseeded identically. Targets:
``stock / pair`` ≥ 1.5 (clips/s speed-up) and ``pair / fast-decode`` ≤ 1.15.

Last, the colour work that ``pair`` leaves to the model: the data
preprocessor's ``apply_color_params`` on a batch of 8 pairs at the config's
crop, on ``--device``, against ``ClipColorJitter`` + ``ClipGrayscale`` in the
loader on the same clips and draws, and how many values differ between the
two (rounding: a few in a million).

    python benchmarks/bench_data.py            # ~1-3 min
    python benchmarks/bench_data.py --quick    # ~20 s
"""
import copy
import os
import os.path as osp
import random
import subprocess
import sys
import tempfile

import numpy as np

from _common import (ROOT, VIDEOS, base_parser, dump_json, geomean,
                     interleaved, load, median, print_header, print_table,
                     ratio, setup, sync, verdict)

SPEEDUP_TARGET = 1.5
LIMIT_TARGET = 1.15


#: seed of the current repetition; see :class:`ReseedClip`
_REP_SEED = [0]


def reseed_transform():
    """A transform put first in every clip's augmentation: it seeds numpy
    from the repetition and the clip length, so the stock way and the pair
    draw the same crop, flip and colour for the slow clip and for the fast
    clip (their random draws otherwise happen in different orders)."""
    from mmcv.transforms import BaseTransform

    class ReseedClip(BaseTransform):

        def transform(self, results):
            seed = _REP_SEED[0] * 1000 + len(results['imgs'])
            np.random.seed(seed)
            random.seed(seed)  # RandomResizedCrop's offsets
            return results

    return ReseedClip()


def in_loader(clip_pipeline):
    """``clip_pipeline`` with eager crops and colour applied in the loader."""
    out = []
    for t in copy.deepcopy(list(clip_pipeline)):
        if t['type'] == 'Fuse':
            continue
        t.pop('lazy', None)
        t.pop('defer', None)
        out.append(t)
    return out


def device_colour(clip_pipeline, device, reps):
    """Colour of 8 pairs: the preprocessor's batched pass on ``device`` vs
    the loader's transforms on the CPU.

    Returns:
        tuple: (device s per pair, loader s per pair, the largest
        |difference| between the two paths' pixel values, the fraction of
        values that differ, the clips' side in pixels).
    """
    import torch

    from mmaction.registry import TRANSFORMS
    from mmvthcl.datasets.transforms.clip_augment import (
        COLOR_PARAMS_KEY, apply_color_params)
    colour = [t for t in clip_pipeline if t['type'].startswith('Clip')]
    deferred = [TRANSFORMS.build(dict(t, defer=True)) for t in colour]
    eager = [TRANSFORMS.build(dict(t, defer=False)) for t in colour]
    size = next(t['scale'][0] for t in reversed(list(clip_pipeline))
                if t['type'] == 'Resize')
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, (n, size, size, 3), np.uint8)
             for _ in range(8) for n in (8, 16)]

    def run(transforms, clip, seed):
        np.random.seed(seed)
        res = dict(imgs=list(clip))
        for t in transforms:
            res = t(res)
        return res

    records = [run(deferred, c, i)[COLOR_PARAMS_KEY]
               for i, c in enumerate(clips)]
    batches = {}
    for n in (8, 16):
        idx = [i for i, c in enumerate(clips) if len(c) == n]
        batches[n] = (torch.stack([
            torch.from_numpy(clips[i]).permute(3, 0, 1, 2)[None]
            for i in idx]).to(device), [records[i] for i in idx], idx)

    def on_device():
        return {n: apply_color_params(x.float(), r)
                for n, (x, r, _) in batches.items()}

    def in_the_loader():
        return [run(eager, c, i) for i, c in enumerate(clips)]

    t = interleaved({'device': on_device, 'loader': in_the_loader}, reps,
                    device=device)
    out, ref = on_device(), in_the_loader()
    sync(device)
    diffs = []
    for n, (_, _, idx) in batches.items():
        for j, i in enumerate(idx):
            want = torch.from_numpy(np.stack(ref[i]['imgs'])).float()
            got = out[n][j, 0].permute(1, 2, 3, 0).cpu()
            diffs.append((got - want).abs().flatten())
    diffs = torch.cat(diffs)
    return (median(t['device']) / 8, median(t['loader']) / 8,
            float(diffs.max()), float((diffs > 0).float().mean()), size)


def parse_args(argv=None):
    parser = base_parser(__doc__.split('\n')[0])
    parser.add_argument(
        '--config', default=osp.join(ROOT, 'configs', 'vthcl_r18_k400.py'),
        help='config whose clip_pipeline augments each clip')
    parser.add_argument('--videos', default=VIDEOS,
                        help='folder of real videos (skipped if missing)')
    parser.add_argument(
        '--synthetic-sizes', type=int, nargs='*', default=[128, 480],
        help='frame sides of generated videos (tools/data/make_synthetic.py)')
    parser.add_argument('--num-frames', type=int, default=160,
                        help='length of the generated videos')
    parser.add_argument('--reps', type=int, default=None,
                        help='windows per video (default 12, quick 3)')
    return parser.parse_args(argv)


def generated_videos(sizes, num_frames, out_dir):
    """One generated video per size, written by the project's generator."""
    cases = []
    for size in sizes:
        out = osp.join(out_dir, f'synthetic_{size}')
        # the generator wants every class in both splits: 18 videos minimum
        subprocess.run([
            sys.executable,
            osp.join(ROOT, 'tools', 'data', 'make_synthetic.py'), '--out',
            out, '--num-videos', '18', '--size',
            str(size), '--num-frames',
            str(num_frames)
        ], check=True, stdout=subprocess.DEVNULL)
        with open(osp.join(out, 'train.txt')) as f:
            name = f.readline().split()[0]
        cases.append((f'synthetic {size}p mp4v', osp.join(out, 'videos',
                                                          name)))
    return cases


def real_videos(folder, quick):
    if not osp.isdir(folder):
        print(f'(no real videos: {folder} not found)')
        return []
    import decord
    cases = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(('.mp4', '.avi')):
            continue
        path = osp.join(folder, name)
        h = decord.VideoReader(path)[0].shape[0]
        cases.append((f'{name} {h}p', path))
    if quick:  # one 256p h264 and the avi are enough to smoke-test
        keep = [c for c in cases if 'test.mp4' in c[0]][:1]
        cases = keep or cases[:1]
    return cases


def main(argv=None):
    args = parse_args(argv)
    setup(args.device, args.threads)
    import cv2

    # as in training: MMAction2's default_runtime sets
    # env_cfg.mp_cfg.opencv_num_threads=0 (OpenCV single-threaded)
    cv2.setNumThreads(0)
    from mmengine.config import Config
    from mmengine.dataset import Compose

    from mmaction.registry import TRANSFORMS
    build = TRANSFORMS.build

    reps = args.reps or (3 if args.quick else 12)
    clip_pipeline = Config.fromfile(args.config).clip_pipeline
    info = print_header(
        'bench_data: TempoPairDecode vs the stock two-pass decoding',
        args.device,
        'note: data loading runs on the CPU whatever --device says; '
        'OpenCV single-threaded as in training\n'
        f'clip_pipeline ({osp.basename(args.config)}): ' +
        ' → '.join(t['type'] for t in clip_pipeline) +
        f'\nslow 8x8, fast 16x4 (alpha 2); {reps} windows per video, '
        'variants interleaved; times are medians per pair of clips')

    # ---------------------------------------------------------- pipelines
    init = build(dict(type='DecordInit'))
    pair_sample = build(
        dict(type='TempoPairSampleFrames', clip_len=8, frame_interval=8,
             alpha=2))
    pair_decode = build(
        dict(type='TempoPairDecode', clip_pipeline=clip_pipeline))
    # same augmentation draws in both ways (the instances are not
    # registered, so they are put in after the pipelines are built)
    for compose in (pair_decode.slow_pipeline, pair_decode.fast_pipeline):
        compose.transforms.insert(0, reseed_transform())
    pair_decode_before = build(
        dict(type='TempoPairDecode', clip_pipeline=in_loader(clip_pipeline)))
    for compose in (pair_decode_before.slow_pipeline,
                    pair_decode_before.fast_pipeline):
        compose.transforms.insert(0, reseed_transform())
    pair_decode_raw = build(dict(type='TempoPairDecode'))
    stock_sample = {
        'slow': build(dict(type='SampleFrames', clip_len=8,
                           frame_interval=8, num_clips=1)),
        'fast': build(dict(type='SampleFrames', clip_len=16,
                           frame_interval=4, num_clips=1)),
    }
    stock_decode = build(dict(type='DecordDecode'))
    stock_aug = {t: Compose([reseed_transform()] +
                            copy.deepcopy(list(clip_pipeline)))
                 for t in ('slow', 'fast')}

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        sizes = args.synthetic_sizes[:1] if args.quick else \
            args.synthetic_sizes
        cases = real_videos(args.videos, args.quick) + generated_videos(
            sizes, args.num_frames, tmp)
        for label, path in cases:
            state = {}

            def base():
                return dict(filename=path, start_index=0, modality='RGB')

            # the windows of this video: the pair's draw, shared by all
            windows = []
            for r in range(reps):
                np.random.seed(args.seed + r)
                res = pair_sample(init(base()))
                windows.append((res['frame_inds'], res['fast_frame_inds']))
            total = res['total_frames']
            shape = init(base())['video_reader'][0].shape

            def before(r):
                state['r'] = r
                _REP_SEED[0] = args.seed + r  # same crops, flips, colours
                np.random.seed(args.seed + r)  # same window

            def pair():
                res = pair_decode(pair_sample(init(base())))
                assert np.array_equal(res['frame_inds'],
                                      windows[state['r']][0])
                state['decoded'] = res['decoded_frames']

            def pair_before():
                pair_decode_before(pair_sample(init(base())))

            def pair_noaug():
                pair_decode_raw(pair_sample(init(base())))

            def stock():
                for i, tempo in enumerate(('slow', 'fast')):
                    res = stock_sample[tempo](init(base()))
                    res['frame_inds'] = windows[state['r']][i]
                    stock_aug[tempo](stock_decode(res))

            def fast_decode():
                res = init(base())
                res['frame_inds'] = windows[state['r']][1]
                stock_decode(res)

            t = interleaved(
                {
                    'pair': pair,
                    'before': pair_before,
                    'stock': stock,
                    'fast': fast_decode,
                    'pair_noaug': pair_noaug
                },
                reps,
                warmup=1,
                seed=args.seed,
                before=before)
            speedup = ratio(t['stock'], t['pair'])
            over_limit = ratio(t['pair'], t['fast'])
            before_limit = ratio(t['before'], t['fast'])
            decode_only = ratio(t['pair_noaug'], t['fast'])
            rows.append([
                label, f'{shape[1]}x{shape[0]}', total,
                median(t['pair']) * 1e3,
                median(t['before']) * 1e3,
                median(t['stock']) * 1e3,
                median(t['fast']) * 1e3, 2 / median(t['pair']), speedup,
                over_limit, before_limit, decode_only
            ])
            results.append(
                dict(video=label, times={k: v for k, v in t.items()},
                     speedup=speedup, pair_over_fast=over_limit,
                     before_over_fast=before_limit,
                     noaug_over_fast=decode_only,
                     decoded_frames=state.get('decoded')))
            print(f'  {label}: done (load {load()})', flush=True)

    print()
    print_table([
        'video', 'WxH', 'frames', 'pair ms', 'loader-colour ms', 'stock ms',
        'fast-decode ms', 'pair clips/s', 'stock/pair (≥1.5)',
        'pair/fast-decode (≤1.15)', 'loader-colour/fast-decode',
        'pair-noaug/fast-decode'
    ], rows)
    g_speed = geomean(r['speedup'] for r in results)
    g_limit = geomean(r['pair_over_fast'] for r in results)
    g_before = geomean(r['before_over_fast'] for r in results)
    g_noaug = geomean(r['noaug_over_fast'] for r in results)
    worst_speed = min(r['speedup'] for r in results)
    worst_limit = max(r['pair_over_fast'] for r in results)
    print()
    print(f'geometric mean over {len(results)} videos: '
          f'speed-up {g_speed:.2f}, pair/fast-decode {g_limit:.2f} '
          f'(colour in the loader: {g_before:.2f}), '
          f'decoding alone {g_noaug:.2f}')
    print(f'speed-up target: {verdict(g_speed, SPEEDUP_TARGET, True)}, '
          f'worst video {worst_speed:.2f}')
    print(f'limit target: {verdict(g_limit, LIMIT_TARGET, False)}, '
          f'worst video {worst_limit:.2f}')
    dev_s, loader_s, worst, frac, size = device_colour(
        clip_pipeline, args.device, 3 if args.quick else 10)
    print()
    print_table(['colour of one pair (8 + 16 frames, '
                 f'{size}²)', 'ms', 'x loader'], [
                     ['ClipColorJitter + ClipGrayscale in the loader (CPU)',
                      loader_s * 1e3, 1],
                     [f'ClipColorDataPreprocessor on {args.device} '
                      '(batch of 8 pairs)', dev_s * 1e3, dev_s / loader_s],
                 ])
    print(f'values that differ between the two: {frac:.2g} of them, by at '
          f'most {worst:g} levels')
    info['load_after'] = load()
    print(f"load before/after: {info['load_before']} / {info['load_after']}")
    dump_json(args.json, dict(machine=info, videos=results,
                              colour=dict(device_s=dev_s, loader_s=loader_s,
                                          max_abs_diff=worst,
                                          differing_fraction=frac)))


if __name__ == '__main__':
    main()
