"""Training step: VTHCL vs stock supervised steps on the same two clips.

- ``vthcl``: one ``VTHCL.train_step`` (data preprocessor for both clips,
  slow and fast encoders, hierarchical head, bank update, SGD step), the
  model of ``--config`` with the banks sized to ``--num-samples``.
- ``stock x2``: one ``Recognizer3D.train_step`` on the slow clip plus one on
  the fast clip, each with its own model built from MMAction2's
  ``_base_/models/slowonly_r50.py`` (``ResNet3dSlowOnly`` + ``I3DHead``,
  depth changed, no pretrained weights) and the same SGD settings.

The ratio is the price of VTHCL's extras (projections, contrast, banks);
target ≤ 1.15. Both run on the same fixed batch (uint8 clips, as the data
loader hands them over; loading is measured by bench_data.py), interleaved.
When the config's ``clip_pipeline`` defers its colour augmentation to the
model (``defer=True``, the shipped configs), each VTHCL batch carries colour
records drawn by those transforms, so the VTHCL step includes the colour
work that stock MMAction2 pipelines do in the loader; ``--loader-colour``
leaves it out.
- ``vthcl, compiled head`` (with ``--compile-head``): the same VTHCL model
  and weights with ``model.head.compile=True``; its first step, in the
  warm-up, compiles (about a minute).

    python benchmarks/bench_step.py                  # R18, batch 8, 112²
    python benchmarks/bench_step.py --quick          # ~20 s smoke run
    python benchmarks/bench_step.py --device cuda --depth 50
    python benchmarks/bench_step.py --device cuda --depth 50 --amp
    python benchmarks/bench_step.py --compile-head   # + the compiled head
"""
import copy
import functools
import os.path as osp

import torch

from _common import (ROOT, add_model_args, base_parser, dump_json, interleaved,
                     load, median, print_header, print_table, ratio, setup,
                     verdict, vthcl_model_cfg)

STEP_TARGET = 1.15
COMPILED = 'vthcl, compiled head'


def parse_args(argv=None):
    parser = base_parser(__doc__.split('\n')[0])
    add_model_args(parser)
    parser.add_argument('--batch', type=int, default=None,
                        help='clips per batch (default 8, quick 2)')
    parser.add_argument('--crop', type=int, default=None,
                        help='clip side (default 112, quick 64)')
    parser.add_argument('--clip-len', type=int, default=8)
    parser.add_argument('--alpha', type=int, default=2)
    parser.add_argument('--num-negatives', type=int, default=None,
                        help='K (default: the config\'s)')
    parser.add_argument('--num-samples', type=int, default=None,
                        help='bank size N (default 240000, quick 20000)')
    parser.add_argument('--per-sample-negatives', action='store_true')
    parser.add_argument('--reps', type=int, default=None,
                        help='timed repetitions (default 5, quick 2)')
    parser.add_argument(
        '--loader-colour', action='store_true',
        help='no deferred colour records in the VTHCL batches (as with a '
        'clip_pipeline that applies colour jitter in the loader)')
    parser.add_argument(
        '--amp', action='store_true',
        help='every model steps with MMEngine\'s AmpOptimWrapper (float16 '
        'autocast and loss scaling), as `tools/train.py --amp` trains; GPU '
        'only, as the wrapper is')
    parser.add_argument(
        '--compile-head', action='store_true',
        help="add the VTHCL step with model.head.compile=True")
    args = parser.parse_args(argv)
    if args.amp and not args.device.startswith('cuda'):
        parser.error('--amp needs --device cuda (MMEngine\'s '
                     'AmpOptimWrapper refuses a CPU)')
    args.config = args.config or osp.join(ROOT, 'configs',
                                          f'vthcl_r{args.depth}_k400.py')
    args.batch = args.batch or (2 if args.quick else 8)
    args.crop = args.crop or (64 if args.quick else 112)
    args.num_samples = args.num_samples or (20000 if args.quick else 240000)
    args.reps = args.reps or (2 if args.quick else 5)
    return args


def stock_model_cfg(depth: int):
    """MMAction2's SlowOnly recognizer, offline and at ``depth``."""
    import mmaction
    from mmengine.config import Config
    path = osp.join(
        osp.dirname(mmaction.__file__), '.mim', 'configs', '_base_',
        'models', 'slowonly_r50.py')
    cfg = copy.deepcopy(Config.fromfile(path).model.to_dict())
    cfg['backbone'].update(depth=depth, pretrained=None, pretrained2d=False)
    cfg['cls_head']['in_channels'] = 512 * (4 if depth >= 50 else 1)
    return cfg


