"""Sizing a run: step time and memory against K, N, batch and α; loaders.

Part 1. For the default configuration and for one knob changed at a time
(K negatives, N bank rows, batch, tempo ratio α), a fresh subprocess builds
the VTHCL model of ``--config``, measures the extra memory at the peak of
one training step (data preprocessor, both encoders, head, the backward)
over what a trained model holds between steps (weights, banks, SGD's
momentum), then times ``--reps`` more steps. Memory: CPU, resident
high-water mark over the resident size after one tiny warm-up step
(``VmHWM``, reset through ``/proc/self/clear_refs``); GPU,
``torch.cuda.max_memory_allocated`` over the allocated memory after three
warm-up steps at the measured shape (so that cuDNN's autotuning workspaces
are not counted, and the timed steps find the GPU settled). The banks
themselves take 6 × N × D × 4 bytes, listed apart. Each configuration runs
in its own process, so times are not interleaved: the default runs first
and last, and the spread of the two shows the drift of the machine.

Part 2. Throughput (clips/s, two clips per sample) of the VTHCL training
pipeline of ``--config`` through an mmengine DataLoader with 0, 1 and 2
workers, in the order 0, 1, 2, 2, 1, 0 (drift cancels in the mean); each
measurement times a whole epoch after a warm-up epoch (persistent workers).

    python benchmarks/bench_scaling.py             # ~5 min on 2 CPU cores
    python benchmarks/bench_scaling.py --quick     # ~20 s
    python benchmarks/bench_scaling.py --device cuda --depth 50 --crop 224
"""
import argparse
import copy
import os
import os.path as osp
import tempfile
import time

import torch

from _common import (ROOT, VIDEOS, MemoryTracker, add_model_args, base_parser,
                     dump_json, in_fresh_process, load, median, print_header,
                     print_table, setup, sync, vthcl_model_cfg)


def parse_args(argv=None):
    parser = base_parser(__doc__.split('\n')[0])
    add_model_args(parser)
    parser.add_argument('--batch', type=int, default=None,
                        help='default batch (8; quick 2)')
    parser.add_argument('--crop', type=int, default=None,
                        help='clip side (CPU default 64 to fit the time; '
                        'GPU 112; quick 32)')
    parser.add_argument('--num-samples', type=int, default=None,
                        help='default N (240000; quick 20000)')
    parser.add_argument('--reps', type=int, default=None,
                        help='timed steps per configuration (CPU 2, GPU '
                        '10)')
    parser.add_argument('--skip-loader', action='store_true')
    parser.add_argument('--loader-samples', type=int, default=None,
                        help='samples per loader pass (32; quick 8)')
    args = parser.parse_args(argv)
    args.config = args.config or osp.join(ROOT, 'configs',
                                          f'vthcl_r{args.depth}_k400.py')
    cuda = args.device.startswith('cuda')
    args.batch = args.batch or (2 if args.quick else 8)
    args.crop = args.crop or (32 if args.quick else 112 if cuda else 64)
    args.num_samples = args.num_samples or (20000 if args.quick else 240000)
    args.reps = args.reps or (10 if cuda else 2)
    if args.batch < 2:
        raise SystemExit('--batch must be at least 2 (φ\'s BatchNorm)')
    args.loader_samples = args.loader_samples or (8 if args.quick else 32)
    return args


