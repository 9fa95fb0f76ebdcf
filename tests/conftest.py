import importlib.util
import logging
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest

import mmvthcl  # noqa: F401  (registration and compat fixes first)
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED = osp.join(osp.dirname(ROOT), 'shared', 'data')
VIDEOS = osp.join(SHARED, 'videos')
# The small pretraining config most end-to-end tests start from.
R18_CONFIG = osp.join(ROOT, 'configs', 'vthcl_r18_k400.py')


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'slow: end-to-end runs (seconds to minutes); CI runs them')


@pytest.fixture(autouse=True)
def _mmaction_scope():
    init_default_scope('mmaction')
    # mmengine's per-parameter init report floods test output
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    yield


@pytest.fixture(scope='session')
def shared_videos():
    if not osp.isdir(VIDEOS):
        pytest.skip(f'shared sample videos not found at {VIDEOS}')
    return sorted(
        osp.join(VIDEOS, f) for f in os.listdir(VIDEOS)
        if f.endswith(('.mp4', '.avi')))


@pytest.fixture
def video_list(tmp_path, shared_videos):
    """A VideoDataset annotation list over the shared videos (label 0)."""
    ann = tmp_path / 'videos.txt'
    ann.write_text(''.join(f'{osp.basename(v)} 0\n' for v in shared_videos))
    return str(ann)


def load_tool(name):
    """Import ``tools/<name>.py`` (e.g. ``'train'``, ``'data/make_synthetic'``)
    as a module, to call its functions in-process."""
    spec = importlib.util.spec_from_file_location(
        'tool_' + name.replace('/', '_'), osp.join(ROOT, 'tools',
                                                   f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Boom:
    """Pickles as a call to ``os.system``: what a malicious checkpoint
    holds. Unpickling it fully touches ``path``, so a test can tell whether
    a loader ran code from the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f'touch {self.path}', ))


def free_port() -> int:
    # a fixed port can still be taken (another run, TIME_WAIT): ask the OS
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def init_gloo(rank: int, port: int, world_size: int = 2) -> None:
    """Join a local gloo process group (a test's spawned processes); a
    collective that waits 2 minutes fails instead of hanging the suite."""
    from datetime import timedelta

    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}',
                            rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))


def run_tool(*args, env=None, timeout=900, check=True):
    """Run a script of the repository with this interpreter; return output."""
    full_env = dict(os.environ)
    full_env['PYTHONPATH'] = ROOT + os.pathsep + full_env.get('PYTHONPATH', '')
    full_env['PYTHON'] = sys.executable
    full_env.update(env or {})
    cmd = [str(a) for a in args]
    if cmd[0].endswith('.py'):
        cmd = [sys.executable] + cmd
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} exited {proc.returncode}:\n'
                             f'{proc.stdout[-6000:]}')
    return proc


DEFAULT_TRAIN_PIPELINE = """[
    dict(type='DecordInit'),
    dict(type='TempoPairSampleFrames', clip_len=8, frame_interval=8,
         alpha=2),
    dict(type='TempoPairDecode', clip_pipeline=clip_pipeline),
    dict(type='PackActionInputs', collect_keys=('imgs', 'imgs_fast'),
         algorithm_keys=('sample_idx', 'color_params', 'color_params_fast')),
]"""


def write_pretrain_config(path, ann_file, data_root=VIDEOS, max_iters=2,
                          crop=112, batch_size=2,
                          pipeline=DEFAULT_TRAIN_PIPELINE, extra=''):
    """A small derivative of the R18 pretraining config for CPU runs.

    Iteration-based, unshuffled (so the trained indices are known), logging
    every iteration and checkpointing at the end. ``pipeline`` is the text of
    the training pipeline (it may use ``clip_pipeline``); ``extra`` is
    appended config text.
    """
    text = f"""
_base_ = [{R18_CONFIG!r}]
# the shipped configs' clip pipeline (lazy crop, deferred colour) at {crop}²
clip_pipeline = [
    dict(type='Resize', scale=(-1, {crop + crop // 7}), lazy=True),
    dict(type='RandomResizedCrop', area_range=(0.2, 1.0), lazy=True),
    dict(type='Resize', scale=({crop}, {crop}), keep_ratio=False, lazy=True),
    dict(type='Flip', flip_ratio=0.5, lazy=True),
    dict(type='Fuse'),
    dict(type='ClipColorJitter', p=0.8, defer=True),
    dict(type='ClipGrayscale', p=0.2, defer=True),
    dict(type='FormatShape', input_format='NCTHW'),
]
train_dataloader = dict(
    batch_size={batch_size}, num_workers=0, persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        ann_file={str(ann_file)!r},
        data_prefix=dict(video={str(data_root)!r}),
        pipeline={pipeline}))
model = dict(head=dict(num_negatives=4))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop',
                 max_iters={max_iters})
param_scheduler = []
log_processor = dict(by_epoch=False)
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval={max_iters}, by_epoch=False))
{extra}
"""
    with open(path, 'w') as f:
        f.write(text)
    return str(path)
