"""tools/train.py and tools/test.py turn arguments into the right config."""
import os.path as osp

import pytest
import torch

from .conftest import ROOT, load_tool

STOCK = ('mmaction::recognition/slowonly/'
         'slowonly_r50_8xb16-8x8x1-256e_kinetics400-rgb.py')


@pytest.fixture
def stock_config(tmp_path):
    """A stock MMAction2 config, which sets no `randomness`."""
    path = tmp_path / 'stock.py'
    path.write_text(f'_base_ = [{STOCK!r}]\n')
    return str(path)


def test_train_arguments_reach_the_config(stock_config, tmp_path):
    train = load_tool('train')
    cfg = train.build_config(train.parse_args([
        stock_config, '--seed', '5', '--deterministic', '--auto-scale-lr',
        '--work-dir', str(tmp_path / 'w'), '--cfg-options',
        'train_dataloader.batch_size=3'
    ]))
    assert cfg.randomness == dict(seed=5, deterministic=True)
    assert cfg.auto_scale_lr.enable is True
    assert cfg.auto_scale_lr.base_batch_size == 128  # kept from the stock
    assert cfg.train_dataloader.batch_size == 3
    assert cfg.work_dir == str(tmp_path / 'w')
    # no seed given: the key the Runner requires is still there
    cfg = train.build_config(train.parse_args([stock_config]))
    assert cfg.randomness == dict(seed=None)
    assert cfg.work_dir == osp.join('./work_dirs', 'stock')


def test_train_resume_forms(stock_config, tmp_path):
    train = load_tool('train')
    work = tmp_path / 'work'
    work.mkdir()
    args = [stock_config, '--work-dir', str(work), '--cfg-options',
            'load_from=pretrained_backbone.pth']
    # nothing to resume yet (pre-empted before the first checkpoint): start
    # as configured, from the pretrained weights
    cfg = train.build_config(train.parse_args(args + ['--resume']))
    assert cfg.resume is False
    assert cfg.load_from == 'pretrained_backbone.pth'
    # a checkpoint in the work dir: resume from it
    (work / 'epoch_3.pth').write_bytes(b'')
    (work / 'last_checkpoint').write_text(str(work / 'epoch_3.pth'))
    cfg = train.build_config(train.parse_args(args + ['--resume']))
    assert cfg.resume is True and cfg.load_from == str(work / 'epoch_3.pth')
    cfg = train.build_config(
        train.parse_args([stock_config, '--resume', 'x/epoch_3.pth']))
    assert cfg.resume is True and cfg.load_from == 'x/epoch_3.pth'


def test_cpu_distributed_launch_picks_gloo(stock_config):
    if torch.cuda.is_available():
        pytest.skip('GPU machines keep nccl')
    train = load_tool('train')
    cfg = train.build_config(
        train.parse_args([stock_config, '--launcher', 'pytorch']))
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None


def test_test_tool_sets_checkpoint_and_dump(stock_config):
    test = load_tool('test')
    cfg = test.build_config(test.parse_args(
        [stock_config, 'ckpt.pth', '--dump', 'out.pkl']))
    assert cfg.load_from == 'ckpt.pth'
    assert cfg.test_evaluator[-1] == dict(type='DumpResults',
                                          out_file_path='out.pkl')
    with pytest.raises(ValueError, match='--dump must end with .pkl'):
        test.build_config(test.parse_args(
            [stock_config, 'ckpt.pth', '--dump', 'out.txt']))


@pytest.mark.parametrize('gpus, per_node', [('4', '4'), ('16', '8')])
def test_slurm_script_books_what_it_uses(tmp_path, gpus, per_node):
    """The srun line (an srun on PATH that prints its arguments): fewer GPUs
    than a node's 8 book only those."""
    import os
    import subprocess
    srun = tmp_path / 'srun'
    srun.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    srun.chmod(0o755)
    env = dict(os.environ, GPUS=gpus,
               PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(
        ['bash', osp.join(osp.dirname(osp.dirname(__file__)), 'tools',
                          'slurm_train.sh'), 'part', 'job', 'cfg.py',
         '--resume'], env=env, check=True, capture_output=True,
        text=True).stdout.split('\n')
    assert f'--ntasks={gpus}' in out
    assert f'--ntasks-per-node={per_node}' in out
    assert f'--gres=gpu:{per_node}' in out
    assert out[-5:] == ['cfg.py', '--launcher', 'slurm', '--resume', '']


def test_random_baseline_is_the_model_training_starts_from(tmp_path):
    """eval_knn / visualize_icm without a checkpoint build the model that
    training with the same config starts from: its seed is the config's
    ``randomness.seed`` (here given as a cfg-option, as the demo and the
    ablation pass it), so a run's gain is measured from its own start."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from mmvthcl.utils import build_vthcl_model, load_tool_config
    config = osp.join(ROOT, 'configs', 'demo', 'vthcl_tiny_synthetic.py')

    def weights(model):
        return {k: v for k, v in model.state_dict().items()
                if not k.startswith('head.memory.')}

    cfg = Config.fromfile(config)
    cfg.merge_from_dict({'randomness.seed': 1})
    cfg.work_dir = str(tmp_path)
    cfg.custom_hooks = []  # the kNN monitor wants lists this test has not
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()  # what Runner.train does first
    start = weights(runner.model)

    built = weights(
        build_vthcl_model(load_tool_config(config, {'randomness.seed': 1})))
    assert built.keys() == start.keys()
    for k in start:
        assert torch.equal(built[k], start[k]), k
    # and the seed matters: the config's own seed (0) is another model
    other = weights(build_vthcl_model(load_tool_config(config)))
    assert not torch.equal(other['backbone.conv1.conv.weight'],
                           start['backbone.conv1.conv.weight'])
