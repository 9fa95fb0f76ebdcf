"""Visual-tempo pairs: a slow and a fast clip of the same video instance.

VTHCL samples one instance twice, at two frame rates over the same time window,
so the two clips share semantics but differ in tempo. Both clips are read with
one decord reader in one ``get_batch`` call over the sorted union of their
frame indices; with the default setting (α divides the slow interval, same
window) the slow frames are a subset of the fast ones, so decoding the pair
costs what decoding the fast clip alone costs.
"""
import copy
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.dataset import Compose

from mmaction.registry import TRANSFORMS
from ..video_checks import BadVideoError
from .clip_augment import (COLOR_PARAMS_FAST_KEY, COLOR_PARAMS_KEY,
                           deferred_color_keys)


@TRANSFORMS.register_module()
class TempoPairSampleFrames(BaseTransform):
    """Sample the frame indices of a slow clip and a fast clip.

    The slow clip has ``clip_len`` frames ``frame_interval`` apart (8×8 by
    default) in a window of ``clip_len * frame_interval`` frames. The fast clip
    covers the same window with the same centre, α times denser: ``clip_len *
    alpha`` frames at interval ``frame_interval // alpha`` (16×4 for α = 2).
    With ``same_num_frames=True`` the fast clip keeps ``clip_len`` frames at
    interval ``frame_interval // alpha``, centred in the slow window.

    The window start is random in training and centred in test mode. Videos
    shorter than the window are handled like :class:`SampleFrames` does: the
    window starts at 0 and out-of-range indices loop (or repeat the last
    frame with ``out_of_bound_opt='repeat_last'``).

    Required Keys:

        - total_frames
        - start_index

    Added Keys:

        - frame_inds (slow clip), fast_frame_inds
        - clip_len, fast_clip_len, frame_interval, fast_frame_interval
        - num_clips (1)

    Args:
        clip_len (int): Frames of the slow clip. Defaults to 8.
        frame_interval (int): Interval between slow frames. Defaults to 8.
        alpha (int): Tempo ratio between the fast and the slow clip; must
            divide ``frame_interval``. 1 gives two clips at the same tempo.
            Defaults to 2.
        same_num_frames (bool): Give the fast clip ``clip_len`` frames instead
            of ``clip_len * alpha``. Defaults to False.
        out_of_bound_opt (str): ``'loop'`` or ``'repeat_last'`` for indices
            past the end of a short video. Defaults to ``'loop'``.
        test_mode (bool): Centre the window deterministically.
            Defaults to False.
    """

    def __init__(self,
                 clip_len: int = 8,
                 frame_interval: int = 8,
                 alpha: int = 2,
                 same_num_frames: bool = False,
                 out_of_bound_opt: str = 'loop',
                 test_mode: bool = False) -> None:
        for name, value in (('clip_len', clip_len),
                            ('frame_interval', frame_interval),
                            ('alpha', alpha)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f'TempoPairSampleFrames: {name} must be a '
                                 f'positive integer, got {value!r}')
        if frame_interval % alpha:
            raise ValueError(
                f'TempoPairSampleFrames: alpha={alpha} must divide '
                f'frame_interval={frame_interval} so the fast frames fall on '
                'whole frame indices')
        if out_of_bound_opt not in ('loop', 'repeat_last'):
            raise ValueError(
                'TempoPairSampleFrames: out_of_bound_opt must be '
                f"'loop' or 'repeat_last', got {out_of_bound_opt!r}")
        self.clip_len = clip_len
        self.frame_interval = frame_interval
        self.alpha = alpha
        self.same_num_frames = same_num_frames
        self.out_of_bound_opt = out_of_bound_opt
        self.test_mode = test_mode
        self.fast_interval = frame_interval // alpha
        self.fast_len = clip_len if same_num_frames else clip_len * alpha

    @property
    def span(self) -> int:
        """Number of frames the slow window covers."""
        return self.clip_len * self.frame_interval

    def window_start(self, total_frames: int) -> int:
        """First frame of the slow window (before ``start_index``)."""
        room = total_frames - self.span
        if room <= 0:
            return 0
        if self.test_mode:
            return room // 2
        return int(np.random.randint(room + 1))

    def clip_indices(self, start: int) -> tuple:
        """Slow and fast frame indices (unbounded) for a window start."""
        slow = start + np.arange(self.clip_len) * self.frame_interval
        fast_span = self.fast_len * self.fast_interval
        # both windows share their centre: start + span / 2
        fast_start = start + (self.span - fast_span) // 2
        fast = fast_start + np.arange(self.fast_len) * self.fast_interval
        return slow, fast

    def _bound(self, inds: np.ndarray, total_frames: int) -> np.ndarray:
        if self.out_of_bound_opt == 'loop':
            return np.mod(inds, total_frames)
        return np.minimum(inds, total_frames - 1)

    def transform(self, results: Dict) -> Dict:
        total = int(results['total_frames'])
        if total < 1:
            name = results.get('filename', 'video')
            raise BadVideoError(
                f'{name}: has no frames', path=name, reason='has no frames')
        slow, fast = self.clip_indices(self.window_start(total))
        start_index = results.get('start_index', 0)
        results['frame_inds'] = (self._bound(slow, total) +
                                 start_index).astype(np.int64)
        results['fast_frame_inds'] = (self._bound(fast, total) +
                                      start_index).astype(np.int64)
        results['clip_len'] = self.clip_len
        results['fast_clip_len'] = self.fast_len
        results['frame_interval'] = self.frame_interval
        results['fast_frame_interval'] = self.fast_interval
        results['num_clips'] = 1
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(clip_len={self.clip_len}, '
                f'frame_interval={self.frame_interval}, alpha={self.alpha}, '
                f'same_num_frames={self.same_num_frames}, '
                f'out_of_bound_opt={self.out_of_bound_opt!r}, '
                f'test_mode={self.test_mode})')


