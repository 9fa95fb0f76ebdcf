"""Does each part of VTHCL matter? The demo, run once per variant.

Checks the paper's two claims on the generated tempo dataset:

- hierarchy helps: full VTHCL (res3 + res4 + res5) vs res5 only;
- a tempo gap helps: α = 2 vs α = 1 (two views of the same clip, same
  tempo; with the demo's flips-only augmentation they differ by a flip at
  most, and the positive still comes from another moment of the video).

Every variant pretrains with the demo config on the same generated videos
and is scored by kNN top-1 of its slow encoder against the same
random-initialisation baseline. Prints a table and exits::

    python benchmarks/ablation.py --out demo_out/ablation

Takes about 3 demo runs (~18 min on 2 CPU cores); ``--epochs`` shortens it.
"""
import argparse
import importlib.util
import os.path as osp
import re
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: variant name → extra config overrides of the demo config
VARIANTS = {
    'full VTHCL (res3-res5, α = 2)': [],
    'res5 only (no hierarchy)': ['model.head.depths=[res5]',
                                 'model.head.loss_weights=[1.0]'],
    'α = 1 (no tempo gap)': ['train_dataloader.dataset.pipeline.1.alpha=1'],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='demo_out/ablation')
    parser.add_argument('--epochs', type=int, default=None,
                        help='pretraining epochs (default: the config)')
    parser.add_argument('--num-videos', type=int, default=600)
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def load_demo():
    """tools/demo.py as a module."""
    spec = importlib.util.spec_from_file_location(
        'demo', osp.join(ROOT, 'tools', 'demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None):
    args = parse_args(argv)
    out = osp.abspath(args.out)
    data = osp.join(out, 'data')
    # generated once for all variants, again if an earlier run's videos
    # came from another generator or other settings
    demo = load_demo()
    demo.prepare_dataset(data, ['--num-videos', str(args.num_videos),
                                '--seed', str(args.seed)], own=True)
    rows = []
    for i, (name, options) in enumerate(VARIANTS.items()):
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'demo.py'), '--out',
               osp.join(out, f'variant{i}'), '--data', data,
               '--num-videos', str(args.num_videos), '--seed',
               str(args.seed)]
        if args.epochs is not None:
            cmd += ['--epochs', str(args.epochs)]
        if options:
            cmd += ['--cfg-options', *options]
        print(f'== {name}', flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            print(proc.stdout[-4000:])
            raise SystemExit(f'ablation: variant {name!r} failed')
        base = float(re.search(r'random-init kNN top-1 \(%\)\s+([0-9.]+)',
                               proc.stdout).group(1))
        top1 = float(re.search(r'VTHCL kNN top-1 \(%\)\s+([0-9.]+)',
                               proc.stdout).group(1))
        minutes = re.search(r'pretraining time\s+([0-9.]+) min',
                            proc.stdout).group(1)
        rows.append((name, base, top1, minutes))
        print(f'   random {base:.2f}  VTHCL {top1:.2f}  ({minutes} min)',
              flush=True)
    width = max(len(r[0]) for r in rows)
    print(f'\n{"variant":<{width}}  random-init  VTHCL   gain   pretrain')
    for name, base, top1, minutes in rows:
        print(f'{name:<{width}}  {base:>11.2f}  {top1:5.2f}  '
              f'{top1 - base:+5.2f}  {minutes:>5} min')


if __name__ == '__main__':
    main()
