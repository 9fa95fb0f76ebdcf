"""Instance Correspondence Map (ICM): where the two tempos agree.

The paper shows ICMs but its formula is not available to us; this is our
definition (README.md, "Instance Correspondence Map"). For one video, at
one depth d:

- the slow clip's feature map goes through the slow φ_d at every
  spatio-temporal location (:meth:`Projection.dense`: the MLP as 1×1×1
  convolutions with the same weights, BN with its running statistics), giving
  unit vectors;
- each location is scored by its cosine similarity with the fast clip's
  global embedding (φ_d of the pooled fast features, the vector that the
  slow clip is contrasted with in training);
- the scores are upsampled to the frames (trilinear, so time is resampled
  too when the encoder strides in time) and min-max normalised to [0, 1]
  over the whole clip, so that frames of one clip stay comparable.

The fast clip's map is the same with the roles swapped (fast φ_d densely,
slow global embedding). Bright regions are the ones whose features carry
what the other tempo's clip is, as a whole, recognised by.

Clips are sampled deterministically: ``TempoPairSampleFrames`` in test mode
with the training config's clip length, interval and α, then a resize of the
short side to the crop size and a centre crop, the same for both clips.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from mmaction.datasets.transforms import CenterCrop, DecordInit, Resize
from ..datasets.transforms.tempo_pair import (TempoPairDecode,
                                              TempoPairSampleFrames)
from ..utils import (eval_mode, select_depths, tempo_sampling,
                     train_crop_size, unwrap_model)

TEMPOS = ('slow', 'fast')
#: what each tempo's dense map is compared with
OTHER = {'slow': 'fast', 'fast': 'slow'}
DEFAULT_SIZE = 224


@dataclass
class ICMClips:
    """The deterministic slow/fast clips of one video, ready to embed.

    Args:
        video (str): The video file.
        slow_frames (np.ndarray): (T, H, W, 3) RGB uint8 slow frames after the
            resize and centre crop.
        fast_frames (np.ndarray): (T_fast, H, W, 3) fast frames.
        slow_inds (np.ndarray): Frame index of every slow frame in the video.
        fast_inds (np.ndarray): Frame index of every fast frame.
        slow_offsets (np.ndarray): Time of every slow frame from the start of
            the sampling window, before short videos wrap around; it lines
            the two clips up when drawing them.
        fast_offsets (np.ndarray): The same for the fast frames.
        total_frames (int): Frames in the video.
    """
    video: str
    slow_frames: np.ndarray
    fast_frames: np.ndarray
    slow_inds: np.ndarray
    fast_inds: np.ndarray
    slow_offsets: np.ndarray
    fast_offsets: np.ndarray
    total_frames: int

    def frames(self, tempo: str) -> np.ndarray:
        return self.slow_frames if tempo == 'slow' else self.fast_frames

    def inds(self, tempo: str) -> np.ndarray:
        return self.slow_inds if tempo == 'slow' else self.fast_inds

    def offsets(self, tempo: str) -> np.ndarray:
        return self.slow_offsets if tempo == 'slow' else self.fast_offsets

    def inputs(self) -> Dict[str, List[torch.Tensor]]:
        """Model inputs before the data preprocessor: one (1, C, T, H, W)
        uint8 tensor per clip, as ``FormatShape('NCTHW')`` and
        ``PackActionInputs`` would give them."""

        def to_tensor(frames):
            return torch.from_numpy(
                np.ascontiguousarray(frames.transpose(3, 0, 1, 2)))[None]

        return {
            'imgs': [to_tensor(self.slow_frames)],
            'imgs_fast': [to_tensor(self.fast_frames)]
        }


@dataclass
class ICMResult:
    """ICMs of one video.

    Args:
        clips (ICMClips): The clips the maps belong to (frames, indices).
        maps (dict): ``maps[depth][tempo]``: (T, H, W) float32 maps in
            [0, 1], one per frame of that tempo's clip, at frame size.
        similarity (dict): ``similarity[depth][tempo]``: the raw cosine
            similarities (T', h, w) at feature-map resolution, before
            upsampling and normalisation.
    """
    clips: ICMClips
    maps: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    similarity: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def depths(self) -> Tuple[str, ...]:
        return tuple(self.maps)


# ---------------------------------------------------------- configuration
def icm_sampler(cfg=None) -> TempoPairSampleFrames:
    """A test-mode ``TempoPairSampleFrames`` matching a training config.

    Clip length, interval, α, ``same_num_frames`` and ``out_of_bound_opt``
    come from the config's ``TempoPairSampleFrames`` when there is one, so the
    clips have the tempos the model was trained on; otherwise the defaults
    (8×8, α = 2). The window is always centred.
    """
    return TempoPairSampleFrames(**tempo_sampling(cfg), test_mode=True)


def icm_crop_size(cfg=None) -> int:
    """The square input size of a training config (224 when not found)."""
    return train_crop_size(cfg, DEFAULT_SIZE)


# ------------------------------------------------------------------ clips
def _resize_and_crop(frames: List[np.ndarray], size: int) -> np.ndarray:
    """Short side to ``size``, then the central ``size`` × ``size``.

    The short side goes to the crop size itself (not 8/7 of it as in
    recognition tests) so that the whole height (or width) of the video is
    seen; training's RandomResizedCrop covers that scale.
    """
    h, w = frames[0].shape[:2]
    clip = dict(imgs=list(frames), img_shape=(h, w), modality='RGB')
    clip = Resize(scale=(-1, size))(clip)
    clip = CenterCrop(crop_size=size)(clip)
    return np.stack(clip['imgs']).astype(np.uint8)


def load_icm_clips(
        video: str,
        cfg=None,
        size: Optional[int] = None,
        sampler: Optional[TempoPairSampleFrames] = None) -> ICMClips:
    """Decode the deterministic slow/fast pair of a video.

    Args:
        video (str): Video file (anything decord reads).
        cfg (Config, optional): Training config giving the sampling and the
            crop size (see :func:`icm_sampler`, :func:`icm_crop_size`).
        size (int, optional): Square frame size; overrides the config's.
        sampler (TempoPairSampleFrames, optional): Overrides the sampling.

    Raises:
        RuntimeError: The video cannot be opened or decoded; the message
            names the file.
    """
    sampler = sampler or icm_sampler(cfg)
    size = int(size or icm_crop_size(cfg))
    results = dict(filename=video, start_index=0, modality='RGB')
    try:
        results = sampler(DecordInit()(results))
        total = int(results['total_frames'])
        slow, fast, _ = TempoPairDecode.decode(results['video_reader'],
                                               results['frame_inds'],
                                               results['fast_frame_inds'])
    except Exception as e:  # decord, file system: all mean "unreadable"
        raise RuntimeError(f'{video}: cannot be read as a video '
                           f'({type(e).__name__}: {e})') from e
    finally:
        results['video_reader'] = None  # close the file now
    slow_off, fast_off = sampler.clip_indices(0)
    return ICMClips(video=video,
                    slow_frames=_resize_and_crop(slow, size),
                    fast_frames=_resize_and_crop(fast, size),
                    slow_inds=np.asarray(results['frame_inds']),
                    fast_inds=np.asarray(results['fast_frame_inds']),
                    slow_offsets=np.asarray(slow_off),
                    fast_offsets=np.asarray(fast_off),
                    total_frames=total)


# ------------------------------------------------------------ computation
def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The VTHCL model inside a DDP (or other) wrapper, checked."""
    model = unwrap_model(model)
    head = getattr(model, 'head', None)
    if not (hasattr(model, 'extract_feat') and hasattr(head, 'projections')
            and hasattr(head, 'depths')):
        raise TypeError(f'{type(model).__name__} is not a VTHCL model (it '
                        'needs extract_feat and head.projections)')
    return model


def check_depths(
        model, depths: Optional[Union[str, Sequence[str]]]) -> Tuple[str, ...]:
    """Validate the requested depths (None or ``'all'``: every depth)."""
    if depths is None or depths == 'all':
        return tuple(model.head.depths)
    return select_depths(depths, model.head.depths)


@torch.no_grad()
def correspondence(
    model: torch.nn.Module,
    slow: torch.Tensor,
    fast: torch.Tensor,
    depths: Optional[Sequence[str]] = None
) -> Dict[str, Dict[str, torch.Tensor]]:
    """Raw ICM scores at feature resolution.

    Args:
        model (VTHCL): The model (wrapped or not).
        slow (Tensor): Normalised slow clips, (B, C, T, H, W) or
            (B, 1, C, T, H, W).
        fast (Tensor): Normalised fast clips.
        depths (Sequence[str], optional): Defaults to every model depth.

    Returns:
        dict: ``[depth][tempo]`` → (B, T', h, w) cosine similarities in
        [-1, 1] between that tempo's dense φ map and the other tempo's
        global embedding.
    """
    model = unwrap(model)
    depths = check_depths(model, depths)
    projections = model.head.projections
    # eval mode: φ's BN uses running statistics (B = 1 is fine) and nothing
    # (BN statistics, memory banks) is updated
    with eval_mode(model):
        feats = {
            'slow': model.extract_feat(slow, 'slow'),
            'fast': model.extract_feat(fast, 'fast')
        }
        out = {}
        for depth in depths:
            i = model.head.depths.index(depth)
            glob = {
                t: projections[f'{depth}_{t}'](feats[t][i])
                for t in TEMPOS
            }
            out[depth] = {}
            for t in TEMPOS:
                dense = projections[f'{depth}_{t}'].dense(feats[t][i])
                out[depth][t] = torch.einsum('bdthw,bd->bthw', dense,
                                             glob[OTHER[t]])
    return out


def unit_map(sim: torch.Tensor, size: Tuple[int, int, int]) -> np.ndarray:
    """Upsample a (T', h, w) score map to (T, H, W) and scale it to [0, 1].

    The min-max scaling is over the whole clip: a frame that matches less
    than another stays darker. A constant map becomes all zeros.
    """
    up = F.interpolate(sim[None, None].float(),
                       size=tuple(size),
                       mode='trilinear',
                       align_corners=False)[0, 0]
    lo, hi = up.min(), up.max()
    if float(hi - lo) <= 1e-12:
        return np.zeros(tuple(size), np.float32)
    return ((up - lo) / (hi - lo)).clamp_(0,
                                          1).cpu().numpy().astype(np.float32)


@torch.no_grad()
def compute_icm(
        model: torch.nn.Module,
        clips: ICMClips,
        depths: Optional[Union[str, Sequence[str]]] = None) -> ICMResult:
    """ICMs of decoded clips, both tempos, at the requested depths.

    Args:
        model (VTHCL): The model, possibly wrapped; left in the mode it was
            in, with its BN statistics and memory banks untouched.
        clips (ICMClips): From :func:`load_icm_clips`.
        depths (str | Sequence[str], optional): Defaults to every depth.
    """
    model = unwrap(model)
    depths = check_depths(model, depths)
    data = model.data_preprocessor(
        dict(inputs=clips.inputs(), data_samples=None), False)
    sims = correspondence(model, data['inputs']['imgs'],
                          data['inputs']['imgs_fast'], depths)
    result = ICMResult(clips)
    for depth in depths:
        result.maps[depth], result.similarity[depth] = {}, {}
        for t in TEMPOS:
            sim = sims[depth][t][0]
            frames = clips.frames(t)
            result.similarity[depth][t] = sim.float().cpu().numpy()
            result.maps[depth][t] = unit_map(sim, frames.shape[:3])
    return result