def configurations(args):
    """(knob, value, overrides) rows: the default, then one knob at a time."""
    base = dict(num_negatives=16384, num_samples=args.num_samples,
                batch=args.batch, alpha=2)
    if args.quick:
        changes = [('K', 'num_negatives', 4096)]
    else:
        n = args.num_samples
        changes = [('K', 'num_negatives', 4096),
                   ('K', 'num_negatives', 65536),
                   ('N', 'num_samples', n // 10),
                   ('N', 'num_samples', n * 2),
                   ('batch', 'batch', args.batch // 2),
                   ('batch', 'batch', args.batch * 2),
                   ('α', 'alpha', 1), ('α', 'alpha', 4)]
    rows = [('default', '', base)]
    for knob, key, value in changes:
        conf = dict(base, **{key: value})
        # rows the head would refuse (K > N) or BN cannot train (batch 1)
        if conf['num_negatives'] <= conf['num_samples'] and conf['batch'] > 1:
            rows.append((knob, value, conf))
        else:
            print(f'skipped {knob} = {value}: K {conf["num_negatives"]}, '
                  f'N {conf["num_samples"]}, batch {conf["batch"]}')
    if not args.quick:
        rows.append(('default (again)', '', base))
    return rows


def step_child(args, conf) -> dict:
    """Memory and time of VTHCL training steps for one configuration."""
    setup(args.device, args.threads)
    from mmengine.optim import OptimWrapper

    from mmaction.registry import MODELS
    from mmaction.structures import ActionDataSample
    dev = args.device
    cfg = vthcl_model_cfg(args, conf['num_samples'], conf['num_negatives'])
    torch.manual_seed(args.seed)
    model = MODELS.build(cfg)
    model.init_weights()
    model.to(dev)
    model.train()
    optim = OptimWrapper(
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                        weight_decay=1e-4))
    g = torch.Generator().manual_seed(args.seed)

    def batch(b, t, crop, step):
        idx = torch.randperm(
            conf['num_samples'],
            generator=torch.Generator().manual_seed(step))[:b]
        return dict(
            inputs=dict(
                imgs=[
                    torch.randint(0, 256, (1, 3, t, crop, crop),
                                  generator=g, dtype=torch.uint8)
                    for _ in range(b)
                ],
                imgs_fast=[
                    torch.randint(0, 256, (1, 3, t * conf['alpha'], crop,
                                           crop),
                                  generator=g, dtype=torch.uint8)
                    for _ in range(b)
                ]),
            data_samples=[ActionDataSample(sample_idx=int(i)) for i in idx])

    # CPU: one tiny warm-up step pages in the kernels' code and sets up the
    # thread pools (growth that is not the step's) and leaves no big freed
    # block behind, which the resident-size measurement would not see.
    # GPU: the allocator makes the measurement exact, but the first steps
    # at a shape run cuDNN's autotuning, whose trial workspaces would count
    # in the peak, and a single warm-up leaves the GPU unsettled.
    if dev.startswith('cuda'):
        for r in range(3):
            model.train_step(batch(conf['batch'], 8, args.crop, 100 + r),
                             optim)
    else:
        model.train_step(batch(2, 8, 32, 0), optim)  # BN1d needs 2 clips
    data = batch(conf['batch'], 8, args.crop, 1)
    tracker = MemoryTracker(dev)
    tracker.start()
    model.train_step(data, optim)
    peak = tracker.mark('step')['peak']
    times = []
    for r in range(args.reps):
        data = batch(conf['batch'], 8, args.crop, 2 + r)
        sync(dev)
        t0 = time.perf_counter()
        model.train_step(data, optim)
        sync(dev)
        times.append(time.perf_counter() - t0)
    banks = sum(
        b.numel() * b.element_size()
        for b in model.head.memory.buffers() if b.dim() == 2) / 2**20
    return dict(peak=peak, times=times, banks=banks)


# ------------------------------------------------------------- loaders
def loader_cfg(args, ann_file, data_root, workers):
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    dataset = copy.deepcopy(cfg.train_dataloader.dataset.to_dict())
    dataset.update(ann_file=ann_file, data_prefix=dict(video=data_root))
    return dict(
        batch_size=args.batch,
        num_workers=workers,
        persistent_workers=workers > 0,
        sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dataset)


def time_loader(cfg, seed) -> tuple:
    """(seconds to the first batch, clips/s over a whole second epoch).

    Workers are persistent: the first epoch starts them (its first batch
    gives the start-up time); the second epoch is timed from ``iter`` to
    its last batch, so neither the start-up nor batches prefetched before
    the clock started inflate the rate.
    """
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(cfg, seed=seed)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    for _ in it:
        pass
    n = 0
    t1 = time.perf_counter()
    for b in loader:
        n += len(b['data_samples'])
    rate = 2 * n / (time.perf_counter() - t1)
    del it, loader
    return first, rate


def loader_part(args):
    names = sorted(
        f for f in os.listdir(VIDEOS)
        if f.endswith(('.mp4', '.avi'))) if osp.isdir(VIDEOS) else []
    if names:
        root, what = VIDEOS, f'the {len(names)} shared real videos'
        tmp = None
    else:  # generate some
        import subprocess
        import sys
        tmp = tempfile.TemporaryDirectory()
        subprocess.run([
            sys.executable,
            osp.join(ROOT, 'tools', 'data', 'make_synthetic.py'), '--out',
            tmp.name, '--num-videos', '18', '--size', '256',
            '--num-frames', '160'
        ], check=True, stdout=subprocess.DEVNULL)
        root = osp.join(tmp.name, 'videos')
        with open(osp.join(tmp.name, 'train.txt')) as f:
            names = [line.split()[0] for line in f]
        what = 'generated 256² videos'
    with tempfile.NamedTemporaryFile('w', suffix='.txt',
                                     delete=False) as ann:
        for i in range(args.loader_samples):
            ann.write(f'{names[i % len(names)]} 0\n')
    order = [0, 1] if args.quick else [0, 1, 2, 2, 1, 0]
    res = {}
    for w in order:
        first, rate = time_loader(
            loader_cfg(args, ann.name, root, w), args.seed)
        res.setdefault(w, []).append((first, rate))
    os.unlink(ann.name)
    if tmp is not None:
        tmp.cleanup()
    print()
    print(f'DataLoader, {args.loader_samples} samples of {what} per pass, '
          f'batch {args.batch}, pipeline of {osp.basename(args.config)} '
          '(crop as configured)')
    base = sum(r for _, r in res[0]) / len(res[0])
    rows = []
    for w in sorted(res):
        rate = sum(r for _, r in res[w]) / len(res[w])
        first = median([f for f, _ in res[w]])
        rows.append([w, rate, rate / base, first])
    print_table(['workers', 'clips/s', 'x 0 workers',
                 's to first batch'], rows)
    return {w: v for w, v in res.items()}


def main(argv=None):
    args = parse_args(argv)
    setup(args.device, args.threads)
    info = print_header(
        'bench_scaling: step time and memory vs K, N, batch, alpha',
        args.device,
        f'R{args.depth}, slow 8x{args.crop}², default batch {args.batch}, '
        f'K 16384, N {args.num_samples}, alpha 2, D 128; '
        f'{args.reps} timed steps per configuration, fresh process each')
    cuda = args.device.startswith('cuda')
    rows, results = [], []
    base_time = None
    for knob, value, conf in configurations(args):
        res = in_fresh_process(step_child, argparse.Namespace(**vars(args)),
                               conf, tune_malloc=not cuda)
        t = median(res['times'])
        if base_time is None:
            base_time = t
        rows.append([
            knob, value, conf['num_negatives'], conf['num_samples'],
            conf['batch'], conf['alpha'], t * 1e3, t / base_time,
            res['peak'], res['banks']
        ])
        results.append(dict(knob=knob, value=value, conf=conf, **res))
        print(f'  {knob} {value}: done (load {load()})', flush=True)
    print()
    print_table([
        'knob', 'value', 'K', 'N', 'batch', 'alpha', 'step ms', 'x default',
        'step peak MiB', 'banks MiB'
    ], rows)
    print('(step peak: extra memory at the peak of one training step over '
          'the model between steps, ' + (
              'torch.cuda.max_memory_allocated)'
              if cuda else 'resident high-water mark)'))
    loaders = None if args.skip_loader else loader_part(args)
    info['load_after'] = load()
    print(f"load before/after: {info['load_before']} / {info['load_after']}")
    dump_json(args.json, dict(machine=info, steps=results, loaders=loaders,
                              args=vars(args)))


if __name__ == '__main__':
    main()
