"""Hierarchical head: its cost next to the encoders', shared vs per-sample.

One unit of work for a head variant is what a training step asks of it: φ on
the res3/res4/res5 maps of both clips, the 3 depths × 2 directions of
InfoNCE against K bank rows, the backward pass to the feature maps and φ,
and the momentum update of the 6 banks. The feature maps have the exact
shapes the two R18 (or R50) encoders give for the clips.

Variants, interleaved:

- ``encoders``: forward + backward of the slow and the fast encoder (the
  reference cost).
- ``shared``: the head with K negatives shared by the batch (the default;
  its banks read one at a time on a CPU, all together on a GPU).
- ``shared, banks together`` (CPU) or ``shared, banks one by one`` (GPU):
  the other way of reading the banks (``read_banks_together``).
- ``per-sample``: ``per_sample_negatives=True``, B × K negatives.
- ``shared, autograd`` and ``per-sample, autograd (NPID/CMC)``: the same
  losses computed the NPID/CMC way, as the head did before it was
  optimised: every bank's rows gathered with advanced indexing up front and
  kept by autograd for the backward pass.
- ``shared, compiled`` (with ``--compile``): ``shared`` with the head's
  ``compile=True`` (φ and the losses one ``torch.compile`` graph, the row
  update another); its first call, in the warm-up, compiles (about a
  minute). No memory measurement (each subprocess would compile again).

Memory is measured per variant in a fresh subprocess: the extra memory at
the peak of the forward pass and bank update (what the head adds on top of
the encoders' activations, all alive at that point of a step), what it
still holds for the backward pass once they are done (``fwd_held``, in the
``--json`` output only), and the peak of the whole forward+backward+update,
which also counts the gradients of the feature maps (the same for every
variant; they are handed to the encoders' backward).
CPU: resident high-water mark (``VmHWM``, reset via ``/proc/self/clear_refs``)
over the resident size before; GPU: ``torch.cuda.max_memory_allocated``
over the allocated memory before.

Each variant's operations per step are counted once with torch.profiler:
kernel launches on a GPU, top-level ATen calls on a CPU (on a GPU, where a
small head is bound by launching kernels, their number is its cost); a
compiled graph's calls count once each, its generated kernels included.

Targets: ``shared`` ≤ 10 % of ``encoders``; per-sample negatives the NPID/CMC
way ≥ 5× the time and ≥ 10× the forward+update peak memory of ``shared``.
The shipped per-sample mode (fused loss) is listed for information.

    python benchmarks/bench_head.py                 # ~3 min on 2 CPU cores
    python benchmarks/bench_head.py --quick         # ~20 s
    python benchmarks/bench_head.py --device cuda --depth 50 --batch 8
    python benchmarks/bench_head.py --compile       # + the compiled head
"""
import argparse
from typing import Optional

import torch
import torch.nn.functional as F

from _common import (MemoryTracker, base_parser, count_ops, dump_json,
                     in_fresh_process, interleaved, load, median, print_header,
                     print_table, ratio, setup, sync, verdict)

HEAD_SHARE_TARGET = 0.10
SPEED_TARGET = 5.0
MEMORY_TARGET = 10.0
NPID = 'per-sample, autograd (NPID/CMC)'
COMPILED = 'shared, compiled'


def variant_names(device: str) -> tuple:
    """The head variants; the second reads the banks the way the device's
    default does not."""
    other = 'shared, banks one by one' if str(device).startswith('cuda') \
        else 'shared, banks together'
    return ('shared', other, 'per-sample', 'shared, autograd', NPID)


def reads_together(variant: str):
    """``read_banks_together`` of a variant (None: the device's default)."""
    return True if 'together' in variant else \
        False if 'one by one' in variant else None


def parse_args(argv=None):
    parser = base_parser(__doc__.split('\n')[0])
    parser.add_argument('--depth', type=int, default=18)
    parser.add_argument('--batch', type=int, default=None,
                        help='clips per batch (default 8, quick 2)')
    parser.add_argument('--crop', type=int, default=None,
                        help='clip side (default 112, quick 64)')
    parser.add_argument('--clip-len', type=int, default=8,
                        help='slow clip frames; the fast one has alpha×')
    parser.add_argument('--alpha', type=int, default=2)
    parser.add_argument('--num-negatives', type=int, default=16384)
    parser.add_argument('--feat-dim', type=int, default=128)
    parser.add_argument('--num-samples', type=int, default=None,
                        help='bank size N (default 240000, quick 20000)')
    parser.add_argument('--reps', type=int, default=None,
                        help='timed repetitions (default 5, quick 2)')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the memory subprocesses')
    parser.add_argument('--compile', action='store_true',
                        help="add the head with compile=True ('shared, "
                        "compiled'; compiling takes about a minute)")
    args = parser.parse_args(argv)
    args.batch = args.batch or (2 if args.quick else 8)
    args.crop = args.crop or (64 if args.quick else 112)
    args.num_samples = args.num_samples or (20000 if args.quick else 240000)
    args.reps = args.reps or (2 if args.quick else 5)
    return args


