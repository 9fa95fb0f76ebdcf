"""Clip-level colour augmentations for contrastive pretraining.

MMAction2's :class:`ColorJitter` is always applied, fixes the order of its four
operations once at construction, and loops over frames in Python. Contrastive
recipes (InstDisc/MoCo/CMC practice) apply jitter with a probability, draw the
order per sample, and add random grayscale; these two transforms do that, one
clip at a time, with the same parameters for every frame of the clip (the
clip stays temporally consistent).

Colour jitter is the most expensive step of the VTHCL data pipeline (about as
much as everything else after decoding, at 224²), so it works in place on one
float32 buffer: the arithmetic and its order are those of MMAction2's
``ColorJitter`` formulas, without the temporaries (each a fresh, page-faulted
copy of the clip) and the slow broadcasts of the frame-by-frame code. The
output bytes are MMAction2's but for rare rounding differences of a few
levels (about 1e-5 of the values, after a contrast step: the mean grey it
pivots around is summed in another order, and a hue shift after it can turn
a level into several).

With ``defer=True`` both transforms only draw their random parameters (the
same draws, in the same order) and record them in ``results['color_params']``;
:func:`apply_color_params` applies the records to a batch of clips on the
model's device (``ClipColorDataPreprocessor`` calls it) and gives the same
clips up to rounding: brightness, contrast and saturation are composed into
one colour map, and OpenCV's 8-bit HSV and grey conversions are reproduced
exactly in tensor arithmetic (the hue shift looked up in tables built from
it). The loader then does no colour work at all.
"""
from typing import Dict, Optional, Sequence

import cv2
import numpy as np
import torch
from mmcv.transforms import BaseTransform

from mmaction.datasets.transforms import ColorJitter
from mmaction.registry import TRANSFORMS
from ...utils import host_to_device


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


def _hue_lut(offset: int) -> np.ndarray:
    """A 3-channel LUT shifting OpenCV's 8-bit hue (0-179) cyclically.

    Hue as in ``mmvthcl.compat._adjust_hue`` (MMAction2's, without the
    numpy-2 overflow): ``(h + offset) % 180`` with ``offset = int(factor *
    255)``; S and V unchanged.
    """
    lut = np.repeat(np.arange(256, dtype=np.int16)[:, None], 3, axis=1)
    lut[:, 0] = (lut[:, 0] + offset) % 180
    return lut.astype(np.uint8).reshape(1, 256, 3)


def _shift_hue_u8(rgb: np.ndarray, offset: int,
                  hsv: Optional[np.ndarray] = None) -> np.ndarray:
    """Shift the hue of a tall (N, W, 3) uint8 RGB image in place."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV, dst=hsv)
    cv2.LUT(hsv, _hue_lut(offset), dst=hsv)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=rgb)


#: ``results`` key (and data-sample field) of a clip's deferred colour
#: augmentation, and the one of the fast clip of a tempo pair
COLOR_PARAMS_KEY = 'color_params'
COLOR_PARAMS_FAST_KEY = COLOR_PARAMS_KEY + '_fast'
# A record is 10 float64 numbers: jitter on (0/1), the brightness, contrast,
# saturation and hue factors, the order of the four operations (ids as in
# MMAction2's ColorJitter: 0 brightness, 1 contrast, 2 saturation, 3 hue) and
# grey (0/1). float64 keeps the factors exactly as drawn.
_ON, _FACTORS, _ORDER, _GREY = 0, slice(1, 5), slice(5, 9), 9
_HUE = 4  # the hue factor, the last of _FACTORS
_RECORD_LEN = 10


def color_record(results: Dict) -> np.ndarray:
    """The clip's colour record in ``results``, created empty if absent."""
    record = results.get(COLOR_PARAMS_KEY)
    if record is None:
        record = np.zeros(_RECORD_LEN, np.float64)
        record[_FACTORS] = (1, 1, 1, 0)
        record[_ORDER] = range(4)
        results[COLOR_PARAMS_KEY] = record
    return record


