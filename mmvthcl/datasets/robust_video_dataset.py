"""A ``VideoDataset`` for runs that last days over hundreds of thousands of
files: clear errors on bad input, optional skipping of bad videos, and
per-sample augmentation that survives a restart."""
import contextlib
import os.path as osp
from typing import Iterator, List, Optional, Tuple

import numpy as np
from mmengine.fileio import exists, list_from_file

from mmaction.datasets import VideoDataset
from mmaction.datasets.transforms import (DecordDecode, DecordInit,
                                          OpenCVDecode, OpenCVInit,
                                          PIMSDecode, PIMSInit, PyAVDecode,
                                          PyAVInit)
from mmaction.registry import DATASETS
from ..utils import preserved_rng, seed_generators, seed_words
from .transforms.clip_augment import check_color_records_are_packed
from .video_checks import (BadVideoError, file_start, probe_video_file,
                           video_path)

#: transforms whose failures are failures of the file they read
READER_TRANSFORMS = (DecordInit, DecordDecode, OpenCVInit, OpenCVDecode,
                     PyAVInit, PyAVDecode, PIMSInit, PIMSDecode)


@contextlib.contextmanager
def seeded_rng(*key: int) -> Iterator[None]:
    """Seed Python's, numpy's and torch's CPU generators from ``key``, and
    give the caller its own generator states back afterwards.

    The states are restored so that loading in the main process
    (``num_workers=0``) draws nothing from the generators the model uses.
    """
    with preserved_rng():
        # the CPU generator only: the pipeline runs on CPU
        seed_generators(*key, cuda=False)
        yield


