"""tools/train.py and tools/test.py turn arguments into the right config."""
import os.path as osp

import pytest
import torch

from .conftest import load_tool

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


def test_train_resume_forms(stock_config):
    train = load_tool('train')
    cfg = train.build_config(train.parse_args([stock_config, '--resume']))
    assert cfg.resume is True and cfg.load_from is None
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
