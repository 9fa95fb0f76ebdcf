"""Generated tempo dataset, kNN evaluation and its monitor hook."""
import hashlib
import os.path as osp
import re
import shlex

import decord
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmvthcl.evaluation import knn_top1
from .conftest import ROOT, free_port, init_gloo, load_tool, run_tool

SYNTH = osp.join(ROOT, 'tools', 'data', 'make_synthetic.py')


def reference_knn(train_f, train_y, val_f, val_y, k, t):
    """One val clip at a time, with Python sorting and a dict of votes."""
    correct = 0
    for f, y in zip(val_f, val_y):
        sims = [(float(f @ g), int(c)) for g, c in zip(train_f, train_y)]
        sims.sort(key=lambda s: -s[0])
        votes = {}
        for sim, c in sims[:k]:
            votes[c] = votes.get(c, 0.0) + float(np.exp(sim / t))
        correct += max(votes, key=votes.get) == int(y)
    return 100.0 * correct / len(val_y)


@pytest.mark.parametrize('k, t', [(1, 0.07), (5, 0.1), (20, 0.5)])
def test_weighted_knn_equals_reference(k, t):
    g = torch.Generator().manual_seed(k)
    train_f = F.normalize(torch.randn(60, 8, generator=g), dim=1)
    train_y = torch.randint(0, 4, (60, ), generator=g)
    val_f = F.normalize(torch.randn(25, 8, generator=g), dim=1)
    val_y = torch.randint(0, 4, (25, ), generator=g)
    ours = knn_top1(train_f, train_y, val_f, val_y, k=k, temperature=t,
                    chunk=7)
    assert ours == pytest.approx(reference_knn(train_f, train_y, val_f,
                                               val_y, k, t))


def test_knn_separates_separable_features():
    centres = F.normalize(torch.randn(3, 16), dim=1)
    y = torch.arange(3).repeat(20)
    f = F.normalize(centres[y] + 0.05 * torch.randn(60, 16), dim=1)
    assert knn_top1(f[:45], y[:45], f[45:], y[45:], k=5) == 100.0


# ---------------------------------------- kNN features against references
#: a kNN test pipeline at a small size, with 2 views per clip (averaged)
KNN_PIPELINE = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=4, frame_interval=2, num_clips=2,
         test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 40)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs', collect_keys=('imgs', )),
]


def hand_features(model, paths, depth):
    """Pooled features of each video without ``extract_features``: the
    clips through the same pipeline, normalised with the model's
    constants, the slow encoder of an eval-mode copy, the mean over (T, H,
    W) and then over the views."""
    import copy

    from mmengine.dataset import Compose

    from mmvthcl.models.algorithms.vthcl import IMG_NORM
    twin = copy.deepcopy(model).eval()
    pipeline = Compose(copy.deepcopy(KNN_PIPELINE))
    mean = torch.tensor(IMG_NORM['mean']).view(3, 1, 1, 1)
    std = torch.tensor(IMG_NORM['std']).view(3, 1, 1, 1)
    out = []
    with torch.no_grad():
        for path in paths:
            data = pipeline(dict(filename=path, label=-1, start_index=0,
                                 modality='RGB'))
            views = (data['inputs']['imgs'].float() - mean) / std
            assert views.shape[:2] == (2, 3)  # (V, C, T, H, W)
            fmap = twin.backbone(views)[twin.depths.index(depth)]
            out.append(fmap.mean(dim=(2, 3, 4)).mean(dim=0))
    return torch.stack(out)


@pytest.fixture(scope='module')
def knn_setup(shared_videos):
    """A small random VTHCL with BN statistics away from their initial
    values (so that eval mode and batch statistics give other features),
    four videos (not the 1080p one, which is slow to decode) and their
    features by hand at two depths."""
    from mmengine.registry import init_default_scope

    from mmaction.registry import MODELS

    # module-scoped: runs before the per-test fixture that sets the scope
    init_default_scope('mmaction')
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='VTHCL',
        backbone=dict(type='VTHCLResNet3d', depth=18, base_channels=8),
        head=dict(type='HierarchicalContrastiveHead', num_negatives=2,
                  memory=dict(type='HierarchicalMemoryBank',
                              num_samples=4))))
    model.init_weights()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    # Not test.avi either: decord 0.6.0 now and then returns the frame it
    # returned before in place of its last one (MPEG-4 in AVI; 7-21 of 300
    # batch reads with both cores busy, none idle; README, "Reliability"),
    # and test-mode SampleFrames always reads the last frame, so the hand
    # and the tool's decoding of it could differ by one frame.
    paths = [v for v in shared_videos
             if 'skeleton' not in v and not v.endswith('.avi')][:4]
    assert len(paths) == 4
    return dict(model=model, paths=paths,
                feats={d: hand_features(model, paths, d)
                       for d in ('res4', 'res5')})