def build_encoders(depth: int, device: str):
    from mmaction.registry import MODELS
    cfg = dict(type='VTHCLResNet3d', depth=depth, out_indices=(1, 2, 3))
    encoders = (MODELS.build(cfg).to(device), MODELS.build(cfg).to(device))
    for enc in encoders:
        enc.train()  # (ResNet3d.train returns None: no chaining)
    return encoders


def feature_shapes(depth: int, clip_len: int, alpha: int, crop: int):
    """Per tempo, the (C, T, H, W) of res3, res4, res5 for one clip."""
    slow, fast = build_encoders(depth, 'cpu')
    out = {}
    with torch.no_grad():
        for tempo, enc, t in (('slow', slow, clip_len),
                              ('fast', fast, clip_len * alpha)):
            # a 1-clip batch is enough to read the shapes; eval: no BN stats
            enc.eval()
            feats = enc(torch.zeros(1, 3, t, crop, crop))
            out[tempo] = [tuple(f.shape[1:]) for f in feats]
    return out


def build_head(args, per_sample: bool, num_samples: int,
               together: Optional[bool] = None, compile: bool = False):
    from mmaction.registry import MODELS
    channels = tuple(64 * 2**i * (4 if args.depth >= 50 else 1)
                     for i in (1, 2, 3))
    return MODELS.build(
        dict(
            type='HierarchicalContrastiveHead',
            in_channels=channels,
            feat_dim=args.feat_dim,
            num_negatives=args.num_negatives,
            per_sample_negatives=per_sample,
            read_banks_together=together,
            compile=compile,
            memory=dict(
                type='HierarchicalMemoryBank', num_samples=num_samples)))


def autograd_loss(head, slow, fast, index):
    """The head's losses computed the NPID/CMC way (the pre-optimisation
    code path): all rows of every bank gathered first, by advanced indexing,
    and the loss left to autograd, which keeps the rows for the backward."""
    mem = head.memory
    shape = (index.shape[0], head.num_negatives) \
        if head.per_sample_negatives else (head.num_negatives, )
    negatives = mem.sample_negatives(shape, device=index.device)
    rows = {key: (mem.bank(*key)[index], mem.bank(*key)[negatives])
            for key in mem.keys}
    losses = {}
    for d, w in zip(head.depths, head.loss_weights):
        total = 0
        for q, other in ((slow[d], 'fast'), (fast[d], 'slow')):
            pos, neg = rows[(d, other)]
            l_pos = (q * pos).sum(dim=1, keepdim=True)
            l_neg = q @ neg.t() if neg.dim() == 2 else torch.bmm(
                neg, q.unsqueeze(2)).squeeze(2)
            logits = torch.cat([l_pos, l_neg], dim=1) / head.temperature
            total = total + F.cross_entropy(
                logits, logits.new_zeros(logits.shape[0], dtype=torch.long))
        losses[f'loss_{d}'] = w * total
    mem.update(index, {
        **{(d, 'slow'): v
           for d, v in slow.items()},
        **{(d, 'fast'): v
           for d, v in fast.items()}
    })
    return losses


def make_feats(shapes, batch, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        tempo: [
            torch.randn((batch, ) + s, generator=g).to(device).requires_grad_()
            for s in shape_list
        ]
        for tempo, shape_list in shapes.items()
    }


def head_forward(head, feats, index, autograd: bool):
    if not autograd:  # as VTHCL.loss calls it
        return head.loss_from_features(feats['slow'], feats['fast'], index)
    slow = head.project(feats['slow'], 'slow')
    fast = head.project(feats['fast'], 'fast')
    return autograd_loss(head, slow, fast, index)


def backward(losses):
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()


