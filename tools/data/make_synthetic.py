"""Generate a labelled video dataset whose classes are defined by motion.

Each video shows one shape moving over a textured background. The class is
(shape × motion pattern); every video also draws its own tempo (speed), phase,
colour, size, path position and background texture, so the class cannot be
read from a single frame's colour, and the same motion appears at many
speeds: the situation visual-tempo contrast is meant for.

By default these nuisances also drift within a video (``--drift 16``): every
16 frames the background, object colour, size, path amplitude, path centre
and speed are drawn again, and the frames in between interpolate (backgrounds
cross-fade). Two moments of one video then share only the class, which is
what VTHCL's positive, the other tempo's memory-bank entry written at another
moment of the video in an earlier epoch, should carry. With ``--drift 0``
each video keeps one draw throughout; the background and the colour then
tell videos apart better than the class does, and instance discrimination
learns them instead (README, "What the demo shows").

Backgrounds come from a pool of ``--num-textures`` random textures (0 = a
fresh one per draw), all on mid grey; colours from a palette of
``--num-colours`` hues (0 = any hue), all at one luma. Videos thus differ in
pattern and hue but not in overall brightness or tint, which would dominate
the pooled features of an untrained encoder and bury the object.

Output, in MMAction2's ``VideoDataset`` layout::

    DIR/videos/{train,val}/<class>_<n>.mp4
    DIR/train.txt, DIR/val.txt        # "<train|val>/<file>.mp4 <label>"
    DIR/classes.txt                   # one class name per line
    DIR/generator.json                # this script's hash and arguments,
                                      # written last (see dataset_matches)

Example::

    python tools/data/make_synthetic.py --out data/synthetic \\
        --num-videos 600 --seed 0
"""
import argparse
import hashlib
import json
import os
import os.path as osp
from typing import Dict, List, Tuple

import cv2
import numpy as np

