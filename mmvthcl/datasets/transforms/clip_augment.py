"""Clip-level colour augmentations for contrastive pretraining.

MMAction2's :class:`ColorJitter` is always applied, fixes the order of its four
operations once at construction, and loops over frames in Python. Contrastive
recipes (InstDisc/MoCo/CMC practice) apply jitter with a probability, draw the
order per sample, and add random grayscale; these two transforms do that, one
clip at a time, with the same parameters for every frame of the clip (the
clip stays temporally consistent).
"""
from typing import Dict

import cv2
import numpy as np
from mmcv.transforms import BaseTransform

from mmaction.datasets.transforms import ColorJitter
from mmaction.registry import TRANSFORMS


def _stack(imgs) -> np.ndarray:
    return imgs if isinstance(imgs, np.ndarray) else np.stack(imgs)


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

    def transform(self, results: Dict) -> Dict:
        if np.random.rand() >= self.p:
            return results
        clip = _stack(results['imgs']).astype(np.float32)  # T, H, W, 3
        b = np.random.uniform(*self.brightness)
        c = np.random.uniform(*self.contrast)
        s = np.random.uniform(*self.saturation)
        h = np.random.uniform(*self.hue)
        for fn_id in np.random.permutation(4):
            if fn_id == 0:
                clip *= b
            elif fn_id == 1:
                # contrast pivots around each frame's mean grey, as stock does
                mean = self.rgb_to_grayscale(clip).mean(axis=(1, 2))
                clip = c * clip + (1 - c) * mean[:, None, None, None]
            elif fn_id == 2:
                clip = self.adjust_saturation(clip, s)
            elif h != 0:
                # cvtColor is per pixel: one call on the clip as a tall image
                t, height, w, _ = clip.shape
                flat = self.adjust_hue(clip.reshape(t * height, w, 3), h)
                clip = flat.reshape(t, height, w, 3)
        results['imgs'] = list(np.clip(clip, 0, 255).astype(np.uint8))
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
        grey = np.repeat(grey.reshape(t, h, w, 1), 3, axis=3)
        results['imgs'] = list(grey)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(p={self.p})'