def deferred_color_keys(transforms: Sequence, where: str) -> set:
    """The colour-record keys a list of built transforms produces.

    Checks that deferred colour transforms come after every transform that
    could change what they would have seen: a deferred jitter is applied to
    the final clip, so a crop after it would change the frame mean its
    contrast pivots around. Only other deferred colour transforms and
    ``Flip``, ``FormatShape``, ``PackActionInputs`` may follow. A deferred
    grey conversion is applied after the jitter, so a deferred jitter must
    not follow a deferred ``ClipGrayscale``.

    Args:
        transforms (Sequence): Built transforms, in order.
        where (str): Where the list is configured, for the error message.
    """
    keys, deferred_at = set(), None
    for i, t in enumerate(transforms):
        inner = getattr(t, 'deferred_color_keys', None)
        if inner is not None:  # e.g. TempoPairDecode and its clip pipelines
            keys |= set(inner)
        elif getattr(t, 'defer', False) and isinstance(
                t, (ClipColorJitter, ClipGrayscale)):
            if isinstance(t, ClipColorJitter) and any(
                    isinstance(u, ClipGrayscale) and u.defer
                    for u in transforms[:i]):
                raise ValueError(
                    f'{where}: ClipColorJitter(defer=True) comes after '
                    'ClipGrayscale(defer=True), but deferred records are '
                    'applied jitter first, then grey; put ClipGrayscale '
                    'after ClipColorJitter (as the shipped configs do) or '
                    'set defer=False on both')
            keys.add(COLOR_PARAMS_KEY)
            deferred_at = i if deferred_at is None else deferred_at
        elif deferred_at is not None and type(t).__name__ not in (
                'Flip', 'FormatShape', 'PackActionInputs'):
            raise ValueError(
                f'{where}: {type(t).__name__} comes after '
                f'{type(transforms[deferred_at]).__name__}(defer=True); '
                'deferred colour transforms must come after every transform '
                'that crops or changes pixels (only Flip, FormatShape and '
                'PackActionInputs may follow them)')
    return keys


def check_color_records_are_packed(transforms: Sequence, where: str) -> None:
    """Refuse a pipeline whose deferred colour records would be dropped.

    ``PackActionInputs`` keeps only the keys named in ``algorithm_keys``;
    without them the model never sees the records and trains silently
    without colour augmentation.
    """
    keys = deferred_color_keys(transforms, where)
    if not keys:
        return
    packs = [t for t in transforms if type(t).__name__ == 'PackActionInputs']
    for pack in packs:
        missing = sorted(keys - set(getattr(pack, 'algorithm_keys', ())))
        if missing:
            raise ValueError(
                f'{where}: deferred colour augmentation records '
                f'{missing}, but PackActionInputs does not keep them; add '
                f'them to its algorithm_keys (e.g. algorithm_keys=('
                f"'sample_idx', {', '.join(repr(k) for k in sorted(keys))}))")