@DATASETS.register_module()
class RobustVideoDataset(VideoDataset):
    """``VideoDataset`` that names bad input, may skip it, and reseeds.

    Annotation lines are ``path [label ...]`` like :class:`VideoDataset`'s
    (a line with only a path gets label -1). Blank lines are ignored.

    **Bad input.** A line whose label is not an integer (or is negative, or
    not below ``num_classes``) or whose path is empty fails when the dataset
    is built, naming the annotation file and line. When a sample is loaded,
    its file is checked first (missing, empty, unreadable, an MP4 or AVI
    container cut short, see :func:`probe_video_file`); that and any failure
    of the reading transforms (``DecordInit``, ``TempoPairDecode``'s decode,
    ...) raise :class:`BadVideoError`, whose message names the file, the
    reason, the sample index and the annotation line. A video shorter than
    the sampled span, even a single frame, is not an error: the frame
    samplers loop over it.

    With ``skip_bad_videos=True`` a bad sample is replaced by another
    instance chosen deterministically from ``(seed, epoch, index)``; the
    returned sample carries the *replacement's* ``sample_idx`` (so memory
    banks update the replacement's rows, never the bad video's), and its
    data sample's metainfo ``bad_videos`` lists ``(path, reason)`` of every
    bad file met on the way. :class:`~mmvthcl.engine.hooks.BadVideoHook`
    reads that in the main process (it travels with the batch from the
    dataloader workers), logs each bad path once, reports counts per epoch
    and stops a run with too many bad videos.

    **Reproducible augmentation.** When the sampler gives
    :class:`~mmvthcl.datasets.SeededIndex` indices (as
    :class:`~mmvthcl.datasets.ResumableSampler` does), every sample's
    pipeline runs with Python's, numpy's and torch's generators seeded from
    ``(sampler seed, epoch, index)``, so the clips of a sample depend
    neither on the worker that loads it nor on the number of workers, and
    a resumed run draws the same clips as an uninterrupted one. Behind a
    ``RepeatDataset`` the index is the one the sampler drew, so repeats of
    a video differ. Plain ``int`` indices (also those of a wrapper that
    looks them up in a table) run the pipeline as ``VideoDataset`` does.

    Args:
        ann_file (str): Annotation file.
        pipeline (list[dict | callable]): The data pipeline.
        skip_bad_videos (bool): Replace bad videos by other instances instead
            of raising. Defaults to False.
        max_retries (int): Replacements tried for one sample before giving
            up (then the data, or its storage, is broken beyond skipping).
            Defaults to 10.
        check_files (bool): Check local files (existence, size, container
            completeness) before decoding. Defaults to True.
        **kwargs: Other arguments of :class:`VideoDataset`
            (``data_prefix``, ``multi_class``, ``num_classes``,
            ``delimiter``, ...).
    """

    def __init__(self,
                 ann_file: str,
                 pipeline: list,
                 skip_bad_videos: bool = False,
                 max_retries: int = 10,
                 check_files: bool = True,
                 **kwargs) -> None:
        if max_retries < 0:
            raise ValueError(f'max_retries must be >= 0, got {max_retries}')
        # set before the base class loads the annotations
        self.skip_bad_videos = skip_bad_videos
        self.max_retries = max_retries
        self.check_files = check_files
        super().__init__(ann_file, pipeline, **kwargs)
        # a mistake here would train silently without colour augmentation
        check_color_records_are_packed(
            self.pipeline.transforms,
            f'{type(self).__name__} pipeline (ann_file={ann_file})')

    # ------------------------------------------------------- annotations
    def load_data_list(self) -> List[dict]:
        """Parse the annotation file, refusing malformed lines by number."""
        exists(self.ann_file)
        data_list = []
        prefix = self.data_prefix.get('video')
        for lineno, line in enumerate(list_from_file(self.ann_file), 1):
            text = line.strip()
            if not text:
                continue
            try:
                filename, label = self._parse_line(text)
            except ValueError as e:
                raise ValueError(f'{self.ann_file}, line {lineno}: {e} in '
                                 f'{text!r}') from None
            if prefix is not None:
                filename = osp.join(prefix, filename)
            data_list.append(
                dict(filename=filename, label=label, ann_line=lineno))
        return data_list

    def _parse_line(self, text: str) -> tuple:
        # ' ' (the default) accepts any run of whitespace
        fields = text.split() if self.delimiter == ' ' else \
            text.split(self.delimiter)
        filename, tokens = fields[0].strip(), fields[1:]
        if not filename:
            raise ValueError('empty video path')
        if filename.endswith(('/', '\\')):
            raise ValueError(f'the path {filename!r} names a directory')
        if len(tokens) > 1 and not self.multi_class:
            raise ValueError(
                f'{len(fields)} fields where "path label" was expected (a '
                'delimiter inside the path? or set multi_class=True)')
        labels = []
        for token in tokens:
            try:
                value = int(token)
            except ValueError:
                raise ValueError(
                    f'label {token!r} is not an integer') from None
            if value < 0:
                raise ValueError(f'label {value} is negative')
            if self.num_classes is not None and value >= self.num_classes:
                raise ValueError(f'label {value} is not below num_classes='
                                 f'{self.num_classes}')
            labels.append(value)
        if self.multi_class:
            if not labels:
                raise ValueError('no label (multi_class=True needs one)')
            return filename, labels
        return filename, labels[0] if labels else -1

    # ----------------------------------------------------------- samples
    def _where(self, idx: int, info: dict) -> str:
        line = info.get('ann_line')
        where = f'sample {idx}'
        if line is not None:
            where += f', line {line} of {self.ann_file}'
        return where

    def _bad(self, idx: int, info: dict, reason: str) -> BadVideoError:
        path = video_path(info['filename'])
        message = f'bad video {path}: {reason} ({self._where(idx, info)})'
        if not self.skip_bad_videos:
            message += ('; fix or remove it, or pass skip_bad_videos=True '
                        'to the dataset to train on without it')
        return BadVideoError(message, path=path, reason=reason)

    def _check_file(self, idx: int, info: dict) -> None:
        path = video_path(info['filename'])
        if not self.check_files or '://' in path:
            return  # remote storage: the reader reports problems
        reason = probe_video_file(path)
        if reason is not None:
            raise self._bad(idx, info, reason)

    def _run_pipeline(self, idx: int, info: dict):
        # Compose's loop, with each failure attributed: errors of the
        # transforms that read the file (and BadVideoError from any
        # transform) are the video's; the others are bugs and propagate
        results = info
        for transform in self.pipeline.transforms:
            try:
                results = transform(results)
            except BadVideoError as e:
                raise self._bad(idx, info, e.reason) from e
            except Exception as e:
                if not isinstance(transform, READER_TRANSFORMS):
                    raise
                reason = f'{type(transform).__name__} cannot read it: ' \
                    f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
                start = file_start(video_path(info['filename']))
                if start:
                    reason += f' (the file starts with {start!r})'
                raise self._bad(idx, info, reason) from e
            if results is None:
                return None
        return results

    def _load(self, idx: int, key: Optional[Tuple[int, ...]]):
        info = self.get_data_info(idx)
        self._check_file(idx, info)
        if key is None:
            return self._run_pipeline(idx, info)
        with seeded_rng(*key):
            return self._run_pipeline(idx, info)

    def replacement(self, idx: int, attempt: int, seed: int = 0,
                    epoch: int = 0) -> int:
        """The instance that stands in for bad sample ``idx`` (never
        ``idx`` itself), a function of ``(seed, epoch, idx, attempt)``."""
        n = len(self)
        if n < 2:
            raise BadVideoError(
                f'sample {idx} is bad and the dataset has no other sample '
                'to replace it with', reason='no replacement')
        rng = np.random.default_rng(
            seed_words(seed, epoch, idx, attempt, 0x5EED))
        other = int(rng.integers(n - 1))
        return other + (other >= idx)

    def prepare_data(self, idx):
        """Load sample ``idx`` (an ``int`` or a ``SeededIndex``).

        Returns the packed sample; with ``skip_bad_videos`` a bad video is
        replaced and the returned sample says so in its metainfo.
        """
        index = int(idx)
        if getattr(idx, 'discard', False):
            # re-drawn only to move the sampler forward after a resume:
            # the loop throws it away, so nothing is read
            return dict(discarded=index)
        seeded = hasattr(idx, 'seed') and hasattr(idx, 'epoch')
        seed, epoch = (idx.seed, idx.epoch) if seeded else (0, 0)
        # the index the sampler drew: behind a RepeatDataset each repeat of
        # a video has its own, and so its own augmentation
        drawn = getattr(idx, 'drawn', index)
        bad = []
        candidate = index
        for attempt in range(self.max_retries + 1):
            key = (seed, epoch, drawn, attempt) if seeded else None
            try:
                data = self._load(candidate, key)
            except BadVideoError as e:
                if not self.skip_bad_videos:
                    raise
                bad.append((e.path, e.reason))
                candidate = self.replacement(index, attempt, seed, epoch)
                continue
            if bad and data is not None:
                self._attach(data, bad)
            return data
        listing = '; '.join(f'{p}: {r}' for p, r in bad)
        raise BadVideoError(
            f'sample {index} and {self.max_retries} replacements in a row '
            f'are bad videos ({listing}): the data, or the storage it is '
            'read from, looks broken', reason='too many bad videos')

    @staticmethod
    def _attach(data, bad: list) -> None:
        samples = data.get('data_samples') if isinstance(data, dict) \
            else None
        if hasattr(samples, 'set_metainfo'):
            samples.set_metainfo(dict(bad_videos=tuple(bad)))
        elif isinstance(data, dict):
            data['bad_videos'] = tuple(bad)
