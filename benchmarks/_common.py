"""Shared helpers of the benchmark scripts: timing, memory, the machine line.

Every benchmark compares two (or more) things timed in the same process, the
variants interleaved in a fresh random order at every repetition, and reports
medians and the median of the per-repetition ratios. A slow phase of a shared
machine then hits all variants alike instead of biasing whichever ran during
it, which is what makes the ratios meaningful where absolute times are not.
"""
import argparse
import json
import multiprocessing as mp
import os
import os.path as osp
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # a checkout without `pip install -e .` works too
    sys.path.append(ROOT)
VIDEOS = osp.join(osp.dirname(ROOT), 'shared', 'data', 'videos')


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark accepts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        '--device', default='cpu', help="'cpu' or 'cuda' (or 'cuda:N')")
    parser.add_argument(
        '--quick', action='store_true',
        help='a ~20 s smoke run: fewer repetitions and cases')
    parser.add_argument(
        '--threads', type=int, default=None,
        help='torch intra-op threads (default: torch\'s choice, as in '
        'training)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--json', default=None, help='also write the results to this file')
    return parser


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--depth`` and ``--config`` of the scripts that build a VTHCL model
    (each resolves the default config, ``configs/vthcl_r{depth}_k400.py``,
    after parsing)."""
    parser.add_argument('--depth', type=int, default=18, choices=(18, 50))
    parser.add_argument('--config', default=None,
                        help='VTHCL config (default: configs/vthcl_r{depth}'
                        '_k400.py)')


def vthcl_model_cfg(args, num_samples: int,
                    num_negatives: Optional[int] = None,
                    per_sample_negatives: bool = False) -> dict:
    """The ``model`` of ``args.config`` at ``args.depth``, banks sized to
    ``num_samples``; ``num_negatives`` None keeps the config's K."""
    import copy

    from mmengine.config import Config
    cfg = copy.deepcopy(Config.fromfile(args.config).model.to_dict())
    cfg['backbone']['depth'] = args.depth
    head = cfg['head']
    head['memory']['num_samples'] = num_samples
    if num_negatives:
        head['num_negatives'] = num_negatives
    head['per_sample_negatives'] = per_sample_negatives
    return cfg


def setup(device: str, threads: Optional[int] = None) -> None:
    """Import the plugin, set the default scope, quiet the loggers."""
    import logging

    import torch
    if threads:
        torch.set_num_threads(threads)

    import mmvthcl  # noqa: F401  (compat fixes and registration)
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope
    init_default_scope('mmaction')
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    logging.getLogger('mmengine').setLevel(logging.ERROR)
    if device.startswith('cuda'):
        if not torch.cuda.is_available():
            raise SystemExit(f'--device {device}: CUDA is not available')
        torch.backends.cudnn.benchmark = True


def sync(device: str) -> None:
    """Wait for queued GPU work, so a timer measures it."""
    if str(device).startswith('cuda'):
        import torch
        torch.cuda.synchronize(device)


def count_ops(fn: Callable[[], object], device: str) -> Tuple[int, str]:
    """What ``fn`` asks of the device, one call, and what was counted.

    On a GPU the kernels it launches; on a CPU its top-level ATen operator
    calls (each would be at least one launch on a GPU, and each costs the
    host the dispatch a launch-bound step pays for), and the kernels of a
    ``torch.compile`` graph, which the profile names when inductor's
    ``cpp.enable_kernel_profile`` is set.
    """
    from torch.profiler import ProfilerActivity, profile
    cuda = str(device).startswith('cuda')
    activities = [ProfilerActivity.CPU]
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    sync(device)
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    events = prof.events()
    if cuda:
        launches = ('cudaLaunchKernel', 'cudaLaunchKernelExC',
                    'cuLaunchKernel', 'cuLaunchKernelEx')
        return sum(e.name in launches for e in events), 'kernels'
    return sum(
        (e.name.startswith('aten::') or '_cpp_fused_' in e.name) and
        (e.cpu_parent is None or not e.cpu_parent.name.startswith('aten::'))
        for e in events), 'ATen calls'