SHAPES = ('circle', 'square', 'triangle')
MOTIONS = ('horizontal', 'vertical', 'circular')
CLASSES = tuple(f'{s}_{m}' for m in MOTIONS for s in SHAPES)


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random background on mid grey: smooth colour noise plus oriented
    stripes (no overall tint, see the module docstring)."""
    noise = rng.random((size // 8 + 1, size // 8 + 1, 3)).astype(np.float32)
    noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.1, 0.5)
    stripes = 0.5 + 0.5 * np.sin(freq * (np.cos(angle) * xx +
                                         np.sin(angle) * yy))
    # low contrast: the moving object, not the texture, should dominate
    img = 0.2 * noise + 0.15 * stripes[..., None] + 0.65 * 0.5
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def draw_shape(img: np.ndarray, shape: str, center: Tuple[float, float],
               radius: float, color: Tuple[int, int, int]) -> None:
    cx, cy = center
    if shape == 'circle':
        cv2.circle(img, (int(round(cx)), int(round(cy))), int(round(radius)),
                   color, -1, lineType=cv2.LINE_AA)
        return
    if shape == 'square':
        pts = [(cx - radius, cy - radius), (cx + radius, cy - radius),
               (cx + radius, cy + radius), (cx - radius, cy + radius)]
    else:  # triangle, pointing up
        pts = [(cx, cy - 1.2 * radius), (cx + 1.1 * radius, cy + 0.8 * radius),
               (cx - 1.1 * radius, cy + 0.8 * radius)]
    cv2.fillPoly(img, [np.round(np.array(pts)).astype(np.int32)], color,
                 lineType=cv2.LINE_AA)


def trajectory(motion: str, theta: np.ndarray, amplitude: np.ndarray,
               center: np.ndarray) -> np.ndarray:
    """Object centre per frame: a motion pattern at per-frame angle ``theta``
    (radians along the oscillation), ``amplitude`` and path ``center``
    (T, 2)."""
    cx, cy = center[:, 0], center[:, 1]
    if motion == 'horizontal':
        return np.stack([cx + amplitude * np.sin(theta), cy], 1)
    if motion == 'vertical':
        return np.stack([cx, cy + amplitude * np.sin(theta)], 1)
    return np.stack([cx + amplitude * np.cos(theta),
                     cy + amplitude * np.sin(theta)], 1)


#: luma of every object and chroma radius of its colour (BT.601 YCbCr, 0-1):
#: objects differ in hue only, and always stand 0.2 above the mean of the
#: mid-grey background, so the shape's edges look the same whatever the colour
OBJECT_LUMA, OBJECT_CHROMA = 0.7, 0.15


def palette_colour(rng: np.random.Generator, num_colours: int) -> tuple:
    """An RGB colour of luma ``OBJECT_LUMA``: one of ``num_colours`` hues,
    or any hue (0)."""
    if num_colours <= 0:
        angle = rng.uniform(0, 2 * np.pi)
    else:
        angle = int(rng.integers(num_colours)) * 2 * np.pi / num_colours
    cb, cr = OBJECT_CHROMA * np.cos(angle), OBJECT_CHROMA * np.sin(angle)
    rgb = OBJECT_LUMA + np.array([1.402 * cr, -0.344136 * cb - 0.714136 * cr,
                                  1.772 * cb])
    return tuple(int(round(c)) for c in np.clip(rgb * 255, 0, 255))


def keyframed(values: np.ndarray, num_frames: int, drift: int) -> np.ndarray:
    """Per-frame values linearly interpolated between keyframes.

    ``values`` holds one row per keyframe, ``drift`` frames apart; with
    ``drift == 0`` the first row holds for the whole video.
    """
    values = np.asarray(values, np.float64)
    if drift <= 0:
        return np.repeat(values[:1], num_frames, axis=0)
    t = np.arange(num_frames) / drift
    j = np.floor(t).astype(int)
    w = (t - j).reshape((-1, ) + (1, ) * (values.ndim - 1))
    return (1 - w) * values[j] + w * values[j + 1]


def render_video(rng: np.random.Generator, label: int, size: int,
                 num_frames: int, backgrounds: np.ndarray,
                 colors: np.ndarray, drift: int = 0) -> np.ndarray:
    """Frames (T, H, W, 3) RGB uint8 of one video of class ``label``.

    ``backgrounds`` (K, H, W, 3) and ``colors`` (K, 3) are the keyframes of
    the background and the object colour, ``drift`` frames apart (0: the
    first ones hold throughout); the object's size, the path's amplitude and
    centre and the speed drift the same way.
    """
    shape = SHAPES[label % len(SHAPES)]
    motion = MOTIONS[label // len(SHAPES)]
    num_keys = len(colors)

    def drifting(low: float, high: float, dims: int = 1) -> np.ndarray:
        """A nuisance drawn per keyframe, interpolated per frame."""
        per_frame = keyframed(
            rng.uniform(low, high, (num_keys, dims)), num_frames, drift)
        return per_frame[:, 0] if dims == 1 else per_frame

    radius = drifting(0.12, 0.2) * size
    amplitude = drifting(0.12, 0.22) * size
    # the path's centre is jittered around the frame centre (where along
    # the path the object starts is the random phase below): position alone
    # should not tell videos apart
    center = size / 2 + drifting(-0.1, 0.1, 2) * size
    # tempo: one oscillation takes 20 to 60 frames, so clips sampled every
    # 4th frame still see smooth motion (no aliasing), at 3x varying speed;
    # the angle integrates the (drifting) angular speed
    period = drifting(20, 60)
    theta = rng.uniform(0, 2 * np.pi) + np.concatenate(
        [[0], np.cumsum(2 * np.pi / period[:-1])])
    path = trajectory(motion, theta, amplitude, center)
    color = keyframed(colors, num_frames, drift)
    # consecutive keyframe backgrounds cross-fade
    frames = np.round(keyframed(backgrounds, num_frames,
                                drift)).astype(np.uint8)
    for i, c in enumerate(path):
        draw_shape(frames[i], shape, tuple(c), radius[i],
                   tuple(int(round(v)) for v in color[i]))
    return frames


def write_mp4(path: str, frames: np.ndarray, fps: int = 16) -> None:
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps,
                             (w, h))
    if not writer.isOpened():
        raise RuntimeError(f'cannot write {path}: OpenCV has no mp4v encoder')
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def check_readable(path: str, num_frames: int) -> None:
    """Decode a written video with decord, as training will.

    decord 0.6.0 cannot read some mp4v frame sizes (48 × 48 fails: its frame
    buffer comes out padded); fail now, not in the middle of a training run.
    """
    import decord
    try:
        decord.VideoReader(path).get_batch(
            list(range(min(num_frames, 2)))).asnumpy()
    except Exception as e:
        raise RuntimeError(
            f'decord cannot decode {path} ({type(e).__name__}); this frame '
            'size hits a decord bug, choose another --size (e.g. 64)') from e


def make_dataset(out: str,
                 num_videos: int = 600,
                 seed: int = 0,
                 val_fraction: float = 1 / 3,
                 size: int = 64,
                 num_frames: int = 128,
                 num_textures: int = 8,
                 num_colours: int = 8,
                 drift: int = 16) -> Dict[str, List[str]]:
    """Write the dataset; returns the annotation lines per split.

    Videos are assigned to classes round-robin, so every class has the same
    number of videos (± 1) in each split. The same arguments always give the
    same videos.
    """
    if num_videos < 2 * len(CLASSES):
        raise ValueError(f'--num-videos must be at least {2 * len(CLASSES)} '
                         'so every class appears in train and val')
    if drift < 0:
        raise ValueError(f'--drift must be 0 (static) or a number of frames, '
                         f'got {drift}')
    # a manifest left from an earlier run would vouch for half-replaced
    # videos if this one is interrupted
    if osp.exists(osp.join(out, MANIFEST)):
        os.remove(osp.join(out, MANIFEST))
    rng = np.random.default_rng(seed)
    pool = [texture(rng, size) for _ in range(max(num_textures, 0))]
    num_val = max(len(CLASSES), int(round(num_videos * val_fraction)))
    lines = {'train': [], 'val': []}
    for split in lines:
        os.makedirs(osp.join(out, 'videos', split), exist_ok=True)
    for i in range(num_videos):
        split = 'val' if i < num_val else 'train'
        label = i % len(CLASSES)
        name = f'{split}/{CLASSES[label]}_{i:05d}.mp4'
        video_rng = np.random.default_rng(rng.integers(2**63))
        # keyframes of the nuisances: one set per video when static, else
        # a new draw every ``drift`` frames (and one past the end)
        num_keys = 1 if drift <= 0 else num_frames // drift + 2
        backgrounds = np.stack([
            pool[video_rng.integers(len(pool))] if pool else
            texture(video_rng, size) for _ in range(num_keys)
        ])
        colors = np.array(
            [palette_colour(video_rng, num_colours) for _ in range(num_keys)],
            np.float32)
        frames = render_video(video_rng, label, size, num_frames, backgrounds,
                              colors, drift)
        write_mp4(osp.join(out, 'videos', name), frames)
        if i == 0:
            check_readable(osp.join(out, 'videos', name), num_frames)
        lines[split].append(f'{name} {label}')
    for split, split_lines in lines.items():
        with open(osp.join(out, f'{split}.txt'), 'w') as f:
            f.write('\n'.join(split_lines) + '\n')
    with open(osp.join(out, 'classes.txt'), 'w') as f:
        f.write('\n'.join(CLASSES) + '\n')
    with open(osp.join(out, MANIFEST), 'w') as f:
        json.dump(manifest(num_videos=num_videos, seed=seed,
                           val_fraction=val_fraction, size=size,
                           num_frames=num_frames, num_textures=num_textures,
                           num_colours=num_colours, drift=drift), f,
                  indent=1)
    return lines


MANIFEST = 'generator.json'


def manifest(**params) -> dict:
    """What identifies a generated dataset: this file's content (any change
    to the generator may change the videos) and the arguments."""
    with open(__file__, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return dict(generator_sha256=digest, args=params)


def dataset_matches(out: str, **params) -> bool:
    """Whether ``out`` holds a complete dataset made by this generator with
    these arguments (the manifest is written last, so an interrupted run
    never matches)."""
    try:
        with open(osp.join(out, MANIFEST)) as f:
            return json.load(f) == manifest(**params)
    except (OSError, ValueError):
        return False


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--num-videos', type=int, default=600)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--val-fraction', type=float, default=1 / 3,
        help='share of the videos in the val split')
    parser.add_argument('--size', type=int, default=64, help='frame side')
    parser.add_argument('--num-frames', type=int, default=128)
    parser.add_argument(
        '--num-textures', type=int, default=8,
        help='background texture pool size (0: a new texture per draw)')
    parser.add_argument(
        '--num-colours', type=int, default=8,
        help='object colour palette size (0: any hue)')
    parser.add_argument(
        '--drift', type=int, default=16,
        help='frames between redraws of background, colour, size, path '
        'and speed, interpolated in between (0: one draw per video); '
        'default 16')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        lines = make_dataset(args.out, args.num_videos, args.seed,
                             args.val_fraction, args.size, args.num_frames,
                             args.num_textures, args.num_colours, args.drift)
    except (ValueError, RuntimeError) as e:
        # a bad argument or an unreadable video: the message, no traceback
        raise SystemExit(f'make_synthetic.py: {e}')
    print(f"wrote {len(lines['train'])} train and {len(lines['val'])} val "
          f'videos of {len(CLASSES)} classes to {args.out}')


if __name__ == '__main__':
    main()
