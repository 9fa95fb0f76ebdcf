"""Instance Correspondence Maps of a few fixed videos during pretraining."""
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from mmaction.registry import HOOKS
from ...utils import inner_dataset, preserved_rng
from ...visualization.icm import (check_depths, compute_icm, load_icm_clips,
                                  unwrap)
from ...visualization.icm_render import (render_icm_grid, save_image,
                                         stack_images)


@HOOKS.register_module()
class ICMHook(Hook):
    """Draw the ICM of fixed videos every few iterations and at the end.

    Every ``interval`` training iterations, and after the last one, the
    slow/fast ICMs at ``depth`` of each video are drawn into one PNG,
    ``{out_dir}/iter_{iteration:06d}.png``, and sent to the visualizer
    backends as image ``icm`` (TensorBoard, W&B, ... see ``visualizer`` in
    the config). Only the main process draws.

    Training is left exactly as it would be without the hook: the model is
    drawn in eval mode under ``torch.no_grad`` (no BN statistics or memory
    bank update) and every module's mode is restored after; the Python,
    numpy and torch RNG states are restored, so the data pipeline and the
    model draw the same random numbers. Iterations that do not draw only
    test the interval. The clips are decoded once, when first drawn. A video
    that cannot be read, or a drawing that fails, is reported with a
    warning; the run goes on.

    Args:
        videos (Sequence[str], optional): Video files to draw. Defaults to
            None: ``num_videos`` videos of the training set, evenly spread
            over it (always the same ones).
        interval (int): Draw every ``interval`` iterations.
            Defaults to 1000.
        depth (str): Depth of the maps, one of the model's depths.
            Defaults to ``'res5'``.
        num_videos (int): Videos taken from the training set when
            ``videos`` is None. Defaults to 2.
        out_dir (str, optional): Where the PNGs go. Defaults to
            ``{work_dir}/icm``.
        size (int, optional): Square frame size fed to the model. Defaults
            to the training crop size.
        tile (int): Side of a frame tile in the image. Defaults to 96.
    """

    priority = 'LOW'

    def __init__(self,
                 videos: Optional[Sequence[str]] = None,
                 interval: int = 1000,
                 depth: str = 'res5',
                 num_videos: int = 2,
                 out_dir: Optional[str] = None,
                 size: Optional[int] = None,
                 tile: int = 96) -> None:
        if interval < 1:
            raise ValueError(f'ICMHook: interval must be >= 1, got '
                             f'{interval}')
        if videos is None and num_videos < 1:
            raise ValueError(f'ICMHook: num_videos must be >= 1, got '
                             f'{num_videos}')
        if isinstance(videos, str):
            videos = [videos]
        self.videos = None if videos is None else list(videos)
        self.interval = interval
        self.depth = depth
        self.num_videos = num_videos
        self.out_dir = out_dir
        self.size = size
        self.tile = tile
        self._clips = None  # decoded on first use: list of ICMClips

    # ---------------------------------------------------------- videos
    @staticmethod
    def training_videos(runner, num: int) -> List[str]:
        """``num`` fixed video files of the training set, evenly spread."""
        # a RepeatDataset has its own get_data_info, but spreading picks
        # over its repeats would draw one video twice
        dataset = inner_dataset(runner.train_dataloader.dataset)
        n = len(dataset)
        if n == 0:
            return []
        picks = np.unique(np.linspace(0, n - 1, min(num, n)).round())
        videos = []
        for i in picks.astype(int).tolist():
            info = dataset.get_data_info(i)
            name = info.get('filename') or info.get('video')
            if name is None:
                raise KeyError('ICMHook: training samples have no '
                               "'filename'; give the videos explicitly")
            videos.append(name)
        return videos

    def _prepare(self, runner) -> list:
        """Decode the clips once; unreadable videos are reported and left
        out."""
        if self._clips is not None:
            return self._clips
        videos = self.videos
        if videos is None:
            videos = self.training_videos(runner, self.num_videos)
        self._clips = []
        for video in videos:
            try:
                self._clips.append(load_icm_clips(video, runner.cfg,
                                                  self.size))
            except Exception as e:
                runner.logger.warning(f'ICMHook: video left out: {e}')
        return self._clips

    # --------------------------------------------------------- drawing
    def render(self, runner, step: int) -> Optional[np.ndarray]:
        """The RGB image of every video's ICM, or None without videos."""
        model = unwrap(runner.model)
        depth = check_depths(model, self.depth)
        clips = self._prepare(runner)
        if not clips:
            runner.logger.warning(
                f'ICMHook: no readable video, no ICM at iteration {step}')
            return None
        grids = []
        for c in clips:
            result = compute_icm(model, c, depth)
            title = (f'ICM {self.depth}, iteration {step}: '
                     f'{osp.basename(c.video)}')
            grids.append(
                render_icm_grid(result, depth, tile=self.tile, title=title))
        return stack_images(grids)

    def draw(self, runner, step: int) -> Optional[str]:
        """Draw, save and publish the ICMs; warn instead of raising.

        Returns:
            str | None: The PNG written.
        """
        out_dir = self.out_dir or osp.join(runner.work_dir, 'icm')
        path = osp.join(out_dir, f'iter_{step:06d}.png')
        try:
            with preserved_rng(), torch.no_grad():
                image = self.render(runner, step)
                if image is None:
                    return None
                save_image(path, image)
                runner.visualizer.add_image('icm', image, step=step)
        except Exception as e:  # a picture is never worth a lost run
            runner.logger.warning(f'ICMHook: no ICM at iteration {step}: '
                                  f'{type(e).__name__}: {e}')
            return None
        return path

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        if not (self.every_n_train_iters(runner, self.interval)
                or self.is_last_train_iter(runner)):
            return
        if not is_main_process():
            return
        # runner.iter counts the iterations before this one
        self.draw(runner, runner.iter + 1)
