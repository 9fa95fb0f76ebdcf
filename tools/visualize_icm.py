"""Draw the Instance Correspondence Map (ICM) of a VTHCL model for a video.

    python tools/visualize_icm.py CONFIG CHECKPOINT VIDEO --out icm.png \\
        [--depth res5] [--size 224]

A PNG (or JPEG) grid: slow and fast frames lined up in time, each with its
ICM overlaid; ``--out`` ending in ``.gif`` writes an animation instead.
CHECKPOINT ``none`` draws a randomly initialised model of the config (a
baseline with no learned correspondence; the image says so).
"""
import argparse
import os.path as osp

import mmvthcl  # noqa: F401  (registers mmvthcl types, applies compat fixes)
import torch
from mmengine.config import DictAction

from mmvthcl.utils import build_vthcl_model, load_tool_config
from mmvthcl.visualization import (compute_icm, load_icm_clips,
                                   render_icm_animation, render_icm_grid,
                                   save_gif, save_image)
from mmvthcl.visualization.icm import check_depths

IMAGE_EXTS = ('.png', '.jpg', '.jpeg')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='VTHCL config the model comes from')
    parser.add_argument(
        'checkpoint',
        help='VTHCL checkpoint, or "none" for random initialisation')
    parser.add_argument('video', help='video file')
    parser.add_argument(
        '--out',
        required=True,
        help='output file: .png/.jpg for a grid, .gif for an animation')
    parser.add_argument(
        '--depth',
        default='res5',
        help='depth of the map (res3, res4, res5) or "all" (default: res5)')
    parser.add_argument(
        '--size',
        type=int,
        default=None,
        help='square frame size fed to the model (default: the crop size of '
        "the config's training pipeline)")
    parser.add_argument('--tile',
                        type=int,
                        default=None,
                        help='tile side in pixels (default 112, GIF 192)')
    parser.add_argument('--fps',
                        type=float,
                        default=4.0,
                        help='GIF frames per second')
    parser.add_argument('--no-frames',
                        action='store_true',
                        help='grid without the rows of plain frames')
    parser.add_argument('--device',
                        default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument(
        '--seed', type=int, default=None,
        help='seed of the random initialisation (default: the config\'s '
        'randomness.seed, the model training starts from; else 0)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ext = osp.splitext(args.out)[1].lower()
    if ext not in IMAGE_EXTS + ('.gif', ):
        raise SystemExit(f'{args.out}: --out must end in .png, .jpg or '
                         '.gif')
    cfg = load_tool_config(args.config, args.cfg_options)
    random_weights = args.checkpoint.lower() == 'none'
    try:
        model = build_vthcl_model(
            cfg, None if random_weights else args.checkpoint, args.seed)
    except ValueError as e:
        raise SystemExit(str(e))
    if random_weights:
        weights = 'RANDOM WEIGHTS (no checkpoint)'
        print('WARNING: no checkpoint: drawing a randomly initialised model;'
              ' its ICM shows no learned correspondence')
    else:
        weights = osp.basename(args.checkpoint)
    model.to(args.device)
    try:
        depths = check_depths(model, args.depth)
    except ValueError as e:
        raise SystemExit(f'--depth: {e}')

    try:
        clips = load_icm_clips(args.video, cfg, args.size)
    except RuntimeError as e:
        raise SystemExit(str(e))
    result = compute_icm(model, clips, depths)

    title = (f'ICM {"+".join(depths)} | {osp.basename(args.video)} | '
             f'{weights}')
    if ext == '.gif':
        frames = render_icm_animation(result,
                                      depths,
                                      tile=args.tile or 192,
                                      title=title)
        save_gif(args.out, frames, fps=args.fps)
        print(f'wrote {args.out} ({len(frames)} frames, '
              f'{frames[0].shape[1]}x{frames[0].shape[0]})')
    else:
        grid = render_icm_grid(result,
                               depths,
                               tile=args.tile or 112,
                               title=title,
                               show_frames=not args.no_frames)
        save_image(args.out, grid)
        print(f'wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})')
    print(f'slow frames {clips.slow_inds.tolist()}, '
          f'fast frames {clips.fast_inds.tolist()} of {clips.total_frames}')


if __name__ == '__main__':
    main()