def optim_wrapper(model, batch: int, amp: bool = False):
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    # the VTHCL configs' SGD: lr 0.03 × batch / 256, momentum 0.9, wd 1e-4
    sgd = torch.optim.SGD(model.parameters(), lr=0.03 * batch / 256,
                          momentum=0.9, weight_decay=1e-4)
    # what `tools/train.py --amp` sets: float16 autocast, dynamic scaling
    return AmpOptimWrapper(optimizer=sgd, loss_scale='dynamic') if amp \
        else OptimWrapper(sgd)


def clips(batch, t, crop, g):
    return [
        torch.randint(0, 256, (1, 3, t, crop, crop), generator=g,
                      dtype=torch.uint8) for _ in range(batch)
    ]


@functools.lru_cache()
def deferred_colour(config: str) -> tuple:
    """The config's colour transforms that defer to the model, built."""
    from mmengine.config import Config

    from mmaction.registry import TRANSFORMS
    return tuple(
        TRANSFORMS.build(t) for t in Config.fromfile(config).clip_pipeline
        if t['type'].startswith('Clip') and t.get('defer'))


def colour_records(config: str, batch: int, seed: int) -> list:
    """Per-clip colour records, drawn by the config's deferred colour
    transforms as the loader would."""
    import numpy as np
    np.random.seed(seed)
    records = []
    for _ in range(batch):
        res = dict(imgs=[])  # only the draws are made
        for t in deferred_colour(config):
            res = t(res)
        records.append(res['color_params'])
    return records


def count_syncs(fn) -> int:
    """Synchronising CUDA calls made by ``fn`` (torch's sync debug mode)."""
    import warnings
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode('default')
    return sum('synchroniz' in str(w.message) for w in caught)


def build_models(args, device):
    from mmaction.registry import MODELS
    torch.manual_seed(args.seed)
    vthcl_cfg = vthcl_model_cfg(args, args.num_samples, args.num_negatives,
                                args.per_sample_negatives)
    models = dict(
        vthcl=MODELS.build(copy.deepcopy(vthcl_cfg)),
        slow=MODELS.build(stock_model_cfg(args.depth)),
        fast=MODELS.build(stock_model_cfg(args.depth)))
    for m in models.values():
        m.init_weights()
    if args.compile_head:
        vthcl_cfg['head']['compile'] = True
        models[COMPILED] = MODELS.build(vthcl_cfg)
        models[COMPILED].load_state_dict(models['vthcl'].state_dict())
    for m in models.values():
        m.to(device)
        m.train()
    return models


