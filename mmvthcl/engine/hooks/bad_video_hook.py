"""Report the bad videos a run skipped, and stop it when they are too many."""
import os.path as osp
from typing import Dict, Optional

import torch
from mmengine.dist import all_gather_object, all_reduce, is_main_process
from mmengine.hooks import Hook

from mmaction.registry import HOOKS


@HOOKS.register_module()
class BadVideoHook(Hook):
    """Count, log and limit the videos replaced by ``skip_bad_videos``.

    :class:`~mmvthcl.datasets.RobustVideoDataset` with
    ``skip_bad_videos=True`` replaces a bad video by another instance and
    lists it in the sample's metainfo (``bad_videos``), which travels with
    the batch from the dataloader workers to the main process; this hook
    reads it there, so counts are exact whatever the number of workers.

    - Each bad path is logged once (a warning with the reason).
    - At the end of every epoch (of the run, for an iteration-based loop)
      the counts of all ranks are summed and rank 0 logs them and writes
      every bad file met so far, with its reason, to ``out_file`` in the
      work dir (kept across resumes).
    - When more than ``max_bad_fraction`` of the videos read in an epoch
      are bad, the run stops with an error naming the limit and some of the
      files: that many failures mean broken data or storage, not a few bad
      downloads. The fraction is checked at the end of each epoch, and every
      ``interval`` iterations once ``min_samples`` videos have been read.

    The counts of an epoch interrupted by a resume restart at the resume.

    Args:
        max_bad_fraction (float): Largest tolerated fraction of bad videos
            among the videos read (replacements included). Defaults to 0.01.
        interval (int): Iterations between intermediate checks (one
            all-reduce of two numbers); 0 checks at epoch ends only.
            Defaults to 50.
        min_samples (int): Videos that must have been read in the epoch
            before an intermediate check judges the fraction.
            Defaults to 1000.
        out_file (str, optional): File in the work dir that lists the bad
            videos; None writes none. Defaults to ``'bad_videos.txt'``.
        max_listed (int): Bad paths named in the error. Defaults to 10.
    """

    priority = 'NORMAL'

    def __init__(self,
                 max_bad_fraction: float = 0.01,
                 interval: int = 50,
                 min_samples: int = 1000,
                 out_file: Optional[str] = 'bad_videos.txt',
                 max_listed: int = 10) -> None:
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError('BadVideoHook: max_bad_fraction must be in '
                             f'[0, 1], got {max_bad_fraction}')
        self.max_bad_fraction = max_bad_fraction
        self.interval = interval
        self.min_samples = min_samples
        self.out_file = out_file
        self.max_listed = max_listed
        self._warned = set()
        self._epoch = None
        self._reset()

    def _reset(self) -> None:
        self._bad = 0
        self._read = 0
        self._paths: Dict[str, str] = {}

    def before_train_epoch(self, runner) -> None:
        if self._epoch != runner.epoch:
            self._epoch = runner.epoch
            self._reset()

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        samples = data_batch.get('data_samples') \
            if isinstance(data_batch, dict) else None
        for sample in samples or ():
            metainfo = getattr(sample, 'metainfo', {})
            bad = metainfo.get('bad_videos', ())
            self._read += 1 + len(bad)
            self._bad += len(bad)
            for path, reason in bad:
                self._paths.setdefault(path, reason)
                if path not in self._warned:
                    self._warned.add(path)
                    runner.logger.warning(
                        f'bad video {path}: {reason}; replaced by another '
                        'instance (skip_bad_videos=True; logged once)')
        if self.interval and self.every_n_train_iters(runner, self.interval):
            self._check(runner, final=False)

    def after_train_epoch(self, runner) -> None:
        self._check(runner, final=True)

    def _what(self, runner) -> str:
        if runner.max_epochs and runner.max_epochs > 1:
            return f'epoch {runner.epoch + 1}'
        return 'this run'

    def _check(self, runner, final: bool) -> None:
        counts = torch.tensor([self._bad, self._read], dtype=torch.float64)
        all_reduce(counts)  # a no-op outside distributed runs
        bad, read = int(counts[0]), int(counts[1])
        too_many = read > 0 and bad / read > self.max_bad_fraction and (
            final or read >= self.min_samples)
        if not (final or too_many):
            return
        paths = {}
        for part in all_gather_object(self._paths):
            paths.update(part)
        if final and is_main_process():
            self._report(runner, bad, read, paths)
        if too_many:
            listed = '; '.join(
                f'{p} ({r})'
                for p, r in sorted(paths.items())[:self.max_listed])
            more = len(paths) - self.max_listed
            if more > 0:
                listed += f'; and {more} more'
            raise RuntimeError(
                f'{bad} of the {read} videos read in {self._what(runner)} '
                f'were bad ({bad / read:.2%}), more than '
                f'BadVideoHook.max_bad_fraction={self.max_bad_fraction}: '
                f'{listed}. Broken data or storage (an interrupted download,'
                ' an unmounted disk)? Fix it, or raise max_bad_fraction.')

    def _report(self, runner, bad: int, read: int, paths: dict) -> None:
        what = self._what(runner)
        if not bad:
            runner.logger.info(f'no bad videos in {what} ({read} read)')
            return
        listing = ''
        if self.out_file:
            listing = f'; listed in {self._write(runner, paths)}'
        runner.logger.warning(
            f'{bad} of the {read} videos read in {what} were bad '
            f'({bad / read:.3%}) and replaced by other instances; '
            f'{len(paths)} distinct files{listing}')

    def _write(self, runner, paths: dict) -> str:
        out = osp.join(runner.work_dir, self.out_file)
        known = {}
        if osp.isfile(out):  # earlier epochs, or the run before a resume
            with open(out) as f:
                for line in f:
                    path, _, reason = line.rstrip('\n').partition('\t')
                    if path:
                        known[path] = reason
        known.update(paths)
        with open(out, 'w') as f:
            f.writelines(f'{p}\t{r}\n' for p, r in sorted(known.items()))
        return out