@TRANSFORMS.register_module()
class ClipColorJitter(ColorJitter):
    """Colour jitter applied to a whole clip with probability ``p``.

    Required keys are "imgs" (a list of HxWx3 RGB uint8 frames); "imgs" is
    modified, or with ``defer=True`` "color_params" is added instead.

    Args:
        p (float): Probability of jittering a clip. Defaults to 0.8.
        brightness (float | tuple[float]): Jitter range for brightness.
            Defaults to 0.4.
        contrast (float | tuple[float]): Jitter range for contrast.
            Defaults to 0.4.
        saturation (float | tuple[float]): Jitter range for saturation.
            Defaults to 0.4.
        hue (float | tuple[float]): Jitter range for hue, in MMAction2's
            units: h shifts OpenCV's 180-step hue circle (2° a step) by
            int(h · 255) steps, so 0.1 is up to ±25 steps (±50°;
            torchvision's hue=0.1 is ±36°, about 0.07 here). Defaults to
            0.1.
        defer (bool): Only draw the parameters and record them in
            ``results['color_params']``, for ``ClipColorDataPreprocessor`` to
            apply on the model's device. Must come after every transform that
            crops (contrast pivots around the mean of the final frame).
            Defaults to False.
    """

    def __init__(self,
                 p: float = 0.8,
                 brightness=0.4,
                 contrast=0.4,
                 saturation=0.4,
                 hue=0.1,
                 defer: bool = False) -> None:
        super().__init__(brightness, contrast, saturation, hue)
        self.p = p
        self.defer = defer
        self._scratch = _Scratch()

    def transform(self, results: Dict) -> Dict:
        if np.random.rand() >= self.p:
            if self.defer:
                color_record(results)  # present even when nothing is drawn
            return results
        # same draws in the same order as before: seeded runs are unchanged
        b = np.random.uniform(*self.brightness)
        c = np.random.uniform(*self.contrast)
        s = np.random.uniform(*self.saturation)
        h = np.random.uniform(*self.hue)
        order = np.random.permutation(4)
        if self.defer:
            record = color_record(results)
            record[_ON], record[_FACTORS] = 1, (b, c, s, h)
            record[_ORDER] = order
            return results
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
                _shift_hue_u8(rgb, int(h * 255), hsv)
                clip[...] = rgb.reshape(shape)
        np.clip(clip, 0, 255, out=clip)
        results['imgs'] = list(clip.astype(np.uint8))
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(p={self.p}, '
                f'brightness={self.brightness}, contrast={self.contrast}, '
                f'saturation={self.saturation}, hue={self.hue}, '
                f'defer={self.defer})')


@TRANSFORMS.register_module()
class ClipGrayscale(BaseTransform):
    """Turn a whole clip to grey (kept as 3 channels) with probability ``p``.

    Args:
        p (float): Probability of converting a clip. Defaults to 0.2.
        defer (bool): Only record the decision in ``results['color_params']``
            (applied after the recorded colour jitter by
            ``ClipColorDataPreprocessor``). Defaults to False.
    """

    def __init__(self, p: float = 0.2, defer: bool = False) -> None:
        self.p = p
        self.defer = defer

    def transform(self, results: Dict) -> Dict:
        grey = np.random.rand() < self.p
        if self.defer:
            color_record(results)[_GREY] = grey
            return results
        if not grey:
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
        return f'{self.__class__.__name__}(p={self.p}, defer={self.defer})'


# ----------------------------------------------------------------------
# The deferred path: the same augmentation on a batch of tensors
# ----------------------------------------------------------------------
#: ``ColorJitter.rgb_to_grayscale``'s weights
_GREY_W = np.array([0.2989, 0.587, 0.114])


def _rgb_to_hsv8(rgb: torch.Tensor) -> tuple:
    """OpenCV's ``COLOR_RGB2HSV`` for 8-bit images, in integer arithmetic.

    ``rgb`` holds integers 0-255 on channel dim -4. OpenCV divides with
    fixed-point reciprocal tables (12 fractional bits, rounded); the same
    tables give the same bytes: H in [0, 180), S and V in [0, 255].
    """
    r, g, b = rgb.to(torch.int32).unbind(-4)
    v = torch.maximum(torch.maximum(b, g), r)
    diff = v - torch.minimum(torch.minimum(b, g), r)
    shift = 12
    half = 1 << (shift - 1)
    idx = torch.arange(256, dtype=torch.float64, device=rgb.device)
    # the tables' entry 0 is 0 (grey pixels: no hue, no saturation)
    sdiv = torch.where(idx > 0, torch.round((255 << shift) / idx),
                       0.).to(torch.int32)
    hdiv = torch.where(idx > 0, torch.round((180 << shift) / (6 * idx)),
                       0.).to(torch.int32)
    s = (diff * sdiv[v] + half) >> shift
    # the sector is chosen with R first, then G, as OpenCV does
    h = torch.where(v == r, g - b,
                    torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * hdiv[diff] + half) >> shift
    h = torch.where(h < 0, h + 180, h)
    return h, s, v


