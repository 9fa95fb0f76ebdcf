"""Transfer: a VTHCL encoder, exported, in stock recognizers and AVA FastRCNN.

The encoder comes from a small R18 VTHCL trained one step, so its weights and
BN statistics are not the initial ones; the shipped configs under
``configs/recognition`` and ``configs/detection`` are built as they are (only
paths and sizes are changed for CPU runs).
"""
import glob
import os
import os.path as osp
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from mmaction.registry import MODELS
from mmaction.structures import ActionDataSample
from mmvthcl.compat import load_tensors_only
from mmvthcl.models import VTHCLResNet3d, export_encoder

from .conftest import (R18_CONFIG, ROOT, VIDEOS, free_port, load_tool,
                       run_tool)

REC_DIR = osp.join(ROOT, 'configs', 'recognition')
DET_DIR = osp.join(ROOT, 'configs', 'detection')
UCF_R18 = osp.join(REC_DIR,
                   'slowonly_vthcl-k400-pre-r18_8xb8-8x8x1-100e_'
                   'ucf101-split1-rgb.py')
LINEAR_R18 = osp.join(REC_DIR,
                      'slowonly_vthcl-k400-pre-r18-linear_8xb16-8x8x1-100e_'
                      'kinetics400-rgb.py')
AVA21_R18 = osp.join(DET_DIR,
                     'slowonly_vthcl-k400-pre-r18_8xb16-8x8x1-20e_'
                     'ava21-rgb.py')
CLIP = (1, 3, 8, 32, 32)  # N, C, T, H, W


# --------------------------------------------------------------- fixtures
def _vthcl_r18(share_encoder=False):
    cfg = Config.fromfile(R18_CONFIG).model
    cfg.head.num_negatives = 4
    cfg.head.memory.num_samples = 4
    if share_encoder:
        cfg.share_encoder = True
        cfg.pop('fast_backbone', None)
    return MODELS.build(cfg)


def _train_one_step(model):
    """One SGD step on random clips: weights and BN statistics move."""
    torch.manual_seed(0)
    inputs = dict(
        imgs=torch.randn(2, *CLIP[1:]),
        imgs_fast=torch.randn(2, 3, 16, 32, 32))
    samples = []
    for i in range(2):
        ds = ActionDataSample()
        ds.sample_idx = i
        samples.append(ds)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    losses = model(inputs, samples, mode='loss')
    sum(losses.values()).backward()
    optimizer.step()
    return optimizer