def write_list(path, videos, labels):
    path.write_text(''.join(f'{osp.basename(v)} {y}\n'
                            for v, y in zip(videos, labels)))
    return str(path)


def test_extract_features_pools_the_encoder_output(tmp_path, knn_setup):
    """Batches of 3 clips (and a last one of 1) of 2 views each give, per
    clip, the hand-pooled encoder output at the asked depth; the model's
    modes and buffers are as they were."""
    import copy

    from mmvthcl.evaluation.knn import build_loader, extract_features
    from .conftest import VIDEOS
    model, paths = knn_setup['model'], knn_setup['paths']
    labels = [2, 0, 1, 2]
    ann = write_list(tmp_path / 'list.txt', paths, labels)
    loader = build_loader(ann, VIDEOS, copy.deepcopy(KNN_PIPELINE),
                          batch_size=3)
    model.train()
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    feats, got_labels = extract_features(model, loader, depth='res4')
    assert got_labels.tolist() == labels
    want = knn_setup['feats']['res4']
    assert feats.shape == want.shape == (4, model.backbone.out_channels[1])
    torch.testing.assert_close(feats, want, rtol=1e-4, atol=1e-5)
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())


def test_evaluate_knn_equals_a_hand_written_knn(tmp_path, knn_setup,
                                                monkeypatch):
    """What evaluate_knn classifies with: the hand features, centred on
    the train set's mean (or not) and L2-normalised, and an accuracy equal
    to the one-clip-at-a-time reference on them."""
    import copy

    from mmvthcl.evaluation import knn as knn_module
    from .conftest import VIDEOS
    model, paths = knn_setup['model'], knn_setup['paths']
    train_y, val_y = [0, 1, 0, 1], [1, 1, 0]
    train_ann = write_list(tmp_path / 'train.txt', paths, train_y)
    val_ann = write_list(tmp_path / 'val.txt', paths[1:], val_y)
    hand = knn_setup['feats']['res5']
    calls = []
    real = knn_module.knn_top1

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(knn_module, 'knn_top1', spy)
    for center in (True, False):
        calls.clear()
        top1 = knn_module.evaluate_knn(
            model, train_ann, val_ann, VIDEOS, copy.deepcopy(KNN_PIPELINE),
            k=3, temperature=0.1, batch_size=2, center=center)
        train_f, val_f = hand, hand[1:]
        if center:
            mean = train_f.mean(dim=0, keepdim=True)
            train_f, val_f = train_f - mean, val_f - mean
        train_f, val_f = F.normalize(train_f, dim=1), F.normalize(val_f,
                                                                  dim=1)
        (args, kwargs), = calls
        torch.testing.assert_close(args[0], train_f, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(args[2], val_f, rtol=1e-4, atol=1e-5)
        assert args[1].tolist() == train_y and args[3].tolist() == val_y
        assert kwargs == dict(k=3, temperature=0.1)
        assert top1 == pytest.approx(reference_knn(
            train_f, torch.tensor(train_y), val_f, torch.tensor(val_y), 3,
            0.1))


def file_digest(path):
    with open(path, 'rb') as fh:
        return hashlib.md5(fh.read()).hexdigest()


def test_generator_layout_balance_and_determinism(tmp_path):
    args = ['--num-videos', '27', '--seed', '3', '--size', '32',
            '--num-frames', '24']
    run_tool(SYNTH, '--out', tmp_path / 'a', *args)
    run_tool(SYNTH, '--out', tmp_path / 'b', *args)
    classes = (tmp_path / 'a' / 'classes.txt').read_text().split()
    assert len(classes) == 9
    lines = {}
    for split in ('train', 'val'):
        lines[split] = (tmp_path / 'a' / f'{split}.txt').read_text().split(
            '\n')[:-1]
        labels = [int(line.split()[1]) for line in lines[split]]
        assert sorted(set(labels)) == list(range(9))  # every class, both
    assert len(lines['train']) + len(lines['val']) == 27
    for line in lines['train'] + lines['val']:
        name, label = line.split()
        assert name.split('/')[1].startswith(classes[int(label)])
        path = tmp_path / 'a' / 'videos' / name
        vr = decord.VideoReader(str(path))
        assert len(vr) == 24 and vr[0].shape == (32, 32, 3)
        assert file_digest(path) == file_digest(tmp_path / 'b' / 'videos' /
                                                name)
    run_tool(SYNTH, '--out', tmp_path / 'c', *args[:2], '--seed', '4',
             *args[4:])
    name = lines['train'][0].split()[0]
    assert file_digest(tmp_path / 'a' / 'videos' / name) != file_digest(
        tmp_path / 'c' / 'videos' / name)


def test_demo_regenerates_its_dataset_when_generator_or_settings_change(
        tmp_path, monkeypatch):
    """An earlier `make demo` left OUT/data; a newer generator (or other
    settings) must not silently reuse it. A --data directory is the user's:
    used as it is."""
    import json

    demo = load_tool('demo')
    generated = []
    real_run = demo.run

    def run(cmd, log=None):
        generated.append(cmd)
        return real_run(cmd, log)

    monkeypatch.setattr(demo, 'run', run)
    data = str(tmp_path / 'data')
    small = ['--num-videos', '18', '--size', '32', '--num-frames', '8']
    demo.prepare_dataset(data, small, own=True)
    assert len(generated) == 1
    demo.prepare_dataset(data, small, own=True)  # up to date: reused
    assert len(generated) == 1
    demo.prepare_dataset(data, small + ['--seed', '1'], own=True)
    assert len(generated) == 2  # other settings
    manifest = tmp_path / 'data' / 'generator.json'
    old = json.loads(manifest.read_text())
    old['generator_sha256'] = '0' * 64  # made by another generator
    manifest.write_text(json.dumps(old))
    demo.prepare_dataset(data, small + ['--seed', '1'], own=True)
    assert len(generated) == 3
    manifest.write_text(json.dumps(old))
    demo.prepare_dataset(data, small + ['--seed', '1'], own=False)
    assert len(generated) == 3  # the user's directory: as it is
    # main() treats a --data directory holding the manifest as generated
    monkeypatch.setattr(demo, 'knn_top1', lambda out: 0.0)

    def stop_after_data(cmd, log=None):
        generated.append(cmd)
        if 'make_synthetic' not in cmd[0]:
            raise SystemExit('stop')
        return real_run(cmd, log)

    monkeypatch.setattr(demo, 'run', stop_after_data)
    with pytest.raises(SystemExit, match='stop'):
        demo.main(['--out', str(tmp_path / 'out'), '--data', data,
                   '--num-videos', '18', '--seed', '1'])
    assert 'make_synthetic' in generated[3][0]


def test_generator_refuses_a_size_decord_cannot_read(tmp_path):
    res = run_tool(SYNTH, '--out', tmp_path, '--num-videos', '18', '--size',
                   '48', '--num-frames', '8', check=False)
    assert res.returncode != 0
    assert 'choose another --size' in res.stdout


def test_class_is_motion_not_a_single_frame_colour(tmp_path):
    """Same class videos differ in colour and background; the object moves;
    every object colour has the same luma, so only its hue varies."""
    gen = load_tool('data/make_synthetic')
    rng = np.random.default_rng(0)
    colours = np.array(sorted({gen.palette_colour(rng, 8)
                               for _ in range(200)}), float)
    assert len(colours) == 8
    luma = colours @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(luma, 255 * gen.OBJECT_LUMA, atol=1.5)
    dist = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert dist[~np.eye(8, dtype=bool)].min() > 20  # distinct hues
    run_tool(SYNTH, '--out', tmp_path, '--num-videos', '36', '--seed', '0',
             '--size', '32', '--num-frames', '24')
    lines = (tmp_path / 'train.txt').read_text().split('\n')[:-1]
    by_class = {}
    for line in lines:
        name, label = line.split()
        frames = decord.VideoReader(str(tmp_path / 'videos' /
                                        name)).get_batch(range(24)).asnumpy()
        by_class.setdefault(int(label), []).append(frames.astype(float))
        # something moves: some frame differs from the first
        assert max(np.abs(frames[0].astype(float) - f).mean()
                   for f in frames[1:]) > 1.0
    for videos in by_class.values():
        # first frames (background, colour, position) vary inside a class
        assert max(np.abs(videos[0][0] - v[0]).mean()
                   for v in videos[1:]) > 5.0


def test_keyframed_interpolates_like_np_interp():
    gen = load_tool('data/make_synthetic')
    keys = np.random.default_rng(0).uniform(size=(5, 2))
    got = gen.keyframed(keys, num_frames=13, drift=4)
    t = np.arange(13)
    for col in range(2):
        want = np.interp(t, np.arange(5) * 4, keys[:, col])
        np.testing.assert_allclose(got[:, col], want, rtol=1e-12)
    np.testing.assert_array_equal(gen.keyframed(keys, 3, drift=0),
                                  np.repeat(keys[:1], 3, axis=0))


def test_drift_cross_fades_the_background(tmp_path):
    """Static: one background throughout; drift: keyframes and blends."""
    gen = load_tool('data/make_synthetic')
    rng = np.random.default_rng(0)
    size, drift, frames_n = 32, 4, 12
    backgrounds = np.stack([gen.texture(rng, size) for _ in range(5)])
    colors = np.array([[255, 0, 0]] * 5, np.float32)
    corner = (slice(0, 2), slice(0, 2))  # the object never reaches it
    static = gen.render_video(np.random.default_rng(1), 8, size, frames_n,
                              backgrounds[:1], colors[:1], drift=0)
    for f in static:
        np.testing.assert_array_equal(f[corner], backgrounds[0][corner])
    drifting = gen.render_video(np.random.default_rng(1), 8, size, frames_n,
                                backgrounds, colors, drift=drift)
    for k in range(frames_n // drift):
        np.testing.assert_array_equal(drifting[k * drift][corner],
                                      backgrounds[k][corner])
    half = np.round((backgrounds[0][corner].astype(float) +
                     backgrounds[1][corner]) / 2)
    np.testing.assert_allclose(drifting[drift // 2][corner], half, atol=1)
    # the object's colour is the same red throughout: the class (shape and
    # motion) is drawn whatever the nuisances do
    assert (np.abs(drifting.astype(int) - [255, 0, 0]).sum(-1) < 30).any(
        axis=(1, 2)).all()
    # through the command line: the first and last frames' backgrounds
    # differ, where a static video's are the same up to compression
    run_tool(SYNTH, '--out', tmp_path / 'd', '--num-videos', '18', '--size',
             '32', '--num-frames', '24', '--drift', '6', '--num-textures',
             '0')
    name = (tmp_path / 'd' / 'train.txt').read_text().split()[0]
    vr = decord.VideoReader(str(tmp_path / 'd' / 'videos' / name))
    first, last = vr[0].asnumpy()[:4, :4], vr[23].asnumpy()[:4, :4]
    assert len(vr) == 24 and np.abs(first.astype(int) - last).mean() > 5
    res = run_tool(SYNTH, '--out', tmp_path / 'e', '--drift', '-1',
                   check=False)
    assert res.returncode != 0 and '--drift must be' in res.stdout


@pytest.fixture(scope='module')
def tiny_synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp('synthetic')
    run_tool(SYNTH, '--out', out, '--num-videos', '36', '--seed', '1',
             '--size', '64', '--num-frames', '40')
    return out


DEMO = osp.join(ROOT, 'configs', 'demo', 'vthcl_tiny_synthetic.py')


def knn_args(data):
    return ['--train-ann', data / 'train.txt', '--val-ann', data / 'val.txt',
            '--data-root', data / 'videos']


@pytest.mark.slow
def test_monitor_hook_and_eval_knn_agree(tmp_path, tiny_synthetic,
                                         monkeypatch):
    data = tiny_synthetic
    work = tmp_path / 'work'
    out = run_tool(
        'tools/train.py', DEMO, '--work-dir', work, '--cfg-options',
        f'train_dataloader.dataset.ann_file={data / "train.txt"}',
        f'train_dataloader.dataset.data_prefix.video={data / "videos"}',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'train_dataloader.batch_size=8', 'model.head.num_negatives=8',
        f'custom_hooks.0.train_ann={data / "train.txt"}',
        f'custom_hooks.0.val_ann={data / "val.txt"}',
        f'custom_hooks.0.data_root={data / "videos"}',
        'custom_hooks.0.interval=1', 'train_cfg.max_epochs=1',
        'param_scheduler.0.T_max=1', 'param_scheduler.0.end=1',
        'default_hooks.checkpoint.interval=1').stdout
    logged = [float(v) for v in
              __import__('re').findall(r'knn/top1: ([0-9.]+)', out)]
    assert len(logged) == 1, out[-3000:]
    scalars = list(work.glob('*/vis_data/scalars.json'))
    assert scalars and 'knn/top1' in scalars[0].read_text()

    # the CLI gives the same number for the checkpoint, and a baseline
    ckpt = work / 'epoch_1.pth'
    res = run_tool('tools/eval_knn.py', DEMO, ckpt, *knn_args(data)).stdout
    last = res.strip().splitlines()[-1]
    assert last.startswith('knn_top1: ')
    assert float(last.split()[1]) == pytest.approx(logged[0], abs=0.01)
    assert f'encoder: {ckpt}\n' in res
    # and what the CLI evaluates is the checkpoint's model, not a random
    # one that happened to score the same: its model, caught in-process
    # where it would be evaluated, holds every weight of the file (the
    # banks aside, which the kNN does not use)
    from mmvthcl.compat import load_tensors_only
    tool = load_tool('eval_knn')
    evaluated = []
    monkeypatch.setattr(tool, 'evaluate_knn',
                        lambda model, *a, **k: evaluated.append(model) or 0.)
    tool.main([str(a) for a in (DEMO, ckpt, *knn_args(data))] +
              ['--device', 'cpu'])
    saved = load_tensors_only(str(ckpt))['state_dict']
    got = evaluated[0].state_dict()
    weights = [k for k in saved if not k.startswith('head.memory.')]
    assert any(k.startswith('backbone.') for k in weights)
    for k in weights:
        assert torch.equal(got[k].cpu(), saved[k]), k
    base = run_tool('tools/eval_knn.py', DEMO, *knn_args(data),
                    '--device', 'cpu').stdout
    assert 'random initialisation' in base
    assert 0.0 <= float(base.strip().splitlines()[-1].split()[1]) <= 100.0


def test_monitor_hook_checks_its_settings_when_the_run_starts(tmp_path):
    from types import SimpleNamespace

    from mmvthcl.engine.hooks import KNNMonitorHook
    lists = []
    for name in ('train.txt', 'val.txt'):
        lists.append(tmp_path / name)
        lists[-1].write_text('a.mp4 0\n')
    runner = SimpleNamespace(model=SimpleNamespace(depths=('res3', 'res4')))
    with pytest.raises(ValueError, match="depth 'res5' is not one of"):
        KNNMonitorHook(*lists).before_run(runner)
    KNNMonitorHook(*lists, depth='res4').before_run(runner)
    with pytest.raises(FileNotFoundError,
                       match=f'val_ann {tmp_path}/nope.txt is not a file'):
        KNNMonitorHook(lists[0], tmp_path / 'nope.txt',
                       depth='res4').before_run(runner)


def test_monitor_hook_evaluates_every_interval_and_at_the_end(monkeypatch):
    """interval=2 over 5 epochs: after epochs 2 and 4 and the last one, each
    result logged as knn/top1."""
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    from mmvthcl.engine.hooks import KNNMonitorHook
    from mmvthcl.engine.hooks import knn_monitor_hook
    scores = iter([40.0, 50.0, 60.0])
    monkeypatch.setattr(knn_monitor_hook, 'evaluate_knn',
                        lambda *args, **kwargs: next(scores))
    hook = KNNMonitorHook('train.txt', 'val.txt', interval=2,
                          pipeline=[dict(type='DecordInit')])
    runner = SimpleNamespace(max_epochs=5, iter=0, model=None,
                             logger=MagicMock(),
                             message_hub=MagicMock(), visualizer=MagicMock())
    logged = []
    runner.message_hub.update_scalar.side_effect = \
        lambda key, value: logged.append((runner.epoch + 1, key, value))
    for epoch in range(5):
        runner.epoch = epoch
        hook.after_train_epoch(runner)
    assert logged == [(2, 'knn/top1', 40.0), (4, 'knn/top1', 50.0),
                      (5, 'knn/top1', 60.0)]


def test_eval_knn_options_reach_the_evaluation(monkeypatch):
    """tools/eval_knn.py hands every option to the model build and the kNN
    (the slow end-to-end test runs it with the defaults only)."""
    tool = load_tool('eval_knn')
    seen = {}
    monkeypatch.setattr(tool, 'build_vthcl_model', lambda cfg, ckpt, seed: (
        seen.update(checkpoint=ckpt, seed=seed) or torch.nn.Linear(1, 1)))
    # (lists and root; then the config's pipeline)
    monkeypatch.setattr(tool, 'evaluate_knn', lambda model, *args, **kw: (
        seen.update(args=args[:3], **kw) or 12.5))
    tool.main([DEMO, 'ck.pth', '--train-ann', 't.txt', '--val-ann', 'v.txt',
               '--data-root', 'videos', '--k', '5', '--temperature', '0.5',
               '--depth', 'res4', '--no-center', '--batch-size', '3',
               '--num-workers', '2', '--seed', '7', '--device', 'cpu'])
    assert seen == dict(checkpoint='ck.pth', seed=7,
                        args=('t.txt', 'v.txt', 'videos'), k=5,
                        temperature=0.5, depth='res4', batch_size=3,
                        num_workers=2, center=False)


def test_eval_knn_refuses_a_device_it_does_not_have(tiny_synthetic):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    res = run_tool('tools/eval_knn.py', DEMO, *knn_args(tiny_synthetic),
                   '--device', 'cuda', check=False)
    assert res.returncode != 0
    assert '--device cuda: CUDA is not available here' in res.stdout


def test_eval_knn_refuses_a_non_vthcl_checkpoint(tmp_path, tiny_synthetic):
    bad = tmp_path / 'recognizer.pth'
    torch.save({'state_dict': {'backbone.conv1.conv.weight': torch.ones(1),
                               'cls_head.fc_cls.weight': torch.ones(1)}},
               str(bad))
    res = run_tool('tools/eval_knn.py', DEMO, bad, *knn_args(tiny_synthetic),
                   check=False)
    assert res.returncode != 0
    assert 'recognizer.pth: not a VTHCL checkpoint' in res.stdout


def demo_table(text):
    """(random-init top-1, VTHCL top-1, gain) from the demo's table."""
    values = [
        float(re.search(rf'{label}\s+([-+0-9.]+)', text).group(1))
        for label in (r'random-init kNN top-1 \(%\)',
                      r'VTHCL kNN top-1 \(%\)', r'gain \(points\)')
    ]
    return tuple(values)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reports(tmp_path):
    """`make demo` shortened (36 videos, 1 epoch): every step runs, and the
    table, the checkpoint with its banks and the ICM image are where it
    says. Whether pretraining helps is the next test's job."""
    out = tmp_path / 'demo'
    proc = run_tool(osp.join(ROOT, 'tools', 'demo.py'), '--out', out,
                    '--num-videos', 36, '--epochs', 1, '--cfg-options',
                    'model.head.num_negatives=8', timeout=900)
    text = proc.stdout
    base, top1, gain = demo_table(text)
    assert 0 <= base <= 100 and 0 <= top1 <= 100
    assert gain == pytest.approx(top1 - base, abs=0.01)
    ckpt = out / 'work' / 'epoch_1.pth'
    # outside the working directory: the path as it is, not ../../tmp/...
    assert ckpt.is_file() and f'checkpoint: {ckpt}\n' in text
    state = torch.load(ckpt, map_location='cpu', weights_only=False)
    banks = [k for k in state['state_dict'] if k.startswith('head.memory.')
             and k.endswith(('_slow', '_fast'))]
    assert len(banks) == 6, banks
    # one row per training video (12 of the 36 are val)
    assert all(state['state_dict'][b].shape[0] == 24 for b in banks)
    icm = out / 'icm.png'
    assert icm.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    log = (out / 'train.log').read_text()
    for d in ('res3', 'res4', 'res5'):
        assert f'loss_{d}:' in log
    assert 'knn/top1' in log
    # every step is printed as it can be run by hand from the repository
    steps = [shlex.split(line[2:]) for line in text.splitlines()
             if line.startswith('$ ')]
    assert len(steps) == 5, text[-3000:]
    for argv in steps:
        assert argv[0] == 'python' and osp.isfile(osp.join(ROOT, argv[1]))


#: kNN points the shortened demo must gain over random init (100 val videos,
#: one video = 1 point); it measured +25 (23.0 → 48.0) on 2 CPU cores, +36
#: with a version that only drew other initial weights, and +22 and +23 with
#: versions that could draw a query's own row among its negatives
MIN_GAIN = 10


@pytest.mark.slow
def test_pretraining_beats_random_init(tmp_path):
    """`make demo` shortened to half the videos (200 train / 100 val, K =
    128 for the smaller banks) with its 30 epochs: the pretrained slow
    encoder's kNN top-1 beats the same encoder at random initialisation by
    at least MIN_GAIN points. Labels enter only the kNN evaluation."""
    out = tmp_path / 'demo'
    proc = run_tool(osp.join(ROOT, 'tools', 'demo.py'), '--out', out,
                    '--num-videos', 300, '--cfg-options',
                    'model.head.num_negatives=128', timeout=1800)
    base, top1, gain = demo_table(proc.stdout)
    # shown by `pytest -rP`: the number the README quotes, on this machine
    print(f'shortened demo kNN top-1: random init {base:.2f} -> VTHCL '
          f'{top1:.2f} ({gain:+.2f} points)')
    assert gain >= MIN_GAIN, proc.stdout[-3000:]


def test_ablation_variants_build(tmp_path):
    """Each ablation variant's overrides give a buildable model and
    pipeline (a variant failing after 30 minutes of the others is costly)."""
    import argparse
    import sys

    from mmaction.registry import MODELS, TRANSFORMS
    from mmengine.config import Config, DictAction
    sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
    try:
        from ablation import VARIANTS
    finally:
        sys.path.remove(osp.join(ROOT, 'benchmarks'))
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        default={})
    for name, options in VARIANTS.items():
        cfg = Config.fromfile(
            osp.join(ROOT, 'configs', 'demo', 'vthcl_tiny_synthetic.py'))
        if options:
            cfg.merge_from_dict(
                parser.parse_args(['--cfg-options', *options]).cfg_options)
        model = MODELS.build(cfg.model)
        assert len(model.depths) == (1 if 'res5 only' in name else 3), name
        sampler = TRANSFORMS.build(cfg.train_dataloader.dataset.pipeline[1])
        assert sampler.alpha == (1 if 'α = 1' in name else 2), name


def test_ablation_table_summarises_the_seeds(capsys):
    """Per variant: each seed's top-1, their mean and range, and the gain
    of the mean over the random-init baseline; one run: no range."""
    import sys
    sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
    try:
        from ablation import print_table
    finally:
        sys.path.remove(osp.join(ROOT, 'benchmarks'))
    print_table([('full', [(20.0, 60.0, 5.0), (20.0, 70.5, 6.0),
                           (20.0, 65.0, 7.0)])], [0, 1, 2])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split(' | ')[2:5] == ['seed 0', 'seed 1', 'seed 2']
    assert lines[2] == ('| full | 20.0 | 60.0 | 70.5 | 65.0 | 65.2 | '
                        '60.0–70.5 | +45.2 | 6.0 min |')
    print_table([('full', [(20.0, 60.0, 5.0)])], [None])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[2] == '| full | 20.0 | 60.0 |  | +40.0 | 5.0 min |'


def test_ablation_runs_only_the_chosen_variants(tmp_path, monkeypatch,
                                                capsys):
    """``--variants`` picks variants by their table position (the number of
    their output folders) and refuses one that does not exist."""
    import sys
    sys.path.insert(0, osp.join(ROOT, 'benchmarks'))
    try:
        import ablation
    finally:
        sys.path.remove(osp.join(ROOT, 'benchmarks'))
    tags = []

    def fake_run(args, out, data, tag, options):
        tags.append((tag, options))
        return 20.0, 50.0, 1.0

    class FakeDemo:
        @staticmethod
        def prepare_dataset(*args, **kwargs):
            pass

    monkeypatch.setattr(ablation, 'run_variant', fake_run)
    monkeypatch.setattr(ablation, 'load_demo', lambda: FakeDemo)
    ablation.main(['--out', str(tmp_path), '--variants', '2', '1',
                   '--train-seeds', '0', '1'])
    names = list(ablation.VARIANTS)
    assert [t for t, _ in tags] == ['variant1_seed0', 'variant1_seed1',
                                    'variant2_seed0', 'variant2_seed1']
    assert tags[2][1] == ablation.VARIANTS[names[2]] + ['randomness.seed=0']
    table = capsys.readouterr().out
    assert names[1] in table and names[2] in table
    assert names[0] not in table
    with pytest.raises(SystemExit):
        ablation.parse_args(['--variants', str(len(names))])
    assert f'no variant {len(names)}' in capsys.readouterr().err


def test_supervised_reference_matches_the_demo():
    """The labelled reference trains as many steps as the demo, with the
    demo's encoder, and is scored on the clip the demo's kNN uses (the two
    configs spell these out separately, as MMAction2 configs do)."""
    from mmengine.config import Config
    demo = Config.fromfile(DEMO)
    sup = Config.fromfile(osp.join(ROOT, 'configs', 'demo',
                                   'supervised_tiny_synthetic.py'))
    assert sup.train_cfg.max_epochs == demo.train_cfg.max_epochs
    assert (sup.train_dataloader.batch_size ==
            demo.train_dataloader.batch_size)
    for key in ('depth', 'base_channels', 'with_pool1'):
        assert sup.model.backbone[key] == demo.model.backbone[key], key
    assert sup.val_pipeline[:-1] == demo.knn_pipeline[:-1]
    assert sup.val_dataloader.dataset.pipeline == sup.val_pipeline


def _knn_features_rank(rank, port, ann, out):
    """One of 2 gloo processes extracting kNN features of ``ann``."""
    import torch.distributed as dist
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import mmvthcl  # noqa: F401
    from mmaction.registry import MODELS
    from mmvthcl.evaluation.knn import (build_loader, extract_features,
                                        knn_pipeline)
    from .conftest import VIDEOS
    init_gloo(rank, port)
    init_default_scope('mmaction')
    cfg = Config.fromfile(DEMO)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    loader = build_loader(ann, VIDEOS, knn_pipeline(cfg), batch_size=2)
    feats, labels = extract_features(model, loader)
    torch.save(dict(feats=feats, labels=labels, own=len(loader.dataset)),
               f'{out}{rank}.pth')
    dist.destroy_process_group()


@pytest.mark.slow
def test_knn_of_a_list_shorter_than_the_processes(tmp_path, shared_videos):
    """One clip over 2 processes: the rank left without a clip still joins
    the gathers (it raised, and the other waited in them), and both get the
    one row."""
    import torch.multiprocessing as mp
    ann = tmp_path / 'one.txt'
    video = [v for v in shared_videos if 'skeleton' not in v][0]
    ann.write_text(f'{osp.basename(video)} 3\n')
    mp.spawn(_knn_features_rank, args=(free_port(), str(ann),
                                       str(tmp_path / 'rank')), nprocs=2)
    ranks = [torch.load(tmp_path / f'rank{r}.pth') for r in range(2)]
    assert [r['own'] for r in ranks] == [1, 0]
    for r in ranks:
        assert r['feats'].shape == (1, 128)  # res5 of the demo's R18
        assert r['labels'].tolist() == [3]
    assert torch.equal(ranks[0]['feats'], ranks[1]['feats'])
