"""Drawing Instance Correspondence Maps: a PNG grid and an animated GIF.

Both layouts line the two clips up in time: a column (grid) or a GIF frame
is one instant of the sampling window, so with α = 2 each slow frame sits
above the fast frame taken at the same moment and the fast row has a frame
between every two slow ones. Every tile is labelled with its frame index.
"""
import os
import os.path as osp
from typing import List, Optional, Sequence, Union

import cv2
import numpy as np

from ..utils import select_depths
from .icm import TEMPOS, ICMResult

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BLANK = 40  # grey of empty cells (no frame of that tempo at that instant)
_BACKGROUND = 255
_LABEL_WIDTH = 110
_TITLE_HEIGHT = 26
_MIN_LABELLED_TILE = 48  # smaller tiles would be hidden by their label


def heatmap_overlay(frames: np.ndarray,
                    heat: np.ndarray,
                    alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map, coloured with the JET colormap, over frames.

    Args:
        frames (np.ndarray): (..., H, W, 3) RGB uint8.
        heat (np.ndarray): (..., H, W) values in [0, 1].
        alpha (float): Weight of the colour map. Defaults to 0.5.

    Returns:
        np.ndarray: RGB uint8 of the shape of ``frames``.
    """
    if heat.shape != frames.shape[:-1]:
        raise ValueError(f'map {heat.shape} does not match frames '
                         f'{frames.shape}')
    h, w = heat.shape[-2:]
    levels = np.clip(heat * 255 + 0.5, 0, 255).astype(np.uint8)
    colour = cv2.applyColorMap(levels.reshape(-1, w), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB).reshape(frames.shape)
    out = (1 - alpha) * frames.astype(np.float32) + alpha * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _put_text(img: np.ndarray,
              text: str,
              org,
              scale: float = 0.4,
              colour=(255, 255, 255),
              outline=(0, 0, 0)) -> None:
    """Text readable on any background (an outline under the glyphs)."""
    if outline is not None:
        cv2.putText(img, text, org, _FONT, scale, outline, 3, cv2.LINE_AA)
    cv2.putText(img, text, org, _FONT, scale, colour, 1, cv2.LINE_AA)


def _tile(img: np.ndarray,
          size: int,
          label: Optional[str] = None) -> np.ndarray:
    """A ``size`` × ``size`` tile (frames are square after the centre crop;
    others are squeezed), labelled when large enough."""
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    if label and size >= _MIN_LABELLED_TILE:
        _put_text(out, label, (3, 13))
    return out


def _bar(width: int, height: int, text: str, scale: float = 0.5) -> np.ndarray:
    bar = np.full((height, width, 3), _BACKGROUND, np.uint8)
    _put_text(bar,
              text, (6, height - 8),
              scale,
              colour=(0, 0, 0),
              outline=None)
    return bar


def _time_columns(result: ICMResult) -> dict:
    """Window time → column, over the union of both clips' instants."""
    clips = result.clips
    times = sorted(
        set(clips.slow_offsets.tolist())
        | set(clips.fast_offsets.tolist()))
    return {t: i for i, t in enumerate(times)}


def _row(label: str, tiles: dict, num_cols: int, tile: int) -> np.ndarray:
    """One labelled grid row; ``tiles`` maps column → image."""
    row = np.full((tile, _LABEL_WIDTH + num_cols * tile, 3), _BLANK, np.uint8)
    row[:, :_LABEL_WIDTH] = _BACKGROUND
    _put_text(row,
              label, (6, tile // 2 + 5),
              0.45,
              colour=(0, 0, 0),
              outline=None)
    for col, img in tiles.items():
        x = _LABEL_WIDTH + col * tile
        row[:, x:x + tile] = img
    return row


def _check_depths(result: ICMResult, depths) -> tuple:
    if depths is None:
        return result.depths
    return select_depths(depths, result.depths,
                         'the depths the ICM was computed at', KeyError)


def render_icm_grid(result: ICMResult,
                    depths: Optional[Union[str, Sequence[str]]] = None,
                    tile: int = 112,
                    title: Optional[str] = None,
                    show_frames: bool = True,
                    alpha: float = 0.5) -> np.ndarray:
    """One image: per tempo, the frames and the ICM overlay at each depth.

    Rows (top to bottom): slow frames, slow ICM per depth, fast frames, fast
    ICM per depth. Columns are instants of the sampling window.

    Args:
        result (ICMResult): From :func:`compute_icm`.
        depths (str | Sequence[str], optional): Depths to draw. Defaults to
            every computed depth.
        tile (int): Side of a frame tile in pixels. Defaults to 112.
        title (str, optional): Text of a title bar above the grid.
        show_frames (bool): Include the rows of plain frames.
            Defaults to True.
        alpha (float): Weight of the heat map over the frame.

    Returns:
        np.ndarray: (H, W, 3) RGB uint8.
    """
    depths = _check_depths(result, depths)
    columns = _time_columns(result)
    clips = result.clips
    rows = []
    for t in TEMPOS:
        frames = clips.frames(t)
        cols = [columns[o] for o in clips.offsets(t).tolist()]
        labels = [f'#{i}' for i in clips.inds(t).tolist()]
        layers = [(f'{t} frames', frames)] if show_frames else []
        layers += [(f'{t} {d}',
                    heatmap_overlay(frames, result.maps[d][t], alpha))
                   for d in depths]
        for name, images in layers:
            tiles = {
                c: _tile(img, tile, label)
                for c, img, label in zip(cols, images, labels)
            }
            rows.append(_row(name, tiles, len(columns), tile))
    grid = np.concatenate(rows, axis=0)
    if title:
        grid = np.concatenate(
            [_bar(grid.shape[1], _TITLE_HEIGHT, title), grid], axis=0)
    return grid


def render_icm_animation(result: ICMResult,
                         depths: Optional[Union[str, Sequence[str]]] = None,
                         tile: int = 192,
                         title: Optional[str] = None,
                         alpha: float = 0.5) -> List[np.ndarray]:
    """Animation frames: slow and fast ICM side by side, one instant each.

    The animation steps through the instants of both clips; each tempo shows
    its latest frame at or before the instant (the slow clip holds a frame
    while the fast one moves on). One row per depth.

    Args:
        result (ICMResult): From :func:`compute_icm`.
        depths (str | Sequence[str], optional): Defaults to every depth.
        tile (int): Side of a panel in pixels. Defaults to 192.
        title (str, optional): Text of a title bar above the panels.
        alpha (float): Weight of the heat map over the frame.

    Returns:
        list[np.ndarray]: RGB uint8 frames of equal size.
    """
    depths = _check_depths(result, depths)
    clips = result.clips
    overlays = {
        (d, t): heatmap_overlay(clips.frames(t), result.maps[d][t], alpha)
        for d in depths
        for t in TEMPOS
    }
    frames = []
    for now in sorted(_time_columns(result)):
        rows = []
        for d in depths:
            panels = []
            for t in TEMPOS:
                offsets = clips.offsets(t)
                shown = np.flatnonzero(offsets <= now)
                k = int(shown[-1]) if shown.size else 0
                label = f'{t} {d} #{int(clips.inds(t)[k])}'
                panels.append(_tile(overlays[d, t][k], tile, label))
            rows.append(np.concatenate(panels, axis=1))
        frame = np.concatenate(rows, axis=0)
        if title:
            frame = np.concatenate(
                [_bar(frame.shape[1], _TITLE_HEIGHT, title, 0.4), frame],
                axis=0)
        frames.append(frame)
    return frames


def stack_images(images: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """Stack RGB images vertically (left-aligned, white padding)."""
    width = max(img.shape[1] for img in images)
    parts = []
    for i, img in enumerate(images):
        if i:
            parts.append(np.full((gap, width, 3), _BACKGROUND, np.uint8))
        pad = width - img.shape[1]
        parts.append(
            np.pad(img, ((0, 0), (0, pad), (0, 0)),
                   constant_values=_BACKGROUND))
    return np.concatenate(parts, axis=0)


def _make_dirs(path: str) -> None:
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)


def save_image(path: str, image: np.ndarray) -> None:
    """Write an RGB uint8 image (format from the extension, e.g. PNG)."""
    from PIL import Image
    _make_dirs(path)
    Image.fromarray(image).save(path)


def save_gif(path: str,
             frames: Sequence[np.ndarray],
             fps: float = 4.0) -> None:
    """Write RGB uint8 frames as a looping animated GIF."""
    from PIL import Image
    if not frames:
        raise ValueError('no frames to write')
    _make_dirs(path)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path,
                   format='GIF',
                   save_all=True,
                   append_images=images[1:],
                   duration=int(round(1000 / fps)),
                   loop=0)
