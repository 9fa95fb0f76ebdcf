"""Resume a run so that it continues exactly as if never interrupted."""
from typing import Optional

from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop

from mmaction.registry import HOOKS
from mmvthcl.datasets import ResumableSampler
from mmvthcl.datasets.samplers import keeps_sample_seeds
from ...utils import seed_generators


def train_sampler(runner):
    """The index sampler of the training dataloader (or None)."""
    loader = runner.train_dataloader
    sampler = getattr(loader, 'sampler', None)
    batch_sampler = getattr(loader, 'batch_sampler', None)
    if batch_sampler is not None and hasattr(batch_sampler, 'sampler'):
        sampler = batch_sampler.sampler
    return sampler


def train_batch_size(runner) -> int:
    loader = runner.train_dataloader
    if loader.batch_size is not None:
        return loader.batch_size
    return loader.batch_sampler.batch_size


def indices_drawn(runner, sampler, num_batches: int) -> int:
    """Indices the loader takes from ``sampler`` to make ``num_batches``
    batches, passes included.

    A pass draws all ``sampler.num_samples`` indices of this rank whatever
    its batches: the last one is partial, or with ``drop_last`` its
    leftover indices are drawn and thrown away.
    """
    passes, batches = divmod(num_batches, len(runner.train_dataloader))
    return passes * sampler.num_samples + batches * train_batch_size(runner)


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Make ``--resume`` continue exactly where the checkpoint left off.

    What MMEngine 0.10.7 does not restore, and what this hook adds:

    - **Position in the epoch.** ``EpochBasedTrainLoop`` restarts an
      interrupted epoch from its first batch, so a checkpoint written
      mid-epoch (``CheckpointHook(by_epoch=False)``) would train its
      consumed batches twice and run past ``max_iters``. The hook makes a
      :class:`~mmvthcl.datasets.ResumableSampler` leave them out.
      ``IterBasedTrainLoop`` re-draws every consumed batch to move its
      sampler forward; the hook marks those re-drawn indices as discarded so
      :class:`~mmvthcl.datasets.RobustVideoDataset` does not decode them.
    - **Sampler seed.** It is saved in the checkpoint (``meta.sampler_seed``)
      and put back, so a run with ``randomness.seed=None`` keeps its shuffle
      and augmentation after a resume.
    - **Random generators of the main process.** They are not in MMEngine
      checkpoints; instead of saving them, the hook seeds Python's, numpy's
      and torch's (CPU and CUDA) generators before every iteration from
      ``(runner seed, iteration)``, so whatever the model or a hook draws at
      iteration i is the same in a resumed and an uninterrupted run however
      much was drawn in between (a validation, a new dataloader iterator).
      Per-sample augmentation is seeded by the dataset itself, in the worker
      that loads the sample.

    Args:
        reseed_every_iter (bool): Seed the generators before every
            iteration. Defaults to True.
    """

    # first among the before_train_iter hooks, so that all draw after it
    priority = 'VERY_HIGH'

    def __init__(self, reseed_every_iter: bool = True) -> None:
        self.reseed_every_iter = reseed_every_iter
        self._loaded_seed: Optional[int] = None
        self._skip_pending = False

    # ------------------------------------------------------- checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        sampler = train_sampler(runner)
        if getattr(sampler, 'seed', None) is not None:
            checkpoint.setdefault('meta', {})['sampler_seed'] = int(
                sampler.seed)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get('meta')
        seed = meta.get('sampler_seed') if isinstance(meta, dict) else None
        self._loaded_seed = seed if isinstance(seed, int) else None

    # ---------------------------------------------------------- resuming
    def before_train(self, runner) -> None:
        self._skip_pending = False
        sampler = train_sampler(runner)
        if not isinstance(sampler, ResumableSampler):
            runner.logger.warning(
                f'ExactResumeHook: the training sampler is '
                f'{type(sampler).__name__}, not ResumableSampler: a resumed '
                'run will not continue exactly where it stopped')
        elif not keeps_sample_seeds(runner.train_dataloader.dataset):
            runner.logger.warning(
                'ExactResumeHook: train_dataloader.dataset is a '
                f'{type(runner.train_dataloader.dataset).__name__}, which '
                'hands its inner dataset plain indices: the augmentation '
                'of a sample then depends on the worker that loads it, and '
                'a resumed run will not draw the same clips (RepeatDataset '
                'keeps the per-sample seeds)')
        if runner.iter == 0:
            return  # a fresh run (load_from restores weights only)
        new_seed = self._loaded_seed is not None and \
            getattr(sampler, 'seed', None) != self._loaded_seed
        if new_seed:
            runner.logger.info(f'sampler seed {sampler.seed} -> '
                               f'{self._loaded_seed} (from the checkpoint)')
            sampler.seed = self._loaded_seed
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            resumable = isinstance(sampler, ResumableSampler)
            if resumable:
                # the loop now re-draws runner.iter batches and throws them
                # away: mark them so they are not decoded
                sampler.discard_next(
                    indices_drawn(runner, sampler, runner.iter))
            if resumable or new_seed:
                # the loop's iterator was made before the resume (with the
                # old seed, already prefetching): make it again, so it
                # starts from the marks and the seed
                loop.dataloader_iterator = type(loop.dataloader_iterator)(
                    loop.dataloader)
        else:
            self._skip_pending = True

    def before_train_epoch(self, runner) -> None:
        if not self._skip_pending:
            return
        self._skip_pending = False
        per_epoch = len(runner.train_dataloader)
        consumed = runner.iter - runner.epoch * per_epoch
        if consumed <= 0:
            return  # the checkpoint was written at the end of an epoch
        if consumed > per_epoch:
            raise ValueError(
                f'the checkpoint is at iteration {runner.iter} of epoch '
                f'{runner.epoch + 1}, but an epoch has {per_epoch} '
                'iterations here: it comes from another dataset or batch '
                'size')
        sampler = train_sampler(runner)
        if not isinstance(sampler, ResumableSampler):
            runner.logger.warning(
                f'resuming in the middle of epoch {runner.epoch + 1}: '
                f'{type(sampler).__name__} cannot skip the {consumed} '
                'batches already trained, so they are trained again')
            return
        # consumed == per_epoch: saved by iteration after the last batch,
        # before the epoch ended; the epoch ends (its hooks run) at once
        sampler.skip_next(
            min(consumed * train_batch_size(runner), sampler.num_samples))
        runner.logger.info(
            f'resuming in the middle of epoch {runner.epoch + 1}: its first '
            f'{consumed} of {per_epoch} batches were trained before the '
            'checkpoint and are skipped')

    # ------------------------------------------------------------- seeds
    def before_train_iter(self,
                          runner,
                          batch_idx: int,
                          data_batch=None) -> None:
        if not self.reseed_every_iter:
            return
        seed = runner.seed if runner.seed is not None else 0
        seed_generators(seed, runner.iter, 0xC0FFEE)