@TRANSFORMS.register_module()
class TempoPairDecode(BaseTransform):
    """Decode both clips of a tempo pair at once, then augment each clip.

    The sorted, de-duplicated union of ``frame_inds`` and ``fast_frame_inds``
    is read with a single ``get_batch`` call on the reader opened by
    :class:`DecordInit`; each clip then takes its frames from that batch and
    runs through its own copy of ``clip_pipeline`` (so crops, flips and colour
    are drawn independently), which normally ends in
    ``FormatShape('NCTHW')``. The slow clip lands in ``imgs`` and the fast clip
    in ``imgs_fast``, ready for
    ``PackActionInputs(collect_keys=('imgs', 'imgs_fast'))``.

    Required Keys:

        - video_reader (from ``DecordInit``)
        - frame_inds, fast_frame_inds (from ``TempoPairSampleFrames``)

    Added Keys:

        - imgs, imgs_fast, img_shape, original_shape, decoded_frames
        - color_params, color_params_fast (when a clip pipeline defers its
          colour augmentation to ``ClipColorDataPreprocessor``)

    Args:
        clip_pipeline (list[dict], optional): Spatial augmentation applied to
            each clip (stock MMAction2 transforms operating on ``imgs``).
            Defaults to None (the clips stay lists of RGB frames).
        fast_clip_pipeline (list[dict], optional): A different pipeline for
            the fast clip. Defaults to None (same as ``clip_pipeline``).
        share_crop (bool): Augment both clips together, so they get the same
            crop, flip and colour. Needs a single ``clip_pipeline``.
            Defaults to False.
    """

    def __init__(self,
                 clip_pipeline: Optional[List[dict]] = None,
                 fast_clip_pipeline: Optional[List[dict]] = None,
                 share_crop: bool = False) -> None:
        if share_crop and fast_clip_pipeline is not None:
            raise ValueError('TempoPairDecode: share_crop=True applies one '
                             'augmentation to both clips; do not also give '
                             'fast_clip_pipeline')
        self.share_crop = share_crop
        self.slow_pipeline = self._compose(clip_pipeline)
        self.fast_pipeline = self._compose(
            fast_clip_pipeline if fast_clip_pipeline is not None else
            clip_pipeline)
        # where each clip's deferred colour record goes (ClipColorJitter /
        # ClipGrayscale with defer=True in its pipeline)
        self._record_keys = {}
        for clip, pipe, key in (
                ('slow', self.slow_pipeline, COLOR_PARAMS_KEY),
                ('fast', self.fast_pipeline, COLOR_PARAMS_FAST_KEY)):
            if pipe is not None and deferred_color_keys(
                    pipe.transforms, f'TempoPairDecode ({clip} clip)'):
                self._record_keys[clip] = key

    @property
    def deferred_color_keys(self) -> tuple:
        """Keys of the deferred colour records this transform adds."""
        return tuple(self._record_keys.values())

    @staticmethod
    def _compose(cfg: Optional[Sequence[dict]]) -> Optional[Compose]:
        return None if cfg is None else Compose(copy.deepcopy(list(cfg)))

    @staticmethod
    def decode(reader, slow_inds: np.ndarray,
               fast_inds: np.ndarray) -> tuple:
        """Read the union of two index sets in one call.

        Returns:
            tuple: (slow frames, fast frames, number of decoded frames); the
            frames are views into one decoded array.
        """
        union, inverse = np.unique(
            np.concatenate([slow_inds, fast_inds]), return_inverse=True)
        batch = reader.get_batch(union).asnumpy()
        frames = list(batch)
        n = len(slow_inds)
        slow = [frames[i] for i in inverse[:n]]
        fast = [frames[i] for i in inverse[n:]]
        return slow, fast, len(union)

    @staticmethod
    def _clip_results(results: Dict, imgs: list) -> Dict:
        clip = {
            k: v
            for k, v in results.items()
            if k not in ('video_reader', 'imgs', 'imgs_fast')
        }
        clip.update(
            imgs=imgs,
            clip_len=len(imgs),
            num_clips=1,
            img_shape=imgs[0].shape[:2],
            original_shape=imgs[0].shape[:2])
        return clip

    def _augment(self, pipeline: Optional[Compose], results: Dict,
                 imgs: list) -> Dict:
        clip = self._clip_results(results, imgs)
        if pipeline is None:
            return clip
        out = pipeline(clip)
        if out is None:
            raise RuntimeError(
                f"{results.get('filename', 'video')}: clip_pipeline "
                'returned None')
        return out

    def transform(self, results: Dict) -> Dict:
        reader = results.get('video_reader')
        if reader is None:
            raise KeyError('TempoPairDecode needs results["video_reader"]: '
                           'put DecordInit before it in the pipeline')
        try:
            slow, fast, n_decoded = self.decode(reader, results['frame_inds'],
                                                results['fast_frame_inds'])
        except Exception as e:
            # the file's fault (a corrupt stream), not the pipeline's
            name = results.get('filename', 'video')
            reason = (f'decoding {len(results["frame_inds"])} + '
                      f'{len(results["fast_frame_inds"])} frames failed: '
                      f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
                      if str(e) else f'decoding failed: {type(e).__name__}')
            raise BadVideoError(
                f'{name}: {reason}', path=name, reason=reason) from e
        # Release the reader (and the file) before augmenting, as
        # DecordDecode does: alive, decord's decoding thread keeps running
        # next to the augmentation and can double its time on a busy CPU.
        results['video_reader'] = None
        del reader
        results['decoded_frames'] = n_decoded

        if self.share_crop:
            both = self._augment(self.slow_pipeline, results, slow + fast)
            imgs = both['imgs']
            n = len(slow)
            if isinstance(imgs, np.ndarray):  # after FormatShape('NCTHW')
                slow_out, fast_out = imgs[:, :, :n], imgs[:, :, n:]
            else:
                slow_out, fast_out = imgs[:n], imgs[n:]
            slow_res = dict(both, imgs=slow_out)
            fast_res = dict(both, imgs=fast_out)
        else:
            slow_res = self._augment(self.slow_pipeline, results, slow)
            fast_res = self._augment(self.fast_pipeline, results, fast)

        results['imgs'] = slow_res['imgs']
        results['imgs_fast'] = fast_res['imgs']
        for clip, res in (('slow', slow_res), ('fast', fast_res)):
            if clip in self._record_keys:
                results[self._record_keys[clip]] = res[COLOR_PARAMS_KEY]
        results['original_shape'] = slow[0].shape[:2]
        results['img_shape'] = slow_res['img_shape']
        results['clip_len'] = len(slow)
        results['fast_clip_len'] = len(fast)
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(share_crop={self.share_crop}, '
                f'clip_pipeline={self.slow_pipeline}, '
                f'fast_clip_pipeline={self.fast_pipeline})')
