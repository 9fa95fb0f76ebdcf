"""Clip-level colour augmentations for contrastive pretraining.

MMAction2's :class:`ColorJitter` is always applied, fixes the order of its four
operations once at construction, and loops over frames in Python. Contrastive
recipes (InstDisc/MoCo/CMC practice) apply jitter with a probability, draw the
order per sample, and add random grayscale; these two transforms do that, one
clip at a time, with the same parameters for every frame of the clip (the
clip stays temporally consistent).

Colour jitter is the most expensive step of the VTHCL data pipeline (about as
much as everything else after decoding, at 224²), so it works in place on one
float32 buffer: the arithmetic, its order and hence every output byte are
those of MMAction2's ``ColorJitter`` formulas, without the temporaries (each a
fresh, page-faulted copy of the clip) and the slow broadcasts of the
frame-by-frame code.
"""
from typing import Dict, Optional

import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from mmaction.datasets.transforms import ColorJitter
from mmaction.registry import TRANSFORMS


def _stack(imgs) -> np.ndarray:
    return imgs if isinstance(imgs, np.ndarray) else np.stack(imgs)


class _Scratch:
    """Work buffers kept between calls, one set per clip shape.

    A clip-sized float32 array is several MB; allocating it afresh for every
    clip costs a page fault per 4 KB (the allocator hands such blocks back to
    the OS on free), more than the arithmetic done on it. Each transform
    instance keeps its buffers (a DataLoader worker has its own copy); they
    are never pickled.
    """

    def __init__(self) -> None:
        self.buffers = {}

    def get(self, name: str, shape: tuple, dtype) -> np.ndarray:
        key = (name, shape, np.dtype(dtype).str)
        buf = self.buffers.get(key)
        if buf is None:
            if len(self.buffers) > 16:  # many clip shapes: do not hoard
                self.buffers.clear()
            buf = self.buffers[key] = np.empty(shape, dtype)
        return buf

    def __getstate__(self) -> dict:
        return {'buffers': {}}


def _float_clip(imgs, out: np.ndarray) -> np.ndarray:
    """Copy the frames into ``out``, a (T, H, W, 3) float32 array."""
    if isinstance(imgs, np.ndarray):
        out[...] = imgs
    else:
        for i, img in enumerate(imgs):
            out[i] = img
    return out


def _grayscale(clip: np.ndarray, out: Optional[np.ndarray],
               tmp: Optional[np.ndarray]) -> tuple:
    """``ColorJitter.rgb_to_grayscale`` into reusable buffers.

    Same products, added in the same order ((r + g) + b), so the result is
    bit-identical to the stock expression.
    """
    out = np.multiply(clip[..., 0], 0.2989, out=out)
    tmp = np.multiply(clip[..., 1], 0.587, out=tmp)
    out += tmp
    np.multiply(clip[..., 2], 0.114, out=tmp)
    out += tmp
    return out, tmp


def _add_per_pixel(clip: np.ndarray, value: np.ndarray) -> None:
    """``clip += value[..., None]`` channel by channel.

    A broadcast over a last axis of 3 runs numpy's inner loop 3 elements at
    a time; three strided passes are several times faster.
    """
    for c in range(clip.shape[-1]):
        clip[..., c] += value


def _hue_lut(factor: float) -> np.ndarray:
    """A 3-channel LUT shifting OpenCV's 8-bit hue (0-179) cyclically.

    Hue as in ``mmvthcl.compat._adjust_hue`` (MMAction2's, without the
    numpy-2 overflow): ``(h + int(factor * 255)) % 180``; S and V unchanged.
    """
    lut = np.repeat(np.arange(256, dtype=np.int16)[:, None], 3, axis=1)
    lut[:, 0] = (lut[:, 0] + int(factor * 255)) % 180
    return lut.astype(np.uint8).reshape(1, 256, 3)