def main(argv=None):
    args = parse_args(argv)
    setup(args.device, args.threads)
    from mmaction.structures import ActionDataSample
    dev = args.device
    info = print_header(
        'bench_step: a VTHCL training step vs two stock Recognizer3D steps',
        dev, f'R{args.depth}, batch {args.batch}, slow {args.clip_len}x'
        f'{args.crop}², fast {args.clip_len * args.alpha}x{args.crop}², '
        f'N={args.num_samples}; {args.reps} interleaved repetitions; '
        f'VTHCL model from {osp.relpath(args.config, ROOT)}' +
        ('; mixed precision (AmpOptimWrapper, float16)' if args.amp else ''))

    models = build_models(args, dev)
    k = models['vthcl'].head.num_negatives
    print(f'K={k}, per_sample_negatives={args.per_sample_negatives}')
    optims = {name: optim_wrapper(m, args.batch, args.amp)
              for name, m in models.items()}
    g = torch.Generator().manual_seed(args.seed)
    slow = clips(args.batch, args.clip_len, args.crop, g)
    fast = clips(args.batch, args.clip_len * args.alpha, args.crop, g)
    labels = torch.randint(400, (args.batch, ), generator=g)
    step = {}

    with_colour = not args.loader_colour and bool(
        deferred_colour(args.config))
    print('colour jitter + grayscale: ' + (
        'in the VTHCL step (the config defers it to the data preprocessor)'
        if with_colour else 'not timed (done by the loader)'))

    def vthcl_batch(r):
        # distinct dataset indices per step, as an epoch's sampler gives
        g_idx = torch.Generator().manual_seed(args.seed + r)
        idx = torch.randperm(args.num_samples, generator=g_idx)[:args.batch]
        samples = [ActionDataSample(sample_idx=int(i)) for i in idx]
        if with_colour:  # the preprocessor consumes them: new every step
            for suffix, seed in (('', 2 * r), ('_fast', 2 * r + 1)):
                recs = colour_records(args.config, args.batch,
                                      args.seed + seed)
                for ds, rec in zip(samples, recs):
                    ds.set_field(rec, 'color_params' + suffix)
        return dict(
            inputs=dict(imgs=list(slow), imgs_fast=list(fast)),
            data_samples=samples)

    def stock_batch(imgs):
        samples = []
        for label in labels:
            ds = ActionDataSample()
            ds.set_gt_label(int(label))
            samples.append(ds)
        return dict(inputs=list(imgs), data_samples=samples)

    def vthcl_step_with(batch, name='vthcl'):
        models[name].train_step(batch, optims[name])

    def vthcl():
        vthcl_step_with(step['batch'])

    def vthcl_compiled():
        vthcl_step_with(step['compiled_batch'], COMPILED)

    def stock():
        models['slow'].train_step(stock_batch(slow), optims['slow'])
        models['fast'].train_step(stock_batch(fast), optims['fast'])

    def before(r):
        # built untimed: a randperm of N on the host costs milliseconds,
        # noticeable next to a GPU step (stock batches draw nothing)
        step['batch'] = vthcl_batch(r)
        if args.compile_head:
            # its own: the preprocessor consumes a batch's colour records
            step['compiled_batch'] = vthcl_batch(r)

    # a GPU needs a few rounds before its steps settle (cuDNN autotuning
    # and the caching allocator's first cudaMallocs, per model): with one,
    # an H100 run read 1.20x, the VTHCL step's median 155 ms against its
    # minimum 135 ms (benchmarks/README.md, "On a GPU")
    faults = {}
    work = dict(vthcl=vthcl, stock=stock)
    if args.compile_head:
        work[COMPILED] = vthcl_compiled
    t = interleaved(work, args.reps, device=dev,
                    warmup=3 if dev.startswith('cuda') else 1,
                    seed=args.seed, before=before, faults=faults)
    r = ratio(t['vthcl'], t['stock'])
    print()
    print_table(
        ['training step', 'ms (median)', 'min ms', 'x stock',
         'page faults (median, thousands)'], [
            ['stock Recognizer3D slow + fast', median(t['stock']) * 1e3,
             min(t['stock']) * 1e3, 1.0, median(faults['stock']) / 1e3],
            ['VTHCL', median(t['vthcl']) * 1e3, min(t['vthcl']) * 1e3, r,
             median(faults['vthcl']) / 1e3],
        ] + ([[
            'VTHCL, compiled head', median(t[COMPILED]) * 1e3,
            min(t[COMPILED]) * 1e3, ratio(t[COMPILED], t['stock']),
            median(faults[COMPILED]) / 1e3
        ]] if args.compile_head else []))
    print()
    print(f'VTHCL / stock x2: {r:.3f}  target '
          f'{verdict(r, STEP_TARGET, False)}')
    if args.compile_head:
        rc = ratio(t[COMPILED], t['stock'])
        print(f'VTHCL with the compiled head / stock x2: {rc:.3f}  target '
              f'{verdict(rc, STEP_TARGET, False)}')
    if dev.startswith('cuda'):
        print(f'max GPU memory allocated: '
              f'{torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB '
              '(both kinds of model together)')
        print('host-device syncs in one step (each stops the CPU from '
              'queueing kernels ahead): VTHCL '
              f'{count_syncs(lambda: vthcl_step_with(vthcl_batch(99)))}, '
              f'stock x2 {count_syncs(stock)}' + (
                  ', VTHCL with the compiled head ' + str(count_syncs(
                      lambda: vthcl_step_with(vthcl_batch(99), COMPILED)))
                  if args.compile_head else ''))
    info['load_after'] = load()
    print(f"load before/after: {info['load_before']} / {info['load_after']}")
    dump_json(args.json, dict(machine=info, times=t, ratio=r,
                              page_faults=faults, args=vars(args)))


if __name__ == '__main__':
    main()