def _fnma(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - a * b`` rounded once, as the fused multiply-add that the
    compiler makes of OpenCV's SIMD code (float32 products are exact in
    float64)."""
    return (1 - a.double() * b.double()).float()


def _hsv8_to_rgb(h: torch.Tensor, s: torch.Tensor,
                 v: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``COLOR_HSV2RGB`` for 8-bit images, as its SIMD code runs
    it (float32, the result truncated; H in [0, 180))."""
    hf = h.to(torch.float32) * (6.0 / 180)
    sf = s.to(torch.float32) * (1 / 255)
    vf = v.to(torch.float32) * (1 / 255)
    sector = torch.floor(hf)
    frac = hf - sector
    p = vf * (1 - sf)
    q = vf * _fnma(sf, frac)
    t = vf * _fnma(sf, 1 - frac)
    # each channel takes v, p, q or t by sector (s = 0 gives p = q = t = v)
    is_ = [sector == k for k in range(6)]
    r = torch.where(is_[0] | is_[5], vf,
                    torch.where(is_[1], q, torch.where(is_[4], t, p)))
    g = torch.where(is_[1] | is_[2], vf,
                    torch.where(is_[0], t, torch.where(is_[3], q, p)))
    b = torch.where(is_[3] | is_[4], vf,
                    torch.where(is_[2], t, torch.where(is_[5], q, p)))
    return torch.floor(torch.stack([r, g, b], dim=-4) * 255).clamp_(0, 255)


