"""The VTHCL main job, end to end on generated data, on a CPU.

1. generate a labelled tempo dataset (tools/data/make_synthetic.py);
2. kNN top-1 of a randomly initialised encoder (the baseline);
3. pretrain VTHCL on the training videos, labels unused
   (configs/demo/vthcl_tiny_synthetic.py);
4. kNN top-1 of the pretrained slow encoder;
5. draw the Instance Correspondence Map of a validation video;
6. print a table and where the checkpoint and the ICM image are.

Every step is a command of this repository, printed before it runs, so any
of them can be repeated by hand. ``make demo`` runs this script.
"""
import argparse
import glob
import importlib.util
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join('configs', 'demo', 'vthcl_tiny_synthetic.py')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='demo_out',
                        help='where the run, the ICM image and the data go')
    parser.add_argument('--data', default=None,
                        help='dataset directory (default: OUT/data); '
                        'generated if it lacks train.txt, and generated '
                        'again if the generator made it (generator.json) '
                        'in another version or with other --num-videos/'
                        '--seed; otherwise used as it is')
    parser.add_argument('--num-videos', type=int, default=600)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--epochs', type=int, default=None,
                        help='pretraining epochs (default: the config)')
    parser.add_argument('--config', default=CONFIG)
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='extra key=value overrides of the pretraining '
                        'config (e.g. model.head.depths=[res5])')
    return parser.parse_args(argv)


def shown(path: str, base: str = None) -> str:
    """``path`` relative to ``base`` (the working directory) when it lies
    inside it, absolute otherwise (``--out /tmp/x`` is not ``../../tmp/x``).
    """
    base = base or os.getcwd()
    path = osp.abspath(path)
    inside = path.startswith(base + os.sep)
    return osp.relpath(path, base) if inside else path


def run(cmd, log=None):
    """Run a repository command, echo it, return its output."""
    cmd = [str(c) for c in cmd]
    # as it can be pasted into a shell at the repository's root
    line = ' '.join(shlex.quote(shown(c, ROOT) if osp.isabs(c) else c)
                    for c in cmd)
    print(f'\n$ python {line}', flush=True)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep +
               os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable] + cmd, cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if log is not None:
        with open(log, 'w') as f:
            f.write(proc.stdout)
    if proc.returncode != 0:
        print(proc.stdout[-5000:])
        raise SystemExit(f'demo: step failed (exit {proc.returncode})')
    return proc.stdout


def generator():
    """tools/data/make_synthetic.py as a module."""
    path = osp.join(ROOT, 'tools', 'data', 'make_synthetic.py')
    spec = importlib.util.spec_from_file_location('make_synthetic', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_dataset(data: str, gen_args: list, own: bool) -> None:
    """Generate the dataset unless ``data`` already holds it.

    The demo's own directory (``own``) is generated again when its
    manifest does not match the generator and ``gen_args`` (an earlier run
    of another version would otherwise be reused silently); a directory the
    user gave is used as it is once it holds train.txt.
    """
    has_lists = osp.isfile(osp.join(data, 'train.txt'))
    if own:
        gen = generator()
        params = vars(gen.parse_args(['--out', data] + gen_args))
        params.pop('out')
        if gen.dataset_matches(data, **params):
            print(f'using the dataset in {data}')
            return
        if has_lists:
            print(f'{data} was made by another version of the generator or '
                  'with other settings: generating it again')
    elif has_lists:
        print(f'using the dataset in {data}')
        return
    run(['tools/data/make_synthetic.py', '--out', data] + gen_args)


def knn_top1(output: str) -> float:
    match = re.search(r'knn_top1: ([0-9.]+)\s*$', output)
    if match is None:
        raise SystemExit('demo: eval_knn printed no knn_top1 line')
    return float(match.group(1))


def main(argv=None):
    args = parse_args(argv)
    out = osp.abspath(args.out)
    data = osp.abspath(args.data or osp.join(out, 'data'))
    work = osp.join(out, 'work')
    os.makedirs(out, exist_ok=True)
    start = time.time()

    # a directory the generator made (it holds its manifest) is the demo's
    # to regenerate, even when given with --data (benchmarks/ablation.py)
    own = args.data is None or osp.isfile(osp.join(data, 'generator.json'))
    prepare_dataset(data, ['--num-videos', str(args.num_videos), '--seed',
                           str(args.seed)], own=own)
    train_ann, val_ann = (osp.join(data, f'{s}.txt') for s in ('train', 'val'))
    videos = osp.join(data, 'videos')
    knn_args = ['--train-ann', train_ann, '--val-ann', val_ann,
                '--data-root', videos]

    # the config's overrides (e.g. another depth) reach every step, so the
    # random encoder is the architecture that is trained
    overrides = ['--cfg-options', *args.cfg_options] if args.cfg_options \
        else []
    baseline = knn_top1(
        run(['tools/eval_knn.py', args.config, *knn_args, *overrides]))
    print(f'knn top-1, random initialisation: {baseline:.2f}')

    options = [
        f'train_dataloader.dataset.ann_file={train_ann}',
        f'train_dataloader.dataset.data_prefix.video={videos}',
        f'custom_hooks.0.train_ann={train_ann}',
        f'custom_hooks.0.val_ann={val_ann}',
        f'custom_hooks.0.data_root={videos}',
    ]
    if args.epochs is not None:
        e = args.epochs
        options += [f'train_cfg.max_epochs={e}',
                    f'param_scheduler.0.T_max={e}',
                    f'param_scheduler.0.end={e}',
                    f'default_hooks.checkpoint.interval={e}',
                    f'custom_hooks.0.interval={e}']
    options += args.cfg_options
    train_start = time.time()
    run(['tools/train.py', args.config, '--work-dir', work,
         '--cfg-options', *options], log=osp.join(out, 'train.log'))
    train_time = time.time() - train_start
    ckpts = sorted(glob.glob(osp.join(work, 'epoch_*.pth')),
                   key=lambda p: int(re.findall(r'\d+', osp.basename(p))[0]))
    if not ckpts:
        raise SystemExit(f'demo: training wrote no checkpoint in {work}')
    ckpt = ckpts[-1]

    pretrained = knn_top1(
        run(['tools/eval_knn.py', args.config, ckpt, *knn_args,
             *overrides]))
    print(f'knn top-1, VTHCL: {pretrained:.2f}')

    with open(val_ann) as f:
        first_val = f.readline().split()[0]
    icm = osp.join(out, 'icm.png')
    run(['tools/visualize_icm.py', args.config, ckpt,
         osp.join(videos, first_val), '--out', icm, '--depth', 'all',
         *overrides])

    total = time.time() - start
    rows = [('random-init kNN top-1 (%)', f'{baseline:.2f}'),
            ('VTHCL kNN top-1 (%)', f'{pretrained:.2f}'),
            ('gain (points)', f'{pretrained - baseline:+.2f}'),
            ('pretraining time', f'{train_time / 60:.1f} min'),
            ('total time', f'{total / 60:.1f} min')]
    width = max(len(r[0]) for r in rows)
    print('\n' + '\n'.join(f'{k:<{width}}  {v}' for k, v in rows))
    print(f'\ncheckpoint: {shown(ckpt)}\nICM image:  {shown(icm)}'
          f'\ntraining log: {shown(osp.join(out, "train.log"))}')


if __name__ == '__main__':
    main()