def load() -> str:
    """The 1/5/15-minute load averages, e.g. ``'1.93/1.94/2.54'``."""
    try:
        return '/'.join(f'{x:.2f}' for x in os.getloadavg())
    except OSError:
        return 'n/a'


def machine(device: str) -> Dict[str, str]:
    """What the numbers were measured on."""
    import torch
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True,
                             timeout=10).stdout
        for line in out.splitlines():
            if line.startswith('Model name:'):
                model = line.split(':', 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    info = dict(
        cpu=model,
        cores=str(os.cpu_count()),
        torch=torch.__version__,
        threads=str(torch.get_num_threads()),
        device=device,
    )
    if str(device).startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(device)
    # whether the allocator gets huge pages decides how many page faults a
    # step takes: up to 15 % of a CPU step here (README, table 3)
    try:
        with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
            info['thp'] = f.read().split('[')[1].split(']')[0]
    except (OSError, IndexError):
        pass
    if os.environ.get('GLIBC_TUNABLES'):
        info['GLIBC_TUNABLES'] = os.environ['GLIBC_TUNABLES']
    return info


def print_header(title: str, device: str, extra: str = '') -> Dict:
    info = machine(device)
    info['load_before'] = load()
    print(f'# {title}')
    print('machine: ' + ', '.join(f'{k}={v}' for k, v in info.items()))
    if extra:
        print(extra)
    return info


def interleaved(variants: Dict[str, Callable[[], object]],
                reps: int,
                device: str = 'cpu',
                warmup: int = 1,
                seed: int = 0,
                before: Optional[Callable[[int], None]] = None,
                faults: Optional[Dict[str, List[int]]] = None
                ) -> Dict[str, List[float]]:
    """Time every variant ``reps`` times, interleaved, in seconds.

    Args:
        variants (dict): name → a call doing one unit of work.
        reps (int): Timed repetitions of each variant.
        device (str): Synchronised around each call when a GPU.
        warmup (int): Untimed rounds first (allocator, caches, lazy init).
        seed (int): Seed of the order shuffling.
        before (callable, optional): Called with the repetition number before
            each variant's call, untimed (e.g. to reseed the augmentations so
            every variant draws the same crops).
        faults (dict, optional): Filled with name → the minor page faults
            of each timed call (the process's, from ``getrusage``).

    Returns:
        dict: name → list of ``reps`` times, index r being repetition r.
    """
    import random
    rng = random.Random(seed)
    names = list(variants)
    times = {n: [] for n in names}
    for r in range(-warmup, reps):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            if before is not None:
                before(max(r, 0))
            sync(device)
            f0 = minor_faults()
            t0 = time.perf_counter()
            variants[name]()
            sync(device)
            if r >= 0:
                times[name].append(time.perf_counter() - t0)
                if faults is not None:
                    faults.setdefault(name, []).append(minor_faults() - f0)
    return times


def minor_faults() -> int:
    """Minor page faults of this process so far (first touches of memory
    the allocator got from the OS)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of the per-repetition ratios ``num[r] / den[r]``."""
    return median([a / b for a, b in zip(num, den)])


def geomean(xs: Sequence[float]) -> float:
    import math
    xs = list(xs)
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def print_table(headers: Sequence[str], rows: Sequence[Sequence]) -> None:
    """A GitHub-markdown table (so it can be pasted into the README)."""
    cells = [[str(h) for h in headers]]
    cells += [[_fmt(c) for c in row] for row in rows]
    width = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: '| ' + ' | '.join(  # noqa: E731
        c.rjust(w) if i else c.ljust(w)
        for i, (c, w) in enumerate(zip(r, width))) + ' |'
    print(line(cells[0]))
    print('|' + '|'.join('-' * (w + 1) + ':' if i else '-' * (w + 2)
                         for i, w in enumerate(width)) + '|')
    for r in cells[1:]:
        print(line(r))


def _fmt(c) -> str:
    if isinstance(c, float):
        return f'{c:.3g}' if abs(c) < 100 else f'{c:.0f}'
    return str(c)


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    sign = '≥' if higher_is_better else '≤'
    return f"{'met' if ok else 'MISSED'} ({value:.3g} vs {sign} {target:g})"


def dump_json(path: Optional[str], payload: Dict) -> None:
    if path:
        with open(path, 'w') as f:
            json.dump(payload, f, indent=1, default=str)


# ----------------------------------------------------------------- memory
def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def rss_mib() -> float:
    """Current resident set size, in MiB (the peak where not available)."""
    kib = _proc_status_kib('VmRSS')
    return kib / 1024 if kib is not None else max_rss_mib()


def max_rss_mib() -> float:
    """Peak resident set size of this process, in MiB (Linux: since the
    last :func:`reset_peak_rss`)."""
    kib = _proc_status_kib('VmHWM')
    if kib is not None:
        return kib / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_MALLOC_ENV = {
    'MALLOC_MMAP_THRESHOLD_': str(64 * 1024),
    'MALLOC_TRIM_THRESHOLD_': str(128 * 1024),
}


def _child(conn, fn, args):
    try:
        conn.send(('ok', fn(*args)))
    except BaseException as e:  # report, never hang the parent
        conn.send(('error', f'{type(e).__name__}: {e}'))
    finally:
        conn.close()


def in_fresh_process(fn: Callable, *args, timeout: float = 600,
                     tune_malloc: bool = True):
    """Run ``fn(*args)`` in a new (spawned) interpreter; return its result.

    Peak-memory measurements need a process whose high-water mark only the
    measured work has moved; ``fn`` must be a module-level function.
    ``tune_malloc`` sets glibc's thresholds for resident-memory measurement
    (see below); leave it off for GPU work, whose memory is PyTorch's
    allocator's and whose host time those thresholds would slow.
    """
    ctx = mp.get_context('spawn')
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args))
    # glibc: serve every block of 64 KiB or more with its own mmap and give
    # freed memory back at once, so that resident memory follows the live
    # allocations instead of a heap that keeps (and silently reuses) what
    # an earlier phase freed
    env = _MALLOC_ENV if tune_malloc else {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    child.close()
    try:
        if not parent.poll(timeout):
            raise TimeoutError(f'{fn.__name__} took more than {timeout} s')
        try:
            status, value = parent.recv()
        except EOFError:  # died without a word: a crash or the OOM killer
            proc.join(30)
            raise RuntimeError(
                f'{fn.__name__}: its subprocess died (exit code '
                f'{proc.exitcode}) before reporting') from None
    finally:
        # a child stuck in its teardown (e.g. CUDA's) must not hang the
        # parent
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status != 'ok':
        raise RuntimeError(f'{fn.__name__} failed in its subprocess: {value}')
    return value


class MemoryTracker:
    """Peak and held memory of a piece of work, phase by phase, in MiB.

    GPU: ``torch.cuda.max_memory_allocated`` / ``memory_allocated`` relative
    to the allocated memory at :meth:`start` (allocator-level, exact).
    CPU: the resident high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs`` at :meth:`start`) and the resident size
    (``VmRSS``), relative to the resident size at :meth:`start`. Use it in a
    fresh process (:func:`in_fresh_process`), without a warm-up call on CPU:
    memory an earlier call freed may stay mapped and be reused without
    showing up as growth.
    """

    def __init__(self, device: str) -> None:
        self.cuda = str(device).startswith('cuda')
        self.device = device
        self.base = 0.0
        self.marks = {}

    def start(self) -> None:
        import gc

        import torch
        gc.collect()
        if self.cuda:
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            reset_peak_rss()
            self.base = rss_mib()

    def mark(self, name: str) -> Dict[str, float]:
        """Record ``{'peak': ..., 'held': ...}`` since :meth:`start`."""
        import torch
        if self.cuda:
            sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            held = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            peak, held = max_rss_mib(), rss_mib()
        self.marks[name] = dict(peak=peak - self.base, held=held - self.base)
        return self.marks[name]
