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

Takes about 3 demo runs, ~25 min on 2 CPU cores of the README's machine
(pretraining 8.8, 8.9 and 6.5 min for the three variants);
``--train-seeds 0 1 2`` (``make ablation``) three times that, about 75 min.
``--epochs`` shortens it.
One run per variant is one draw: a change that only alters floating-point
rounding moves the demo's kNN top-1 by several points (README), so compare
variants over training seeds, ``--train-seeds 0 1 2`` (3 runs per variant),
which prints each seed's top-1, their mean and their range.
``--variants 1 2`` reruns only some variants (their table positions, the
numbers of their output folders), e.g. after one changed.
"""
import argparse
import importlib.util
import os.path as osp
import re
import statistics
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
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the generated videos')
    parser.add_argument('--train-seeds', type=int, nargs='+', default=None,
                        help='pretrain each variant once per seed '
                        '(randomness.seed); default: the config\'s seed, once')
    parser.add_argument('--variants', type=int, nargs='+', default=None,
                        help='run only these variants, by their position in '
                        'the table (0 full, 1 res5 only, 2 α = 1; the same '
                        'numbers as the output folders variant*); default: '
                        'all')
    args = parser.parse_args(argv)
    for i in args.variants or []:
        if not 0 <= i < len(VARIANTS):
            parser.error(f'--variants: no variant {i} (there are '
                         f'{len(VARIANTS)}: 0 to {len(VARIANTS) - 1})')
    return args


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
    seeds = args.train_seeds or [None]
    rows = []
    for i, (name, options) in enumerate(VARIANTS.items()):
        if args.variants is not None and i not in args.variants:
            continue
        print(f'== {name}', flush=True)
        runs = []
        for seed in seeds:
            tag = f'variant{i}' if seed is None else f'variant{i}_seed{seed}'
            extra = [] if seed is None else [f'randomness.seed={seed}']
            runs.append(run_variant(args, out, data, tag, options + extra))
            base, top1, minutes = runs[-1]
            print(f'   {"" if seed is None else f"seed {seed}: "}random '
                  f'{base:.2f}  VTHCL {top1:.2f}  ({minutes:.1f} min)',
                  flush=True)
        rows.append((name, runs))
    print_table(rows, seeds)


def run_variant(args, out, data, tag, options):
    """One demo run; its random-init and VTHCL kNN top-1 and minutes."""
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'demo.py'), '--out',
           osp.join(out, tag), '--data', data,
           '--num-videos', str(args.num_videos), '--seed', str(args.seed)]
    if args.epochs is not None:
        cmd += ['--epochs', str(args.epochs)]
    if options:
        cmd += ['--cfg-options', *options]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-4000:])
        raise SystemExit(f'ablation: run {tag} ({options}) failed')

    def number(pattern):
        return float(re.search(pattern, proc.stdout).group(1))
    return (number(r'random-init kNN top-1 \(%\)\s+([0-9.]+)'),
            number(r'VTHCL kNN top-1 \(%\)\s+([0-9.]+)'),
            number(r'pretraining time\s+([0-9.]+) min'))


def print_table(rows, seeds):
    """A markdown table: per variant the random-init baseline, each seed's
    VTHCL top-1, their mean and range, the gain of the mean."""
    per_seed = [f'seed {s}' for s in seeds] if len(seeds) > 1 else []
    print()
    print('| variant | random-init | ' + ''.join(f'{c} | ' for c in per_seed) +
          'VTHCL (mean) | range | gain | pretraining |')
    print('|---|' + '--:|' * (len(per_seed) + 5))
    for name, runs in rows:
        base = statistics.mean(r[0] for r in runs)
        tops = [r[1] for r in runs]
        mean = statistics.mean(tops)
        minutes = statistics.mean(r[2] for r in runs)
        spread = f'{min(tops):.1f}–{max(tops):.1f}' if per_seed else ''
        print(f'| {name} | {base:.1f} | ' +
              ''.join(f'{t:.1f} | ' for t in tops if per_seed) +
              f'{mean:.1f} | {spread} | {mean - base:+.1f} | '
              f'{minutes:.1f} min |')


if __name__ == '__main__':
    main()
