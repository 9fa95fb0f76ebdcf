"""Train with MMEngine's Runner: VTHCL pretraining or any MMAction2 config.

Same interface as MMAction2's ``tools/train.py``. On a machine without CUDA a
distributed run (``--launcher pytorch``) uses gloo by itself.
"""
import argparse
import os
import os.path as osp

import mmvthcl  # noqa: F401  (registers mmvthcl types, applies compat fixes)
from mmengine.config import Config, DictAction
from mmengine.runner import Runner, find_latest_checkpoint

from mmaction.registry import RUNNERS
from mmvthcl.compat import adapt_config_for_device, release_process_group


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from CHECKPOINT, or from the latest checkpoint in the '
        'work dir when no path is given (with none there yet, start as the '
        'config says, load_from included)')
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument(
        '--no-validate',
        action='store_true',
        help='skip validation during training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the actual total batch size')
    parser.add_argument('--seed', type=int, default=None, help='random seed')
    parser.add_argument(
        '--diff-rank-seed',
        action='store_true',
        help='a different seed on every rank')
    parser.add_argument(
        '--deterministic',
        action='store_true',
        help='deterministic algorithms (CUDNN)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value (e.g. '
        'train_dataloader.batch_size=2)')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args) -> Config:
    """Load the config and apply the command-line choices to it."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if args.resume == 'auto':
        # MMEngine's own 'auto' drops load_from, so a fine-tuning run
        # pre-empted before its first checkpoint would restart silently
        # from random weights; with nothing to resume, start as configured
        latest = find_latest_checkpoint(cfg.work_dir)
        cfg.resume = latest is not None
        if latest is not None:
            cfg.load_from = latest
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        cfg.auto_scale_lr = dict(cfg.get('auto_scale_lr') or {}, enable=True)
    # (Config.setdefault returns a detached dict for a missing key, so
    # build the dict and assign it)
    randomness = dict(cfg.get('randomness') or {})
    randomness.setdefault('seed', None)  # Runner requires the key
    if args.seed is not None:
        randomness['seed'] = args.seed
    if args.diff_rank_seed:
        randomness['diff_rank_seed'] = True
    if args.deterministic:
        randomness['deterministic'] = True
    cfg.randomness = randomness
    adapt_config_for_device(cfg, args.launcher)
    return cfg


def main(argv=None):
    cfg = build_config(parse_args(argv))
    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    runner.train()
    release_process_group(runner)


if __name__ == '__main__':
    main()
