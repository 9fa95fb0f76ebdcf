"""kNN monitoring of the slow encoder during self-supervised pretraining."""
import os.path as osp
from typing import List, Optional

from mmengine.hooks import Hook

from mmaction.registry import HOOKS
from ...evaluation.knn import evaluate_knn, knn_pipeline
from ...utils import select_depths, unwrap_model


@HOOKS.register_module()
class KNNMonitorHook(Hook):
    """Log the weighted kNN top-1 of the slow encoder every few epochs.

    The slow encoder's pooled res5 features of a labelled train list and a
    labelled val list are compared (NPID-style weighted kNN); the accuracy is
    logged as ``knn/top1`` (logger, message hub and visualizer backends).
    Labels are used only here. All ranks take part (each embeds its share).

    Args:
        train_ann (str): Labelled list (``path label``) of reference clips.
        val_ann (str): Labelled list of clips to classify.
        data_root (str): Directory the list paths are relative to.
            Defaults to ''.
        pipeline (list[dict], optional): Test pipeline of a single slow clip
            ending in ``PackActionInputs(collect_keys=('imgs',))``.
            Defaults to one derived from the training config.
        interval (int): Evaluate every ``interval`` epochs (and after the
            last). Defaults to 1.
        k (int): Neighbours. Defaults to 20.
        temperature (float): Vote temperature. Defaults to 0.07.
        depth (str): Which depth's features. Defaults to ``'res5'``.
        batch_size (int): Clips per forward pass. Defaults to 16.
        num_workers (int): Data loading workers. Defaults to 0.
        center (bool): Centre features on the train set's mean before the
            cosine (see :mod:`mmvthcl.evaluation.knn`). Defaults to True.
    """

    priority = 'LOW'

    def __init__(self,
                 train_ann: str,
                 val_ann: str,
                 data_root: str = '',
                 pipeline: Optional[List[dict]] = None,
                 interval: int = 1,
                 k: int = 20,
                 temperature: float = 0.07,
                 depth: str = 'res5',
                 batch_size: int = 16,
                 num_workers: int = 0,
                 center: bool = True) -> None:
        self.train_ann = train_ann
        self.val_ann = val_ann
        self.data_root = data_root
        self.pipeline = pipeline
        self.interval = interval
        self.k = k
        self.temperature = temperature
        self.depth = depth
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.center = center
        self._loaders = {}  # built on first use, reused afterwards

    def before_run(self, runner) -> None:
        # a wrong depth or list would otherwise stop the run at the first
        # evaluation, `interval` epochs in, before that epoch's checkpoint
        model = unwrap_model(runner.model)
        try:
            select_depths(self.depth, model.depths)
        except ValueError as e:
            raise ValueError(f"KNNMonitorHook: {e}; set the hook's depth") \
                from None
        for key in ('train_ann', 'val_ann'):
            path = getattr(self, key)
            if not osp.isfile(path):
                raise FileNotFoundError(
                    f'KNNMonitorHook: {key} {path} is not a file')

    def after_train_epoch(self, runner) -> None:
        if not (self.every_n_epochs(runner, self.interval)
                or self.is_last_train_epoch(runner)):
            return
        pipeline = self.pipeline or knn_pipeline(runner.cfg)
        top1 = evaluate_knn(
            runner.model, self.train_ann, self.val_ann, self.data_root,
            pipeline, k=self.k, temperature=self.temperature,
            depth=self.depth, batch_size=self.batch_size,
            num_workers=self.num_workers, loaders=self._loaders,
            center=self.center)
        runner.message_hub.update_scalar('knn/top1', top1)
        runner.visualizer.add_scalars({'knn/top1': top1}, step=runner.iter)
        runner.logger.info(f'Epoch {runner.epoch + 1}: knn/top1: {top1:.2f}'
                           f' (k={self.k}, {self.depth})')