@TRANSFORMS.register_module()
class ClipColorJitter(ColorJitter):
    """Colour jitter applied to a whole clip with probability ``p``.

    Required keys are "imgs" (a list of HxWx3 RGB uint8 frames); "imgs" is
    modified.

    Args:
        p (float): Probability of jittering a clip. Defaults to 0.8.
        brightness (float | tuple[float]): Jitter range for brightness.
            Defaults to 0.4.
        contrast (float | tuple[float]): Jitter range for contrast.
            Defaults to 0.4.
        saturation (float | tuple[float]): Jitter range for saturation.
            Defaults to 0.4.
        hue (float | tuple[float]): Jitter range for hue. Defaults to 0.1.
    """

    def __init__(self,
                 p: float = 0.8,
                 brightness=0.4,
                 contrast=0.4,
                 saturation=0.4,
                 hue=0.1) -> None:
        super().__init__(brightness, contrast, saturation, hue)
        self.p = p
        self._scratch = _Scratch()

    def transform(self, results: Dict) -> Dict:
        if np.random.rand() >= self.p:
            return results
        # same draws in the same order as before: seeded runs are unchanged
        b = np.random.uniform(*self.brightness)
        c = np.random.uniform(*self.contrast)
        s = np.random.uniform(*self.saturation)
        h = np.random.uniform(*self.hue)
        order = np.random.permutation(4)
        imgs = results['imgs']
        shape = imgs.shape if isinstance(imgs, np.ndarray) else \
            (len(imgs), ) + imgs[0].shape
        t, height, w, _ = shape
        scratch = self._scratch
        # T, H, W, 3; modified in place
        clip = _float_clip(imgs, scratch.get('clip', shape, np.float32))
        # (T, H, W) buffers for the grey levels
        grey = scratch.get('grey', shape[:3], np.float32)
        tmp = scratch.get('tmp', shape[:3], np.float32)
        for fn_id in order:
            if fn_id == 0:
                clip *= b
            elif fn_id == 1:
                # contrast pivots around each frame's mean grey, as stock
                # does: c·x + (1 − c)·mean
                grey, tmp = _grayscale(clip, grey, tmp)
                mean = grey.mean(axis=(1, 2))
                clip *= c
                clip += (1 - c) * mean[:, None, None, None]
            elif fn_id == 2:
                # saturation: s·x + (1 − s)·grey
                grey, tmp = _grayscale(clip, grey, tmp)
                grey *= (1 - s)
                clip *= s
                _add_per_pixel(clip, grey)
            elif h != 0:
                # hue works on 8-bit HSV; cvtColor and the LUT are per
                # pixel: one call each on the clip as a tall image
                np.clip(clip, 0, 255, out=clip)
                rgb = scratch.get('rgb', (t * height, w, 3), np.uint8)
                hsv = scratch.get('hsv', (t * height, w, 3), np.uint8)
                np.copyto(rgb, clip.reshape(t * height, w, 3),
                          casting='unsafe')  # = astype(np.uint8)
                cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV, dst=hsv)
                cv2.LUT(hsv, _hue_lut(h), dst=hsv)
                cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=rgb)
                clip[...] = rgb.reshape(shape)
        np.clip(clip, 0, 255, out=clip)
        results['imgs'] = list(clip.astype(np.uint8))
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(p={self.p}, '
                f'brightness={self.brightness}, contrast={self.contrast}, '
                f'saturation={self.saturation}, hue={self.hue})')


@TRANSFORMS.register_module()
class ClipGrayscale(BaseTransform):
    """Turn a whole clip to grey (kept as 3 channels) with probability ``p``.

    Args:
        p (float): Probability of converting a clip. Defaults to 0.2.
    """

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def transform(self, results: Dict) -> Dict:
        if np.random.rand() >= self.p:
            return results
        clip = _stack(results['imgs'])
        t, h, w, _ = clip.shape
        grey = cv2.cvtColor(clip.reshape(t * h, w, 3), cv2.COLOR_RGB2GRAY)
        # GRAY2RGB copies the grey level to the 3 channels, like a repeat
        # along the last axis but in one vectorised pass
        grey = cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
        results['imgs'] = list(grey.reshape(t, h, w, 3))
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(p={self.p})'