def memory_child(args, shapes, variant: str) -> dict:
    """Build one head variant and measure its memory (fresh process)."""
    setup(args.device, args.threads)
    torch.manual_seed(args.seed)
    head = build_head(args, variant.startswith('per-sample'),
                      args.num_samples,
                      reads_together(variant)).to(args.device)
    head.train()
    feats = make_feats(shapes, args.batch, args.device, args.seed)
    index = torch.randperm(args.num_samples)[:args.batch].to(args.device)
    autograd = 'autograd' in variant
    tracker = MemoryTracker(args.device)
    # Warm up on tiny inputs: the first use of every kernel pages in its
    # code and sets up thread pools, which would count as growth on CPU;
    # tiny tensors leave no freed memory behind to be reused unseen.
    small = build_head(
        argparse.Namespace(**dict(vars(args), num_negatives=8)),
        variant.startswith('per-sample'), 64).to(args.device)
    small.train()
    tiny = {t: [f[:2, :, :1, :2, :2].detach().clone().requires_grad_()
                for f in v] for t, v in feats.items()}
    for _ in range(2):
        backward(head_forward(small, tiny, index[:2] % 64, autograd))
    del small, tiny
    tracker.start()
    losses = head_forward(head, feats, index, autograd)
    fwd = tracker.mark('forward')
    backward(losses)
    del losses
    total = tracker.mark('total')
    return dict(fwd_peak=fwd['peak'], fwd_held=fwd['held'],
                total_peak=total['peak'])


