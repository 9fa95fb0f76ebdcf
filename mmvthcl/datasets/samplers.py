"""A sampler whose position can be restored, and indices that carry a seed.

Exact resume needs the data of step k+1 after a restart to be the data the
uninterrupted run would have drawn. MMEngine's ``DefaultSampler`` already
orders an epoch from ``(seed, epoch)`` alone, but two things are missing:

- the epoch loop restarts an interrupted epoch from its first batch, so a
  checkpoint written mid-epoch would replay the consumed batches
  (:meth:`ResumableSampler.skip_next` leaves them out instead), and the
  iteration loop re-reads (decodes) every consumed batch to move the
  sampler forward (:meth:`ResumableSampler.discard_next` makes those reads
  free);
- the random augmentation of a sample depends on the state of the worker
  process that happens to load it, which a restart re-seeds. Each index is
  therefore a :class:`SeededIndex`, an ``int`` that also carries the
  sampler's seed and epoch, so the dataset can draw the sample's
  augmentation from ``(seed, epoch, index)``
  (see :class:`~mmvthcl.datasets.RobustVideoDataset`). Datasets that do not
  look at the extra fields see a plain ``int``. Through a ``RepeatDataset``,
  which maps the index with ``%``, the fields survive and the sample's
  augmentation is keyed on the index the sampler drew, so every repeat of a
  video gets its own clips.
"""
import operator
from typing import Iterator, Optional, Sized

from mmengine.dataset import DefaultSampler

from mmaction.registry import DATA_SAMPLERS


class SeededIndex(int):
    """A dataset index with the sampler seed and epoch it was drawn for.

    Args:
        index (int): The dataset index.
        seed (int): The sampler seed (the same on every rank).
        epoch (int): The sampler epoch.
        discard (bool): The loop will throw the sample away (it moves the
            sampler forward after a resume); the dataset need not load it.
        drawn (int, optional): The index the sampler drew, when a dataset
            wrapper mapped it to this one (see :meth:`__mod__`). Defaults
            to ``index``.
    """

    def __new__(cls,
                index: int,
                seed: int,
                epoch: int,
                discard: bool = False,
                drawn: Optional[int] = None) -> 'SeededIndex':
        obj = super().__new__(cls, index)
        obj.seed = int(seed)
        obj.epoch = int(epoch)
        obj.discard = bool(discard)
        obj.drawn = int(index if drawn is None else drawn)
        return obj

    def __mod__(self, n):
        """``RepeatDataset`` finds its inner sample as ``index % len``: the
        result keeps the seed, epoch, discard mark and drawn index (any
        other arithmetic gives a plain ``int``)."""
        try:
            n = operator.index(n)
        except TypeError:
            return int(self) % n
        return SeededIndex(int(self) % n, self.seed, self.epoch, self.discard,
                           self.drawn)

    def __reduce__(self):
        # sent to dataloader workers through a pickle
        return (SeededIndex, (int(self), self.seed, self.epoch, self.discard,
                              self.drawn))

    def __repr__(self) -> str:
        drawn = f', drawn={self.drawn}' if self.drawn != int(self) else ''
        return (f'SeededIndex({int(self)}, seed={self.seed}, '
                f'epoch={self.epoch}{drawn})')


def keeps_sample_seeds(dataset) -> bool:
    """Whether :class:`SeededIndex` fields reach the dataset behind
    ``dataset``'s wrappers (MMEngine's wrappers map an index with
    ``_get_ori_dataset_idx``: ``RepeatDataset``'s keeps them,
    ``ClassBalancedDataset``'s table lookup does not)."""
    probe = SeededIndex(0, 0, 0)
    while hasattr(dataset, 'dataset'):
        mapping = getattr(dataset, '_get_ori_dataset_idx', None)
        if mapping is None or len(dataset) == 0:
            return False
        probe = mapping(probe)
        if not hasattr(probe, 'seed'):
            return False
        dataset = dataset.dataset
    return True


@DATA_SAMPLERS.register_module()
class ResumableSampler(DefaultSampler):
    """``DefaultSampler`` that yields :class:`SeededIndex` and can skip.

    The order of an epoch is DefaultSampler's (a permutation seeded by
    ``seed + epoch``, split over ranks), so switching a config to this
    sampler does not change which samples a run sees.

    Args:
        dataset (Sized): The dataset.
        shuffle (bool): Shuffle every epoch. Defaults to True.
        seed (int, optional): Shuffle and augmentation seed, the same on all
            ranks; None draws one (MMEngine's Runner passes its seed).
        round_up (bool): Pad the epoch to a multiple of the world size.
            Defaults to True.
    """

    def __init__(self,
                 dataset: Sized,
                 shuffle: bool = True,
                 seed: Optional[int] = None,
                 round_up: bool = True) -> None:
        super().__init__(
            dataset=dataset, shuffle=shuffle, seed=seed, round_up=round_up)
        self._skip = 0  # left out of the next pass
        self._active_skip = 0  # left out of the current pass
        self._discard_until = 0  # stream positions to mark as discarded
        self._position = 0  # samples yielded by this process so far

    def skip_next(self, num_samples: int) -> None:
        """Leave the first ``num_samples`` (of this rank) out of the next
        pass: the part of an epoch a resumed checkpoint already trained on.
        """
        if not 0 <= num_samples <= self.num_samples:
            raise ValueError(
                f'cannot skip {num_samples} samples of an epoch of '
                f'{self.num_samples} (per rank): the checkpoint does not '
                'come from this dataset and batch size')
        self._skip = int(num_samples)

    def discard_next(self, num_samples: int) -> None:
        """Mark the next ``num_samples`` indices drawn (across passes) as
        discarded: those an iteration loop re-draws after a resume only to
        move the sampler forward. Indices already handed to a dataloader
        iterator are not marked; make the iterator after this call."""
        self._discard_until = self._position + int(num_samples)

    def __iter__(self) -> Iterator[SeededIndex]:
        indices = list(super().__iter__())
        self._active_skip, self._skip = self._skip, 0
        seed, epoch = self.seed, self.epoch
        return (self._key(i, seed, epoch)
                for i in indices[self._active_skip:])

    def _key(self, index: int, seed: int, epoch: int) -> SeededIndex:
        # evaluated lazily, when the DataLoader asks for the index, so a
        # discard_next() issued after the iterator was made still applies
        discard = self._position < self._discard_until
        self._position += 1
        return SeededIndex(index, seed, epoch, discard)

    def __len__(self) -> int:
        """Samples of the pass to come (or in progress) on this rank."""
        return self.num_samples - (self._skip or self._active_skip)