def _save_mmengine_style(model, optimizer, path):
    # like CheckpointHook's file: meta with non-tensor objects, so plain
    # torch.load(weights_only=True) refuses it
    torch.save(
        dict(
            meta=dict(
                epoch=1,
                iter=1,
                message_hub=dict(
                    log_scalars={'train/loss': HistoryBuffer([1.0], [1])})),
            state_dict=model.state_dict(),
            optimizer=optimizer.state_dict()), path)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """A one-step-trained R18 VTHCL, its checkpoint and both exports."""
    init_default_scope('mmaction')
    root = tmp_path_factory.mktemp('vthcl')
    torch.manual_seed(0)
    model = _vthcl_r18()
    init = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = _train_one_step(model)
    trained = model.backbone.state_dict()
    # not the initial weights, nor the initial BN statistics
    assert not torch.equal(init['conv1.conv.weight'],
                           trained['conv1.conv.weight'])
    assert not torch.equal(init['conv1.bn.running_mean'],
                           trained['conv1.bn.running_mean'])
    model.eval()
    ckpt = str(root / 'epoch_1.pth')
    _save_mmengine_style(model, optimizer, ckpt)
    prefixed = str(root / 'export' / 'backbone_prefixed.pth')
    bare = str(root / 'export' / 'backbone_bare.pth')
    export_encoder(ckpt, prefixed)
    export_encoder(ckpt, bare, fmt='backbone')
    return dict(
        model=model, ckpt=ckpt, prefixed=prefixed, bare=bare, root=root)


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def _assert_same_tensors(got: dict, expected: dict):
    assert sorted(got) == sorted(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


# ---------------------------------------------------------------- export
def test_export_formats_and_weights_only_load(pretrained):
    model = pretrained['model']
    slow = model.backbone.state_dict()
    # a full training checkpoint is refused by the weights-only loader ...
    with pytest.raises(pickle.UnpicklingError):
        torch.load(pretrained['ckpt'], weights_only=True)
    # ... the exports are not, and hold exactly the slow encoder
    prefixed = _load(pretrained['prefixed'])
    assert list(prefixed) == ['state_dict']
    _assert_same_tensors(prefixed['state_dict'],
                         {f'backbone.{k}': v for k, v in slow.items()})
    _assert_same_tensors(_load(pretrained['bare'])['state_dict'], slow)


def test_export_fast_encoder_and_shared_encoder(pretrained, tmp_path):
    fast = pretrained['model'].fast_backbone.state_dict()
    out = str(tmp_path / 'fast.pth')
    info = export_encoder(pretrained['ckpt'], out, encoder='fast',
                          fmt='backbone')
    assert info['num_tensors'] == len(fast) and not info['shared']
    _assert_same_tensors(_load(out)['state_dict'], fast)
    # separate encoders: the fast one's weights differ from the slow one's
    slow = pretrained['model'].backbone.state_dict()
    assert not torch.equal(fast['conv1.conv.weight'],
                           slow['conv1.conv.weight'])

    # share_encoder=True: only backbone.* exists; 'fast' exports it
    shared = _vthcl_r18(share_encoder=True)
    ckpt = str(tmp_path / 'shared.pth')
    torch.save(dict(state_dict=shared.state_dict()), ckpt)
    info = export_encoder(ckpt, str(tmp_path / 'o' / 's.pth'),
                          encoder='fast')
    assert info['shared']
    _assert_same_tensors(
        _load(str(tmp_path / 'o' / 's.pth'))['state_dict'],
        {f'backbone.{k}': v
         for k, v in shared.backbone.state_dict().items()})


def test_export_cli_and_refusals(pretrained, tmp_path, capsys):
    # the CLI as a script: prints the count, creates the output directory
    out = tmp_path / 'new' / 'dir' / 'bb.pth'
    proc = run_tool('tools/export_backbone.py', pretrained['ckpt'], out)
    n = len(pretrained['model'].backbone.state_dict())
    assert f'wrote {n} tensors of the slow encoder' in proc.stdout
    assert sorted(_load(str(out))['state_dict']) == sorted(
        _load(pretrained['prefixed'])['state_dict'])
    # never overwrites silently, and never the checkpoint itself
    with pytest.raises(FileExistsError, match='exists; pass --overwrite'):
        export_encoder(pretrained['ckpt'], str(out))
    with pytest.raises(ValueError, match='is the checkpoint being exported'):
        export_encoder(pretrained['ckpt'], pretrained['ckpt'],
                       overwrite=True)
    export_encoder(pretrained['ckpt'], str(out), fmt='backbone',
                   overwrite=True)
    assert sorted(_load(str(out))['state_dict']) == sorted(
        _load(pretrained['bare'])['state_dict'])
    # the CLI's options reach the export: --overwrite, --format
    cli = load_tool('export_backbone')
    with pytest.raises(SystemExit, match='exists; pass --overwrite'):
        cli.main([pretrained['ckpt'], str(out)])
    cli.main([pretrained['ckpt'], str(out), '--overwrite'])
    assert sorted(_load(str(out))['state_dict']) == sorted(
        _load(pretrained['prefixed'])['state_dict'])
    capsys.readouterr()
    cli.main([pretrained['ckpt'], str(out), '--overwrite', '--format',
              'backbone'])
    assert sorted(_load(str(out))['state_dict']) == sorted(
        _load(pretrained['bare'])['state_dict'])
    # and says how to load it, including the field stock configs get wrong
    assert (f'model.backbone.pretrained={out} model.backbone.pretrained2d='
            'False') in capsys.readouterr().out

    # a stock recognizer checkpoint has backbone.* too, but no VTHCL encoder
    cfg = Config.fromfile(UCF_R18)
    recognizer = MODELS.build(cfg.model)
    stock = str(tmp_path / 'recognizer.pth')
    torch.save(dict(meta=dict(), state_dict=recognizer.state_dict()), stock)
    with pytest.raises(SystemExit) as exc:
        cli.main([stock, str(tmp_path / 'x.pth')])
    message = str(exc.value.code)  # sys.exit(message): stderr, status 1
    assert message.startswith('export_backbone: error: ')
    assert f'{stock} holds no VTHCL encoder' in message
    assert 'recognizer checkpoint' in message
    # so is an already exported backbone and a file that is no checkpoint
    with pytest.raises(ValueError, match='holds no VTHCL encoder.*already '
                       'exported'):
        export_encoder(pretrained['prefixed'], str(tmp_path / 'y.pth'))
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(RuntimeError, match=re.escape(str(junk))):
        export_encoder(str(junk), str(tmp_path / 'z.pth'))
    assert not osp.exists(tmp_path / 'x.pth')
    assert not osp.exists(tmp_path / 'z.pth')


# ----------------------------------------------------- recognition (stock)
def _recognizer(config=UCF_R18, **backbone):
    cfg = Config.fromfile(config)
    cfg.model.backbone.update(backbone)
    model = MODELS.build(cfg.model)
    assert type(model).__name__ == 'Recognizer3D'
    assert type(model.backbone).__name__ == 'ResNet3dSlowOnly'
    return model


def test_prefixed_export_loads_into_stock_recognizer(pretrained):
    recognizer = _recognizer()
    recognizer.init_weights()
    sd = _load(pretrained['prefixed'])['state_dict']
    # what load_from does: every key matches; only the new head is missing
    missing, unexpected = recognizer.load_state_dict(sd, strict=False)
    assert unexpected == []
    assert sorted(missing) == ['cls_head.fc_cls.bias',
                               'cls_head.fc_cls.weight']
    # the backbone alone loads strictly: zero missing, zero unexpected
    recognizer.backbone.load_state_dict(
        {k[len('backbone.'):]: v for k, v in sd.items()}, strict=True)

    vthcl = pretrained['model'].eval()
    recognizer.eval()
    x = torch.randn(*CLIP)
    with torch.no_grad():
        assert torch.equal(recognizer.backbone(x), vthcl.backbone(x)[-1])
        # and through the recognizer's own feature path (B, views, ...)
        feat, _ = recognizer.extract_feat(x[None])
        assert torch.equal(feat, vthcl.backbone(x)[-1])


def test_bare_export_loads_through_backbone_pretrained(pretrained):
    recognizer = _recognizer(pretrained=pretrained['bare'])
    recognizer.init_weights()
    vthcl = pretrained['model'].eval()
    _assert_same_tensors(recognizer.backbone.state_dict(),
                         vthcl.backbone.state_dict())
    recognizer.eval()
    x = torch.randn(*CLIP)
    with torch.no_grad():
        assert torch.equal(recognizer.backbone(x), vthcl.backbone(x)[-1])

    # why export_backbone tells users to set pretrained2d=False: a stock
    # SlowOnly config keeps pretrained2d=True, and MMAction2's inflation then
    # finds none of the 3D keys and silently keeps every random weight
    inflated = _recognizer(pretrained=pretrained['bare'], pretrained2d=True)
    inflated.init_weights()
    trained = vthcl.backbone.state_dict()
    assert not any(torch.equal(v, trained[k]) for k, v in
                   inflated.backbone.state_dict().items()
                   if v.is_floating_point() and v.numel() > 1)


def test_linear_probe_trains_only_the_head(pretrained):
    cfg = Config.fromfile(LINEAR_R18)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.load_state_dict(_load(pretrained['prefixed'])['state_dict'],
                          strict=False)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    backbone = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head = model.cls_head.fc_cls.weight.detach().clone()
    model.train()
    data = dict(
        inputs=[torch.rand(*CLIP) * 255 for _ in range(2)],
        data_samples=[ActionDataSample().set_gt_label(i) for i in range(2)])
    for _ in range(2):
        model.train_step(data, optim_wrapper)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    # weights and BN running statistics of the backbone did not move
    _assert_same_tensors(model.backbone.state_dict(), backbone)
    assert not torch.equal(model.cls_head.fc_cls.weight, head)


# ------------------------------------------------------- detection (AVA)
def test_prefixed_export_loads_into_ava_fastrcnn(pretrained):
    cfg = Config.fromfile(AVA21_R18)
    cfg.model.init_cfg.checkpoint = pretrained['prefixed']
    detector = MODELS.build(cfg.model)
    assert type(detector).__name__ == 'FastRCNN'
    assert type(detector.backbone).__name__ == 'ResNet3dSlowOnly'
    sd = _load(pretrained['prefixed'])['state_dict']
    missing, unexpected = detector.load_state_dict(sd, strict=False)
    assert unexpected == [] and not any(
        k.startswith('backbone.') for k in missing)
    # through the config's field: the detector-level Pretrained init_cfg
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    vthcl = pretrained['model'].eval()
    _assert_same_tensors(detector.backbone.state_dict(),
                         vthcl.backbone.state_dict())

    # the same encoder with AVA's res5 stride of 1 (no parameter changes)
    encoder = VTHCLResNet3d(depth=18, spatial_strides=(1, 2, 2, 1))
    encoder.load_state_dict(vthcl.backbone.state_dict(), strict=True)
    encoder.eval()
    detector.eval()
    x = torch.randn(*CLIP)
    with torch.no_grad():
        feat = detector.backbone(x)
        # res5 at stride 16: 2x2 from 32 pixels (1x1 at the stock stride 32)
        assert feat.shape == (1, 512, 8, 2, 2)
        assert torch.equal(feat, encoder(x)[-1])


# -------------------------------------------------- shipped configs, all
def test_every_transfer_config_takes_the_export_in_one_field():
    paths = sorted(glob.glob(osp.join(REC_DIR, '*.py')) +
                   glob.glob(osp.join(DET_DIR, '*.py')))
    assert len(paths) == 18
    for path in paths:
        cfg = Config.fromfile(path)
        name = osp.basename(path)
        depth = 18 if '-r18' in name else 50
        assert cfg.custom_imports.imports == ['mmvthcl'], name
        backbone = cfg.model.backbone
        assert backbone.depth == depth and backbone.pretrained is None, name
        if path.startswith(DET_DIR):
            checkpoint = cfg.model.init_cfg.checkpoint
            assert cfg.load_from is None, name
            channels = cfg.model.roi_head.bbox_head.in_channels
            version = re.search(r'ava(2\d)', name).group(1)
            assert f'_v2.{version[1]}' in cfg.val_evaluator.ann_file, name
            assert cfg.val_dataloader.dataset.ann_file == \
                cfg.val_evaluator.ann_file
            assert backbone.spatial_strides == (1, 2, 2, 1)
        else:
            checkpoint = cfg.load_from
            channels = cfg.model.cls_head.in_channels
            split = re.search(r'split(\d)', name)
            if split:
                dataset = re.search(r'(ucf101|hmdb51)', name).group(1)
                classes = dict(ucf101=101, hmdb51=51)[dataset]
                assert cfg.model.cls_head.num_classes == classes, name
                for loader in ('train', 'val', 'test'):
                    ann = cfg[f'{loader}_dataloader'].dataset.ann_file
                    assert ann.startswith(f'data/{dataset}/{dataset}_'), name
                    assert ann.endswith(f'_split_{split.group(1)}_videos.txt')
            else:  # the K400 linear probe
                assert backbone.frozen_stages == 4 and backbone.norm_eval
        assert channels == (512 if depth == 18 else 2048), name
        assert checkpoint == (f'work_dirs/vthcl_r{depth}_k400/'
                              f'vthcl_r{depth}_k400_backbone.pth'), name


# ---------------------------------------------------- end to end on CPU
def _run_in(cwd, *args, env=None, check=True, timeout=600):
    """Run a repository tool from ``cwd`` (AVAMetric writes its CSV there)."""
    env = dict(os.environ, **(env or {}))
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    cmd = [sys.executable, osp.join(ROOT, args[0])]
    cmd += [str(a) for a in args[1:]]
    proc = subprocess.run(
        cmd,
        cwd=str(cwd),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout if check else proc


def _make_tiny_ava(root, video, num_frames=110, short_side=64):
    """An AVA-format set made from a real video: 1 video, 2 timestamps."""
    import cv2
    import decord
    vid = 'vthcl_ava_0'
    frames = root / 'rawframes' / vid
    frames.mkdir(parents=True)
    reader = decord.VideoReader(video)
    num_frames = min(num_frames, len(reader))
    batch = reader.get_batch(list(range(num_frames))).asnumpy()
    h, w = batch.shape[1:3]
    size = (round(w * short_side / h), short_side)
    for i, frame in enumerate(batch):
        cv2.imwrite(str(frames / f'img_{i + 1:05d}.jpg'),
                    cv2.resize(frame[..., ::-1], size))
    ann = root / 'annotations'
    ann.mkdir()
    # video_id,timestamp,x1,y1,x2,y2,action_id,entity_id (as ava_sample.csv)
    boxes = {902: [((0.10, 0.12, 0.60, 0.95), (12, 17))],
             903: [((0.12, 0.10, 0.62, 0.96), (12, )),
                   ((0.55, 0.20, 0.95, 0.90), (79, ))]}
    rows = [
        f'{vid},{ts:04d},{b[0]:.3f},{b[1]:.3f},{b[2]:.3f},{b[3]:.3f},{a},{e}'
        for ts, people in boxes.items()
        for e, (b, actions) in enumerate(people) for a in actions
    ]
    (ann / 'ava_tiny.csv').write_text('\n'.join(rows) + '\n')
    (ann / 'ava_tiny_excluded_timestamps.csv').write_text(f'{vid},0904\n')
    (ann / 'action_list.txt').write_text(''.join(
        f'item {{\n  name: "action{i}"\n  id: {a}\n}}\n'
        for i, a in enumerate((12, 17, 79), 1)))
    # person proposals: each box, slightly shifted, with a detector score
    proposals = {
        f'{vid},{ts:04d}':
        np.array([[*np.clip(np.add(b, 0.01), 0, 1), 0.99] for b, _ in people])
        for ts, people in boxes.items()
    }
    with open(ann / 'ava_tiny_proposals.pkl', 'wb') as f:
        pickle.dump(proposals, f)
    return dict(
        data_root=str(root / 'rawframes'),
        ann_file=str(ann / 'ava_tiny.csv'),
        exclude_file=str(ann / 'ava_tiny_excluded_timestamps.csv'),
        label_file=str(ann / 'action_list.txt'),
        proposal_file=str(ann / 'ava_tiny_proposals.pkl'))


@pytest.mark.slow
def test_ava_one_epoch_and_ava_metric(pretrained, tmp_path):
    data = _make_tiny_ava(tmp_path, osp.join(VIDEOS, 'test.mp4'))
    dataset = dict(
        ann_file=data['ann_file'],
        exclude_file=data['exclude_file'],
        label_file=data['label_file'],
        proposal_file=data['proposal_file'],
        data_prefix=dict(img=data['data_root']))
    cfg = tmp_path / 'ava_tiny.py'
    cfg.write_text(f"""
_base_ = [{AVA21_R18!r}]
model = dict(init_cfg=dict(checkpoint={pretrained['prefixed']!r}))
# 8 frames as the 8x8 config, denser so that 110 frames hold both timestamps
train_pipeline = [
    dict(type='SampleAVAFrames', clip_len=8, frame_interval=2),
    dict(type='RawFrameDecode'),
    dict(type='RandomRescale', scale_range=(64, 72)),
    dict(type='RandomCrop', size=64),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='FormatShape', input_format='NCTHW', collapse=True),
    dict(type='PackActionInputs')
]
val_pipeline = [
    dict(type='SampleAVAFrames', clip_len=8, frame_interval=2,
         test_mode=True),
    dict(type='RawFrameDecode'),
    dict(type='Resize', scale=(-1, 64)),
    dict(type='FormatShape', input_format='NCTHW', collapse=True),
    dict(type='PackActionInputs')
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(pipeline=train_pipeline, **{dataset!r}))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(pipeline=val_pipeline, **{dataset!r}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={data['ann_file']!r},
                     label_file={data['label_file']!r},
                     exclude_file={data['exclude_file']!r})
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1)
default_hooks = dict(logger=dict(interval=1))
""")
    work = tmp_path / 'work'
    out = _run_in(tmp_path, 'tools/train.py', cfg, '--work-dir', work)
    # the detector-level init_cfg took the export: only the new head is new
    assert f"load model from: {pretrained['prefixed']}" in out, out[-3000:]
    assert 'missing keys in source state_dict: roi_head.bbox_head.fc_cls.' \
        'weight, roi_head.bbox_head.fc_cls.bias\n' in out, out[-3000:]
    assert 'unexpected key' not in out
    assert 'Epoch(train) [1][1/1]' in out, out[-3000:]
    mean_ap = re.search(r'mAP/overall: ([0-9.]+)', out)
    assert mean_ap, out[-3000:]
    assert 0.0 <= float(mean_ap.group(1)) <= 1.0
    assert osp.isfile(work / 'epoch_1.pth')
    # AVAMetric's temporary CSV went to the run's directory and was removed
    assert not glob.glob(str(tmp_path / 'AVA_*_result.csv'))
    assert not glob.glob(osp.join(ROOT, 'AVA_*_result.csv'))


def _tiny_recognition_config(path, base, load_from, videos,
                             batch_size=2):
    """``base``, a shipped recognition config, on 2 classes of ``videos``
    with 64² clips, for one epoch on CPU; written to ``path``."""
    ann = path.parent / f'{path.stem}_videos.txt'
    ann.write_text(''.join(f'{osp.basename(v)} {i % 2}\n'
                           for i, v in enumerate(videos)))

    def loader(pipeline, batch_size):
        return (f'dict(batch_size={batch_size}, num_workers=0, '
                'persistent_workers=False, dataset=dict('
                f'ann_file={str(ann)!r}, data_prefix=dict(video={VIDEOS!r}), '
                f'pipeline={pipeline}))')

    path.write_text(f"""
_base_ = [{base!r}]
load_from = {load_from!r}
model = dict(cls_head=dict(num_classes=2))
train_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=4, num_clips=1),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 72)),
    dict(type='RandomResizedCrop'),
    dict(type='Resize', scale=(64, 64), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
val_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=4, num_clips=1,
         test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 72)),
    dict(type='CenterCrop', crop_size=64),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=8, frame_interval=4, num_clips=2,
         test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 72)),
    dict(type='CenterCrop', crop_size=64),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')
]
train_dataloader = {loader('train_pipeline', batch_size)}
val_dataloader = {loader('val_pipeline', batch_size)}
test_dataloader = {loader('test_pipeline', 1)}
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
""")
    return path


@pytest.mark.slow
def test_recognition_finetune_and_test(pretrained, tmp_path, shared_videos):
    # 4 videos, 2 classes; the 1080p one is left out (slow to decode)
    videos = [v for v in shared_videos if 'skeleton' not in v][:4]
    cfg = _tiny_recognition_config(tmp_path / 'ucf_tiny.py', UCF_R18,
                                   pretrained['prefixed'], videos)
    work = tmp_path / 'work'
    out = _run_in(tmp_path, 'tools/train.py', cfg, '--work-dir', work)
    # load_from took the export: only the new head is missing
    assert f"Load checkpoint from {pretrained['prefixed']}" in out, \
        out[-3000:]
    assert 'missing keys in source state_dict: cls_head.fc_cls.weight, ' \
        'cls_head.fc_cls.bias\n' in out, out[-3000:]
    assert 'unexpected key' not in out, out[-3000:]
    assert 'Epoch(train) [1][2/2]' in out, out[-3000:]
    assert re.search(r'Epoch\(val\) \[1\]\[2/2\]\s+acc/top1: [0-9.]+', out), \
        out[-3000:]

    test_args = ('tools/test.py', cfg, work / 'epoch_1.pth', '--work-dir',
                 work)
    # the full checkpoint tools/train.py wrote loads (tensors-only, no
    # environment variable) into tools/test.py
    proc = _run_in(tmp_path, *test_args, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert re.search(r'Epoch\(test\) \[4/4\]\s+acc/top1: [0-9.]+',
                     proc.stdout), proc.stdout[-3000:]
    # it scored that checkpoint (not the config's load_from, the export),
    # and the checkpoint matched the recognizer key for key
    assert f"Load checkpoint from {work / 'epoch_1.pth'}\n" in proc.stdout, \
        proc.stdout[-3000:]
    assert f"Load checkpoint from {pretrained['prefixed']}" not in \
        proc.stdout
    assert 'missing keys' not in proc.stdout, proc.stdout[-3000:]
    assert 'unexpected key' not in proc.stdout, proc.stdout[-3000:]


@pytest.mark.slow
def test_linear_probe_under_ddp(pretrained, tmp_path, shared_videos):
    """The README runs the probe with ``dist_train.sh``: DDP wraps the model
    before MMAction2 freezes the backbone (in ``train()``), so the frozen
    parameters, which never get a gradient, must not stop DDP's reducer."""
    videos = [v for v in shared_videos if 'skeleton' not in v][:4]
    cfg = _tiny_recognition_config(tmp_path / 'linear_tiny.py', LINEAR_R18,
                                   pretrained['prefixed'], videos,
                                   batch_size=1)
    work = tmp_path / 'work'
    out = run_tool('bash', osp.join(ROOT, 'tools', 'dist_train.sh'), cfg,
                   '2', '--work-dir', work,
                   env=dict(PORT=str(free_port()), OMP_NUM_THREADS='1')
                   ).stdout
    # 4 videos over 2 ranks in batches of 1: 2 steps, the second is where a
    # reducer waiting for the frozen parameters' gradients fails
    assert 'Epoch(train) [1][2/2]' in out, out[-3000:]
    # (an MMEngine checkpoint also holds the message hub: tensors only)
    trained = load_tensors_only(str(work / 'epoch_1.pth'))['state_dict']
    exported = _load(pretrained['prefixed'])['state_dict']
    backbone = {k: v for k, v in trained.items() if k.startswith('backbone.')}
    _assert_same_tensors(backbone, exported)