def main(argv=None):
    args = parse_args(argv)
    setup(args.device, args.threads)
    dev = args.device
    info = print_header(
        'bench_head: hierarchical contrast vs the encoders', dev,
        f'R{args.depth}, batch {args.batch}, slow {args.clip_len}x'
        f'{args.crop}², fast {args.clip_len * args.alpha}x{args.crop}², '
        f'K={args.num_negatives}, D={args.feat_dim}, '
        f'N={args.num_samples}, 3 depths x 2 directions; '
        f'{args.reps} interleaved repetitions')

    shapes = feature_shapes(args.depth, args.clip_len, args.alpha,
                            args.crop)
    if args.compile:
        # name each generated CPU kernel in the profile, so that count_ops
        # counts it (on a GPU every kernel is a launch anyway)
        from torch._inductor import config as inductor_config
        inductor_config.cpp.enable_kernel_profile = True
    torch.manual_seed(args.seed)
    slow_enc, fast_enc = build_encoders(args.depth, dev)
    clips = {
        'slow': torch.randn(args.batch, 3, args.clip_len, args.crop,
                            args.crop, device=dev),
        'fast': torch.randn(args.batch, 3, args.clip_len * args.alpha,
                            args.crop, args.crop, device=dev),
    }
    variants = variant_names(dev)
    heads = {'shared': build_head(args, False, args.num_samples)}
    # the other heads read and update the same banks: each is built with the
    # smallest bank its K allows (N = K; a head refuses K > N), which is
    # cheap, and then given the shared head's memory, so every variant works
    # on the same N rows and none allocates six N x D banks of its own
    heads[variants[1]] = build_head(args, False, args.num_negatives,
                                    reads_together(variants[1]))
    heads['per-sample'] = build_head(args, True, args.num_negatives)
    if args.compile:
        variants += (COMPILED, )
        heads[COMPILED] = build_head(args, False, args.num_negatives,
                                     compile=True)
    for name in set(heads) - {'shared'}:
        heads[name].memory = heads['shared'].memory
    for h in heads.values():
        h.to(dev)
        h.train()
    feats = make_feats(shapes, args.batch, dev, args.seed)
    step = {}

    def index():
        return step['index']

    def encoders():
        out = slow_enc(clips['slow']) + fast_enc(clips['fast'])
        sum(f.mean() for f in out).backward()

    def variant(name):
        head = heads['per-sample' if name.startswith('per') else
                     name if name in heads else 'shared']
        autograd = 'autograd' in name

        def run():
            backward(head_forward(head, feats, index(), autograd))
        return run

    def before(r):
        # distinct dataset indices per step, drawn untimed: a randperm of N
        # on the host costs milliseconds, more than the head on a GPU
        g = torch.Generator().manual_seed(args.seed + r)
        step['index'] = torch.randperm(
            args.num_samples, generator=g)[:args.batch].to(dev)
        for p in list(slow_enc.parameters()) + list(
                fast_enc.parameters()) + sum(feats.values(), []):
            p.grad = None
        for h in heads.values():
            h.zero_grad(set_to_none=True)

    t = interleaved(dict(encoders=encoders,
                         **{v: variant(v)
                            for v in variants}),
                    args.reps, device=dev, warmup=1, seed=args.seed,
                    before=before)
    sync(dev)
    ops = {}
    for name in ('encoders', ) + variants:
        before(0)
        ops[name], counted = count_ops(
            encoders if name == 'encoders' else variant(name), dev)
    # free the timing run's models before the memory subprocesses
    slow_enc = fast_enc = clips = heads = None

    mem = {}
    if not args.no_memory:
        # quick: only the two variants the memory target compares
        for v in (('shared', NPID) if args.quick else
                  [v for v in variants if v != COMPILED]):
            mem[v] = in_fresh_process(memory_child, args, shapes, v)

    enc = t['encoders']
    rows = [['encoders (slow + fast) fwd+bwd', median(enc) * 1e3, 1.0,
             ops['encoders'], '', '']]
    for v in variants:
        m = mem.get(v, {})
        rows.append([
            v, median(t[v]) * 1e3, ratio(t[v], enc), ops[v],
            m.get('fwd_peak', ''), m.get('total_peak', '')
        ])
    print()
    print_table([
        'work', 'ms (median)', 'x encoders', f'{counted} per step',
        'fwd+update peak MiB', 'fwd+bwd+update peak MiB'
    ], rows)
    share = ratio(t['shared'], enc)

    # the target's reference is per-sample negatives the NPID/CMC way; the
    # per-sample mode shipped here uses the fused loss and is listed apart
    npid = NPID
    speed = ratio(t[npid], t['shared'])
    print()
    print(f'head (shared) / encoders: {share:.3f}  target '
          f'{verdict(share, HEAD_SHARE_TARGET, False)}')
    print(f'per-sample negatives the NPID/CMC way / shared, time: '
          f'{speed:.1f}x  target {verdict(speed, SPEED_TARGET, True)}')
    print(f"per-sample as shipped (fused loss) / shared, time: "
          f"{ratio(t['per-sample'], t['shared']):.1f}x;  the fused loss vs "
          f"autograd: shared {ratio(t['shared, autograd'], t['shared']):.2f}"
          f"x, per-sample {ratio(t[npid], t['per-sample']):.2f}x faster")
    print(f"{variants[1]} / shared: time "
          f"{ratio(t[variants[1]], t['shared']):.2f}x, {counted} "
          f"{ops[variants[1]]} vs {ops['shared']}")
    summary = dict(head_share=share, npid_over_shared_time=speed)
    if args.compile:
        compiled = summary['compiled_head_share'] = ratio(t[COMPILED], enc)
        print(f"{COMPILED} / shared: time "
              f"{ratio(t[COMPILED], t['shared']):.2f}x, {counted} "
              f"{ops[COMPILED]} vs {ops['shared']}; head (compiled) / "
              f"encoders: {compiled:.3f}  target "
              f"{verdict(compiled, HEAD_SHARE_TARGET, False)}")
    if mem:
        s = mem['shared']
        ref = mem[npid]
        per = mem.get('per-sample')
        # the target is checked at the forward+update peak, the step's peak
        # (all activations alive); the fwd+bwd figure adds the gradients of
        # the feature maps, the same for every variant and owed to the
        # encoders' backward, which dilutes the ratio
        for key, what, target in (
                ('fwd_peak', 'forward+update peak', True),
                ('total_peak', 'fwd+bwd+update peak', False)):
            r_ref = ref[key] / max(s[key], 1e-9)
            line = f'{what}: NPID/CMC way / shared {r_ref:.1f}x'
            if target:
                line += f'  target {verdict(r_ref, MEMORY_TARGET, True)}'
            summary[f'memory_{key}_npid'] = r_ref
            if per:
                r_per = per[key] / max(s[key], 1e-9)
                line += (f';  per-sample as shipped / shared '
                         f'{r_per:.1f}x')
                summary[f'memory_{key}_per_sample'] = r_per
            print(line)
        print('(memory: fresh subprocess per variant; ' + (
            'torch.cuda.max_memory_allocated over allocated before)'
            if dev.startswith('cuda') else
            'resident high-water mark VmHWM over VmRSS before)'))
    info['load_after'] = load()
    print(f"load before/after: {info['load_before']} / {info['load_after']}")
    dump_json(args.json, dict(machine=info, times=t, memory=mem, ops=ops,
                              summary=summary, args=vars(args)))


if __name__ == '__main__':
    main()