def _shift_hue_arith(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``ColorJitter.adjust_hue`` (numpy-2-safe) of clips already clipped
    to 8-bit values, by per-clip 8-bit hue offsets, in tensor arithmetic:
    the exact computation, from which :func:`_hue_tables` are built."""
    h, s, v = _rgb_to_hsv8(x)
    view = (-1, ) + (1, ) * (h.dim() - 1)
    return _hsv8_to_rgb(torch.remainder(h + offset.view(view), 180), s, v)


#: device → the two tables of :func:`_shift_hue`, built on first use
_HUE_TABLES: Dict[str, tuple] = {}


def _pack(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Three 8-bit integer tensors in one int32: ``a << 16 | b << 8 | c``."""
    return (a.to(torch.int32) << 16) | (b.to(torch.int32) << 8) | c.to(
        torch.int32)


def _unpack(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """:func:`_pack` undone: the three 8-bit values stacked on ``dim``."""
    return torch.stack([packed >> 16, (packed >> 8) & 255, packed & 255],
                       dim=dim)


def _hue_tables(device: torch.device, chunk: int = 1 << 20) -> tuple:
    """OpenCV's 8-bit RGB→HSV of every colour (2²⁴ entries) and HSV→RGB of
    every (h, s, v) (180 · 2¹⁶), packed 8 bits per channel into int32, on
    ``device`` (64 + 45 MiB, kept for the process). Built once, ``chunk``
    entries at a time (a few MiB of temporaries), by the arithmetic of
    :func:`_shift_hue_arith`, so looking a pixel up gives its bytes."""
    key = str(device)
    if key not in _HUE_TABLES:

        def table(size, fn):
            out = torch.empty(size, dtype=torch.int32, device=device)
            for i in range(0, size, chunk):
                c = torch.arange(
                    i, min(i + chunk, size), dtype=torch.int32, device=device)
                # (3, 1, 1, n): the channel dim -4 of the arithmetic
                abc = _unpack(c, dim=0).view(3, 1, 1, -1)
                out[i:i + len(c)] = _pack(*fn(abc)).view(-1)
            return out

        _HUE_TABLES[key] = (
            table(1 << 24, _rgb_to_hsv8),
            table(180 << 16, lambda hsv: _hsv8_to_rgb(*hsv.unbind(0)).unbind(
                -4)))
    return _HUE_TABLES[key]


def _shift_hue(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """:func:`_shift_hue_arith` by two table lookups per pixel (for GPUs;
    :func:`_shift_hue_cpu` is what a CPU runs): about 20 integer kernels
    instead of the arithmetic's 90-odd, several of them in float64 (H100, a
    step's colour: 146 kernels instead of 290, 1.4x faster), with the same
    bytes (the tables hold the arithmetic's results)."""
    to_hsv, to_rgb = _hue_tables(x.device)
    r, g, b = x.to(torch.int32).unbind(-4)
    hsv = to_hsv[_pack(r, g, b)]
    view = (-1, ) + (1, ) * (hsv.dim() - 1)
    hue = torch.remainder((hsv >> 16) + offset.view(view), 180)
    rgb = to_rgb[(hue << 16) | (hsv & 0xFFFF)]
    return _unpack(rgb, dim=-4).to(x.dtype)


def _shift_hue_cpu(x: torch.Tensor, offset: int) -> torch.Tensor:
    """:func:`_shift_hue` of one clip on a CPU with OpenCV, as the loader
    does it (several times faster than the tensor version there)."""
    rgb = x.movedim(-4, -1).to(torch.uint8).contiguous()  # (..., H, W, 3)
    _shift_hue_u8(rgb.numpy().reshape(-1, rgb.shape[-2], 3), offset)
    return rgb.movedim(-1, -4).to(x.dtype)


def _cv_grey(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit ``COLOR_RGB2GRAY`` (15-bit fixed point), 3 channels."""
    r, g, b = x.to(torch.int32).unbind(-4)
    grey = (r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15
    return grey.to(x.dtype).unsqueeze(-4).expand_as(x)


def _compose(ops: list) -> tuple:
    """One affine colour map for a run of brightness/contrast/saturation.

    Each is linear in the pixel's RGB: brightness ``b·x``, saturation
    ``s·x + (1 − s)·grey(x)`` (a 3×3 matrix), contrast ``c·x + (1 − c)·m``
    with m the frame's mean grey, which is the grey of the frame's mean
    colour. So the run is ``A·x + P·mean_t``: two 3×3 matrices per clip,
    the second applied to each frame's mean colour. Keeping the means out
    of the host's arithmetic lets the device form the offsets where it
    computed the means, without reading them back (a sync on a GPU).

    Args:
        ops (list): (operation id, factor) in order.

    Returns:
        tuple: A and P, (3, 3) float64 each.
    """
    a, p = np.eye(3), np.zeros((3, 3))
    for op, f in ops:
        if op == 0:
            a, p = f * a, f * p
        elif op == 1:
            # the mean grey so far, (mean·(A + P)ᵀ)·w = mean·(wᵀ(A + P))
            grey_of_mean = _GREY_W @ (a + p)
            a = f * a
            p = f * p + (1 - f) * np.outer(np.ones(3), grey_of_mean)
        else:
            m = f * np.eye(3) + (1 - f) * np.outer(np.ones(3), _GREY_W)
            a, p = m @ a, m @ p
    return a, p


def _affine(x: torch.Tensor, a: np.ndarray, p: np.ndarray) -> torch.Tensor:
    """Per-clip ``A·x + P·mean_t`` on channel dim -4 of
    (B, ..., 3, T, H, W), mean_t the mean colour of frame t.

    Elementwise multiply-adds, not a matmul: no TF32 on GPUs. The maps are
    copied to the device without waiting and nothing is read back, so a
    GPU's host keeps queueing kernels.
    """
    bshape = (len(x), ) + (1, ) * (x.dim() - 5)  # the dims between B and C
    a, p = host_to_device(a, x.device, x.dtype), host_to_device(p, x.device)
    # the offsets P·mean_t, (B, ..., 3, T), summed in float64 (a few
    # hundred numbers): P (B, ..., 3, 3, 1) times mean (B, ..., 1, 3, T)
    mean = x.mean(dim=(-2, -1)).double()
    o = (p.view(*bshape, 3, 3, 1) * mean.unsqueeze(-3)).sum(dim=-2).to(
        x.dtype)
    chans = x.unbind(-4)
    out = []
    for i in range(3):
        # o[b, i, t] broadcast over H, W (and the dims between B and C)
        y = o[..., i, :, None, None].expand_as(chans[0]).clone()
        for j in range(3):
            y.addcmul_(a[:, i, j].view(*bshape, 1, 1, 1), chans[j])
        out.append(y)
    return torch.stack(out, dim=-4)


def apply_color_params(clips: torch.Tensor,
                       records: Sequence,
                       opencv_hue: Optional[bool] = None) -> torch.Tensor:
    """Apply deferred :class:`ClipColorJitter` / :class:`ClipGrayscale`.

    Brightness, contrast and saturation are linear, so the operations before
    and after a clip's hue shift each collapse into one affine colour map
    (:func:`_compose`); the batch then takes one pass for each map, one hue
    shift for the clips that have one, and one grey conversion, whatever
    the order each clip drew: a few dozen kernels for the whole batch on a
    GPU. The result is the loader's up to float rounding (the loader rounds
    after every operation): about 1e-5 of the values differ, mostly by one
    level, a few by up to four where a hue shift follows the rounding.

    Args:
        clips (Tensor): (B, ..., C=3, T, H, W) RGB values 0-255, one clip
            (or a stack of clips sharing the record) per sample; float.
        records (Sequence): B records from ``results['color_params']``
            (arrays of 10 numbers), or a (B, 10) array.
        opencv_hue (bool, optional): Shift hues with OpenCV clip by clip
            (fast on a CPU) rather than with tensor operations on the whole
            batch (few launches on a GPU); both give the same bytes.
            Defaults to None: OpenCV for CPU tensors.

    Returns:
        Tensor: the augmented clips (integers 0-255 as ``clips.dtype``).
    """
    records = np.asarray(
        [np.asarray(r, np.float64) for r in records], np.float64)
    if records.ndim != 2 or records.shape[1] != _RECORD_LEN or \
            len(records) != len(clips):
        raise ValueError(
            f'apply_color_params: expected {len(clips)} records of '
            f'{_RECORD_LEN} numbers ({COLOR_PARAMS_KEY}), got an array of '
            f'shape {records.shape}')
    x = clips
    on = records[:, _ON] > 0
    if on.any():
        # split each clip's operations at its hue shift (a factor under
        # 1/255 still makes the lossy 8-bit round trip, as in the loader)
        before, after, hue = [], [], np.zeros(len(x), bool)
        for i, rec in enumerate(records):
            ops = [(op, rec[_FACTORS][op]) for op in
                   rec[_ORDER].astype(int)] if on[i] else []
            cut = next((k for k, (op, f) in enumerate(ops)
                        if op == 3 and f != 0), None)
            hue[i] = cut is not None
            cut = len(ops) if cut is None else cut
            before.append([op for op in ops[:cut] if op[0] != 3])
            after.append([op for op in ops[cut + 1:] if op[0] != 3])
        x = _affine(x, *_stack_maps(before))
        x = x.clamp_(0, 255).floor_()  # np.clip + astype(np.uint8)
        if hue.any():
            rows = np.flatnonzero(hue)
            offset = np.trunc(records[:, _HUE] * 255)  # int(), as MMAction2
            if opencv_hue is None:
                opencv_hue = x.device.type == 'cpu'
            if opencv_hue:
                for i in rows:  # one clip at a time
                    x[i] = _shift_hue_cpu(x[i], int(offset[i]))
            else:  # all clips in one go: a few dozen kernel launches
                sel = host_to_device(rows, x.device)
                shift = host_to_device(offset[rows], x.device, torch.int32)
                x[sel] = _shift_hue(x[sel], shift)
            if any(after):
                x = _affine(x, *_stack_maps(after))
                x = x.clamp_(0, 255).floor_()
    grey_rows = np.flatnonzero(records[:, _GREY] > 0)
    if len(grey_rows):
        x = x.clone() if x is clips else x
        rows = host_to_device(grey_rows, x.device)
        x[rows] = _cv_grey(x[rows])
    return x


def _stack_maps(ops_per_clip: list) -> tuple:
    """The affine maps of every clip: A and P, (B, 3, 3) each."""
    maps = [_compose(ops) for ops in ops_per_clip]
    return np.stack([a for a, _ in maps]), np.stack([p for _, p in maps])
