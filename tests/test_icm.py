"""Instance Correspondence Map: computation, drawing, CLI and training hook."""
import copy
import os
import os.path as osp
import random
from types import SimpleNamespace
from unittest.mock import MagicMock

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from PIL import Image

from mmaction.registry import DATASETS, HOOKS, MODELS
from mmvthcl.compat import load_tensors_only
from mmvthcl.datasets.transforms.tempo_pair import TempoPairSampleFrames
from mmvthcl.engine.hooks import ICMHook
from mmvthcl.engine.hooks import icm_hook as icm_hook_module
from mmvthcl.models.heads.hierarchical_contrastive_head import Projection
from mmvthcl.visualization import (ICMClips, ICMResult, compute_icm,
                                   heatmap_overlay, icm_crop_size, icm_sampler,
                                   load_icm_clips, render_icm_animation,
                                   render_icm_grid, save_gif)
from .conftest import (ROOT, VIDEOS, load_tool, run_tool,
                       write_pretrain_config)

DEPTHS = ('res3', 'res4', 'res5')


@pytest.fixture(scope='module')
def ann_file(tmp_path_factory, shared_videos):
    ann = tmp_path_factory.mktemp('icm_ann') / 'videos.txt'
    ann.write_text(''.join(f'{osp.basename(v)} 0\n' for v in shared_videos))
    return str(ann)


@pytest.fixture(scope='module')
def cfg(tmp_path_factory, ann_file):
    path = tmp_path_factory.mktemp('icm_cfg') / 'cfg.py'
    return Config.fromfile(write_pretrain_config(path, ann_file))


@pytest.fixture(scope='module')
def model(cfg):
    torch.manual_seed(0)
    m = MODELS.build(cfg.model)
    m.init_weights()
    return m


def _clips_from_frames(slow, fast, sampler=None):
    """ICMClips over given frames (no decoding)."""
    sampler = sampler or TempoPairSampleFrames(test_mode=True)
    s_off, f_off = sampler.clip_indices(0)
    return ICMClips('frames', slow, fast,
                    np.asarray(s_off) + 10,
                    np.asarray(f_off) + 10, np.asarray(s_off),
                    np.asarray(f_off), 100)


# ------------------------------------------------------------------ maps
def test_config_gives_sampling_and_size(cfg):
    cfg = copy.deepcopy(cfg)
    cfg.train_dataloader.dataset.pipeline[1].update(clip_len=4,
                                                    frame_interval=4,
                                                    alpha=4)
    sampler = icm_sampler(cfg)
    assert (sampler.clip_len, sampler.frame_interval, sampler.alpha,
            sampler.test_mode) == (4, 4, 4, True)
    assert icm_crop_size(cfg) == 112  # the clip pipeline's last Resize
    assert icm_crop_size(None) == 224


def test_maps_shape_range_and_frame_indices(model, cfg, shared_videos):
    cfg = copy.deepcopy(cfg)
    cfg.train_dataloader.dataset.pipeline[1].update(
        clip_len=4, frame_interval=4, alpha=2)  # fast: 8 frames at 2
    video = osp.join(VIDEOS, 'test.mp4')
    clips = load_icm_clips(video, cfg, size=64)
    expected = TempoPairSampleFrames(4, 4, 2, test_mode=True)(dict(
        total_frames=clips.total_frames, start_index=0))
    np.testing.assert_array_equal(clips.slow_inds, expected['frame_inds'])
    np.testing.assert_array_equal(clips.fast_inds, expected['fast_frame_inds'])
    assert clips.total_frames == 300
    assert clips.slow_frames.shape == (4, 64, 64, 3)
    assert clips.fast_frames.shape == (8, 64, 64, 3)
    assert clips.slow_frames.dtype == np.uint8

    model.train()
    result = compute_icm(model, clips)
    assert model.training  # put back
    assert result.depths == DEPTHS
    for depth, stride in zip(DEPTHS, (8, 16, 32)):
        for tempo, n in (('slow', 4), ('fast', 8)):
            m = result.maps[depth][tempo]
            assert m.shape == (n, 64, 64) and m.dtype == np.float32
            assert np.isfinite(m).all()
            assert m.min() == pytest.approx(0) and m.max() == \
                pytest.approx(1)
            sim = result.similarity[depth][tempo]
            assert sim.shape == (n, 64 // stride, 64 // stride)
            assert np.abs(sim).max() <= 1 + 1e-5  # cosine similarities


def _manual_embed(p: Projection, x: torch.Tensor) -> torch.Tensor:
    """φ written out: rows of x (L, C) → unit rows (L, D), BN in eval."""
    h = x @ p.fc1.weight.t() + p.fc1.bias
    h = (h - p.bn.running_mean) / torch.sqrt(p.bn.running_var +
                                             p.bn.eps) * p.bn.weight + \
        p.bn.bias
    return F.normalize(F.relu(h) @ p.fc2.weight.t() + p.fc2.bias, dim=1)


def test_maps_follow_the_definition(model, monkeypatch):
    """Slow map = slow φ at every location · fast global embedding (and
    symmetrically), then trilinear upsampling and min-max scaling."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    for p in model.head.projections.values():
        # running statistics far from batch statistics: a train-mode BN
        # (or a BN without them) gives other numbers
        p.bn.running_mean.copy_(torch.randn(p.bn.num_features, generator=g))
        p.bn.running_var.copy_(
            torch.rand(p.bn.num_features, generator=g) + 0.5)
    channels = model.backbone.out_channels
    feats = {
        tempo:
        tuple(
            torch.randn(1, c, t, s, s, generator=g)
            for c, s in zip(channels, (8, 4, 2)))
        for tempo, t in (('slow', 4), ('fast', 8))
    }
    monkeypatch.setattr(model,
                        'extract_feat',
                        lambda imgs, tempo='slow': feats[tempo])
    rng = np.random.default_rng(0)
    clips = _clips_from_frames(
        rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8),
        TempoPairSampleFrames(4, 4, 2, test_mode=True))
    bn_before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    result = compute_icm(model, clips)
    for depth_i, depth in enumerate(DEPTHS):
        proj = {
            t: model.head.projections[f'{depth}_{t}']
            for t in ('slow', 'fast')
        }
        with torch.no_grad():
            glob = {
                t: _manual_embed(proj[t], feats[t][depth_i].mean((2, 3, 4)))[0]
                for t in proj
            }
            for tempo, other in (('slow', 'fast'), ('fast', 'slow')):
                x = feats[tempo][depth_i][0]  # (C, T, h, w)
                dense = _manual_embed(proj[tempo], x.flatten(1).t())
                sim = (dense @ glob[other]).view(x.shape[1:])
                np.testing.assert_allclose(result.similarity[depth][tempo],
                                           sim.numpy(),
                                           atol=1e-5)
                up = F.interpolate(sim[None, None],
                                   size=(x.shape[1], 32, 32),
                                   mode='trilinear')[0, 0]
                up = (up - up.min()) / (up.max() - up.min())
                np.testing.assert_allclose(result.maps[depth][tempo],
                                           up.numpy(),
                                           atol=1e-5)
    # nothing updated (eval-mode BN, no bank write), modes put back
    for k, v in model.state_dict().items():
        assert torch.equal(v, bn_before[k]), k
    assert all(m.training for m in model.modules())


# ------------------------------------------------- property: moving object
VID_W, VID_H, OBJ, OBJ_Y = 320, 240, 80, 30


def _obj_x(frame_index):
    return 20 + 2 * frame_index  # moves right, 2 px per frame


@pytest.fixture(scope='module')
def moving_object_video(tmp_path_factory):
    """A red square crossing a static grey block texture (mp4v, decord)."""
    path = str(tmp_path_factory.mktemp('icm_video') / 'moving.mp4')
    rng = np.random.default_rng(0)
    tex = rng.integers(40, 200, (VID_H // 8, VID_W // 8)).astype(np.uint8)
    tex = cv2.resize(tex, (VID_W, VID_H), interpolation=cv2.INTER_NEAREST)
    background = np.repeat(tex[..., None], 3, axis=2)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 25,
                             (VID_W, VID_H))
    for f in range(96):
        frame = background.copy()
        x = _obj_x(f)
        frame[OBJ_Y:OBJ_Y + OBJ, x:x + OBJ] = (0, 0, 255)  # BGR red
        writer.write(frame)
    writer.release()
    return path


def _identity_like_projection(channels, q):
    """φ(x) = Q·x exactly: [I; -I] then [Q, -Q] gets through the ReLU."""
    p = Projection(channels, 2 * channels, channels)
    eye = torch.eye(channels)
    with torch.no_grad():
        p.fc1.weight.copy_(torch.cat([eye, -eye]))
        p.fc1.bias.zero_()
        p.fc2.weight.copy_(torch.cat([q, -q], dim=1))
        p.fc2.bias.zero_()
    return p  # BN: running mean 0, var 1, affine identity


def _synthetic_features(object_vector, channels=32):
    """``extract_feat`` standing in for trained encoders.

    At every location, the fraction ``a`` of object (red) pixels in the
    cell weighs the object's vector (``object_vector(tempo, shape)``);
    the rest is a fixed zero-mean random vector per location and tempo (the
    textured background). Cells of 8, 16 and 32 pixels as res3-res5.
    """

    def extract_feat(imgs, tempo='slow'):
        if imgs.dim() == 6:
            imgs = imgs.flatten(0, 1)
        # normalised input: red gives R - G ≈ 4.3, grey ≈ 0
        red = ((imgs[:, 0] - imgs[:, 1]) > 2.0).float()[:, None]
        out = []
        for stride in (8, 16, 32):
            a = F.avg_pool3d(red, (1, stride, stride))
            shape = (a.shape[0], channels) + a.shape[2:]
            g = torch.Generator().manual_seed({
                'slow': 1,
                'fast': 2
            }[tempo] * 100 + stride)
            noise = torch.randn(shape, generator=g) / channels**0.5
            out.append(a * object_vector(tempo, shape) + (1 - a) * noise)
        return tuple(out)

    return extract_feat


@pytest.fixture(scope='module')
def synthetic_model(model):
    channels = 32
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=g))
    for key in list(m.head.projections):
        m.head.projections[key] = _identity_like_projection(channels, q)
    return m


def _object_masks(frames):
    return (frames[..., 0] > 150) & (frames[..., 1] < 100) & \
        (frames[..., 2] < 100)


def test_map_mass_is_on_the_moving_object(synthetic_model, cfg,
                                          moving_object_video, monkeypatch):
    """The object carries the same vector in both clips, the background
    random ones: both tempos' res5 maps must light the object, frame by
    frame, wherever it has moved to."""
    v = F.normalize(torch.randn(32,
                                generator=torch.Generator().manual_seed(5)),
                    dim=0)
    monkeypatch.setattr(
        synthetic_model, 'extract_feat',
        _synthetic_features(lambda tempo, shape: v.view(1, -1, 1, 1, 1)))
    clips = load_icm_clips(moving_object_video, cfg, size=224)
    result = compute_icm(synthetic_model, clips, 'res5')
    # resize 240 → 224 (299 wide), centre crop from x = 37
    scale, x0 = 224 / VID_H, (round(VID_W * 224 / VID_H) - 224) // 2
    for tempo in ('slow', 'fast'):
        frames, icm = clips.frames(tempo), result.maps['res5'][tempo]
        masks = _object_masks(frames)
        for k, frame_index in enumerate(clips.inds(tempo)):
            mask = masks[k]
            # the drawn frame is the indexed one: the object is where the
            # generator put it in that frame
            centre = (_obj_x(frame_index) + OBJ / 2) * scale - x0
            assert abs(np.flatnonzero(mask.any(0)).mean() - centre) < 2
            y, x = np.unravel_index(icm[k].argmax(), icm[k].shape)
            assert mask[y, x], (tempo, k)
            assert icm[k][mask].mean() > 1.8 * icm[k][~mask].mean()
        inside, outside = icm[masks].mean(), icm[~masks].mean()
        assert inside > 0.7 and outside < 0.45, (tempo, inside, outside)

    # control: the same object pixels with no shared vector (a random one
    # per location and tempo) give no such map, so the test above measures
    # the correspondence, not the object's shape or colour
    def unshared(tempo, shape):
        g = torch.Generator().manual_seed({'slow': 7, 'fast': 8}[tempo])
        return F.normalize(torch.randn(shape, generator=g), dim=1)

    monkeypatch.setattr(synthetic_model, 'extract_feat',
                        _synthetic_features(unshared))
    control = compute_icm(synthetic_model, clips, 'res5')
    for tempo in ('slow', 'fast'):
        masks = _object_masks(clips.frames(tempo))
        icm = control.maps['res5'][tempo]
        assert icm[masks].mean() < 1.3 * icm[~masks].mean()


# --------------------------------------------------------------- drawing
@pytest.mark.parametrize('same_num_frames', [False, True])
def test_grid_and_animation_layout(tmp_path, same_num_frames):
    sampler = TempoPairSampleFrames(8,
                                    8,
                                    2,
                                    same_num_frames=same_num_frames,
                                    test_mode=True)
    n_fast = 8 if same_num_frames else 16
    rng = np.random.default_rng(0)
    clips = _clips_from_frames(
        rng.integers(0, 255, (8, 40, 40, 3), dtype=np.uint8),
        rng.integers(0, 255, (n_fast, 40, 40, 3), dtype=np.uint8), sampler)
    result = ICMResult(clips)
    for d in ('res4', 'res5'):
        result.maps[d] = {
            'slow': rng.random((8, 40, 40), dtype=np.float32),
            'fast': rng.random((n_fast, 40, 40), dtype=np.float32)
        }
    # columns: the instants of both clips (α = 2: the fast ones; same
    # number of frames: 8 slow + 8 fast in the middle, 4 shared)
    n_cols = 12 if same_num_frames else 16
    grid = render_icm_grid(result, tile=30, title='t')
    assert grid.dtype == np.uint8
    assert grid.shape == (26 + 2 * 3 * 30, 110 + n_cols * 30, 3)
    grid = render_icm_grid(result, 'res5', tile=30, show_frames=False)
    assert grid.shape == (2 * 30, 110 + n_cols * 30, 3)
    frames = render_icm_animation(result, tile=50, title='t')
    assert len(frames) == n_cols
    assert {f.shape for f in frames} == {(26 + 2 * 50, 2 * 50, 3)}
    save_gif(str(tmp_path / 'a.gif'), frames)
    with Image.open(tmp_path / 'a.gif') as im:
        assert im.format == 'GIF' and im.n_frames == n_cols
    with pytest.raises(KeyError, match='res3'):
        render_icm_grid(result, 'res3')


def test_overlay_weights_the_colour_map_by_alpha():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
    heat = rng.random((2, 6, 5), dtype=np.float32)
    levels = np.clip(heat * 255 + 0.5, 0, 255).astype(np.uint8)
    jet = cv2.cvtColor(cv2.applyColorMap(levels.reshape(-1, 5),
                                         cv2.COLORMAP_JET),
                       cv2.COLOR_BGR2RGB).reshape(frames.shape)
    assert np.array_equal(heatmap_overlay(frames, heat, 0.0), frames)
    assert np.array_equal(heatmap_overlay(frames, heat, 1.0), jet)
    blend = heatmap_overlay(frames, heat, 0.25).astype(np.float64)
    want = 0.75 * frames + 0.25 * jet
    assert np.abs(blend - want).max() <= 0.5 + 1e-6


def test_grid_puts_each_frame_at_its_instant():
    """Plain-frame rows: frame i of each clip sits in the column of its
    instant in the window (constant frames of value 10·i, tiles too small
    for a label)."""
    sampler = TempoPairSampleFrames(8, 8, 2, test_mode=True)
    slow = np.stack([np.full((40, 40, 3), 10 * i, np.uint8)
                     for i in range(8)])
    fast = np.stack([np.full((40, 40, 3), 10 * i + 5, np.uint8)
                     for i in range(16)])
    result = ICMResult(_clips_from_frames(slow, fast, sampler))
    result.maps['res5'] = {'slow': np.zeros((8, 40, 40), np.float32),
                           'fast': np.zeros((16, 40, 40), np.float32)}
    tile = 30
    grid = render_icm_grid(result, tile=tile)
    # rows: slow frames, slow res5, fast frames, fast res5
    clips = result.clips
    times = sorted(set(clips.slow_offsets.tolist())
                   | set(clips.fast_offsets.tolist()))
    for row, tempo, frames in ((0, 'slow', slow), (2, 'fast', fast)):
        for i, t in enumerate(clips.offsets(tempo).tolist()):
            x = 110 + times.index(t) * tile
            cell = grid[row * tile:(row + 1) * tile, x:x + tile]
            assert np.all(cell == frames[i, 0, 0]), (tempo, i)


def test_visualize_icm_options_reach_the_drawing(monkeypatch, tmp_path):
    """tools/visualize_icm.py: ``none`` (any case) builds the random model,
    a path loads it; --depth, --size, --seed, --tile and --no-frames reach
    the model build, the clips, the map and the grid."""
    tool = load_tool('visualize_icm')
    seen = {}

    class Model:
        head = SimpleNamespace(depths=('res3', 'res4', 'res5'))

        def to(self, device):
            return self

    def build(cfg, checkpoint, seed):
        seen.update(checkpoint=checkpoint, seed=seed)
        return Model()

    def clips(video, cfg, size):
        seen.update(video=video, size=size)
        return SimpleNamespace(slow_inds=np.arange(2),
                               fast_inds=np.arange(4), total_frames=9)

    def grid(result, depths, tile, title, show_frames):
        seen.update(grid_depths=depths, tile=tile, frames=show_frames,
                    title=title)
        return np.zeros((2, 2, 3), np.uint8)

    monkeypatch.setattr(tool, 'build_vthcl_model', build)
    monkeypatch.setattr(tool, 'load_icm_clips', clips)
    monkeypatch.setattr(tool, 'compute_icm', lambda model, c, depths: (
        seen.update(icm_depths=depths)))
    monkeypatch.setattr(tool, 'render_icm_grid', grid)
    monkeypatch.setattr(tool, 'save_image', lambda path, image: (
        seen.update(out=path)))
    out = str(tmp_path / 'icm.png')
    cfg = osp.join(ROOT, 'configs', 'vthcl_r18_k400.py')
    tool.main([cfg, 'NONE', 'v.mp4', '--out', out, '--depth', 'res4',
               '--size', '96', '--seed', '3', '--tile', '40', '--no-frames',
               '--device', 'cpu'])
    assert seen.pop('title').endswith('RANDOM WEIGHTS (no checkpoint)')
    assert seen == dict(checkpoint=None, seed=3, video='v.mp4', size=96,
                        icm_depths=('res4', ), grid_depths=('res4', ),
                        tile=40, frames=False, out=out)
    seen.clear()
    tool.main([cfg, 'ck.pth', 'v.mp4', '--out', out, '--depth', 'all',
               '--device', 'cpu'])
    assert seen['checkpoint'] == 'ck.pth' and seen['seed'] is None
    assert seen['icm_depths'] == ('res3', 'res4', 'res5')
    assert (seen['tile'], seen['frames'], seen['size']) == (112, True, None)


# -------------------------------------------------------------- the hook
class _FakeRunner:
    """What ICMHook uses of a Runner."""

    def __init__(self, model, cfg, work_dir, ann_file, max_iters):
        self.model = model
        self.cfg = cfg
        self.work_dir = str(work_dir)
        self.logger = MagicMock()
        self.visualizer = MagicMock()
        self.iter = 0
        self.max_iters = max_iters
        dataset = DATASETS.build(
            dict(type='VideoDataset',
                 ann_file=ann_file,
                 data_prefix=dict(video=VIDEOS),
                 pipeline=[]))
        self.train_dataloader = SimpleNamespace(dataset=dataset)

    def run(self, hook, iters):
        for i in iters:
            self.iter = i
            hook.after_train_iter(self, i)


def test_hook_picks_distinct_videos_through_a_repeat_dataset(ann_file):
    """Picks spread over the videos, not over RepeatDataset's copies."""
    from mmengine.dataset import RepeatDataset
    runner = _FakeRunner(None, None, '.', ann_file, 1)
    plain = ICMHook.training_videos(runner, 3)
    assert len(set(plain)) == 3
    runner.train_dataloader.dataset = RepeatDataset(
        runner.train_dataloader.dataset, times=2)
    assert ICMHook.training_videos(runner, 3) == plain


def _rng_states():
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def test_hook_draws_without_touching_training(model, cfg, ann_file, tmp_path,
                                              monkeypatch, shared_videos):
    model = copy.deepcopy(model)
    model.head.memory.resize(6)  # banks with rows, which must not move
    model.train()
    model.fast_backbone.eval()  # a part training keeps in eval mode
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}

    # an encoder that draws random numbers: the hook must hide that
    extract_feat = model.extract_feat

    def greedy_extract_feat(imgs, tempo='slow'):
        random.random(), np.random.rand(), torch.rand(1)
        return extract_feat(imgs, tempo)

    monkeypatch.setattr(model, 'extract_feat', greedy_extract_feat)
    decoded = []
    load = icm_hook_module.load_icm_clips
    monkeypatch.setattr(icm_hook_module, 'load_icm_clips',
                        lambda v, *a: decoded.append(v) or load(v, *a))

    hook = HOOKS.build(
        dict(type='ICMHook', interval=3, num_videos=2, size=48, tile=24))
    runner = _FakeRunner(model, cfg, tmp_path, ann_file, max_iters=4)
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    before = _rng_states()
    runner.run(hook, range(4))
    after = _rng_states()

    # iteration 3, and the last one (4); each video decoded once
    icm_dir = tmp_path / 'icm'
    assert sorted(
        os.listdir(icm_dir)) == ['iter_000003.png', 'iter_000004.png']
    assert decoded == [shared_videos[0], shared_videos[-1]]
    steps = [
        c.kwargs['step'] for c in runner.visualizer.add_image.call_args_list
    ]
    assert steps == [3, 4]
    name, image = runner.visualizer.add_image.call_args.args
    assert name == 'icm' and image.dtype == np.uint8 and image.ndim == 3
    with Image.open(icm_dir / 'iter_000004.png') as im:
        assert im.format == 'PNG' and im.size == (image.shape[1],
                                                  image.shape[0])
    runner.logger.warning.assert_not_called()

    assert after[0] == before[0]
    np.testing.assert_array_equal(after[1][1], before[1][1])
    assert after[1][2:] == before[1][2:]
    assert torch.equal(after[2], before[2])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert modes == {n: m.training for n, m in model.named_modules()}


def test_hook_failures_only_warn(model, cfg, ann_file, tmp_path, monkeypatch,
                                 shared_videos):
    model = copy.deepcopy(model).train()
    runner = _FakeRunner(model, cfg, tmp_path, ann_file, max_iters=2)
    missing = str(tmp_path / 'no_such_video.mp4')
    hook = ICMHook(videos=[missing], interval=1, size=48)
    runner.run(hook, range(2))
    messages = ' '.join(
        str(c.args[0]) for c in runner.logger.warning.call_args_list)
    assert missing in messages and 'no readable video' in messages
    assert not (tmp_path / 'icm').exists()

    # a depth the model does not have
    runner.logger.reset_mock()
    ICMHook(videos=[shared_videos[0]], depth='res9',
            size=48).after_train_iter(runner, 1)
    assert 'res9' in str(runner.logger.warning.call_args.args[0])

    # a failure inside the model: warned, and the model is back in train
    def broken(imgs, tempo='slow'):
        raise RuntimeError('boom')

    monkeypatch.setattr(model, 'extract_feat', broken)
    runner.logger.reset_mock()
    ICMHook(videos=[shared_videos[0]], size=48).after_train_iter(runner, 1)
    assert 'boom' in str(runner.logger.warning.call_args.args[0])
    assert all(m.training for m in model.modules())


# ------------------------------------------------ end to end (tools/*.py)
HOOKS_CFG = """
custom_hooks = [
    dict(type='ICMHook', interval=1, num_videos=1, tile=32),
    dict(type='ICMHook', interval=1, videos=[{missing!r}],
         out_dir={out!r}),
]
"""


@pytest.fixture(scope='module')
def trained(tmp_path_factory, ann_file):
    """Two 2-iteration runs, identical but for two ICMHooks (one on the
    training set, one on a missing video)."""
    root = tmp_path_factory.mktemp('icm_train')
    runs = {}
    for name, extra in (('plain', ''),
                        ('hooked',
                         HOOKS_CFG.format(missing=str(root / 'missing.mp4'),
                                          out=str(root / 'missing_icm')))):
        config = write_pretrain_config(root / f'{name}.py',
                                       ann_file,
                                       crop=64,
                                       extra=extra)
        work_dir = root / name
        proc = run_tool('tools/train.py', config, '--work-dir', work_dir)
        runs[name] = SimpleNamespace(work_dir=work_dir,
                                     log=proc.stdout,
                                     config=config,
                                     checkpoint=str(work_dir / 'iter_2.pth'))
    return runs


@pytest.mark.slow
def test_hook_in_training_writes_icm_and_changes_nothing(trained):
    hooked, plain = trained['hooked'], trained['plain']
    icm_dir = hooked.work_dir / 'icm'
    assert sorted(
        os.listdir(icm_dir)) == ['iter_000001.png', 'iter_000002.png']
    for f in os.listdir(icm_dir):
        with Image.open(icm_dir / f) as im:
            assert im.format == 'PNG' and im.width > 16 * 32
    # sent to the visualizer backends (LocalVisBackend: vis_image/)
    vis = [
        f for _, _, files in os.walk(hooked.work_dir) for f in files
        if f.startswith('icm_')
    ]
    assert sorted(vis) == ['icm_1.png', 'icm_2.png']
    # the hook on a missing video warned, and training went on
    assert 'missing.mp4' in hooked.log and 'ICMHook' in hooked.log
    assert not osp.exists(osp.join(osp.dirname(hooked.work_dir),
                                   'missing_icm'))
    a = load_tensors_only(hooked.checkpoint)['state_dict']
    b = load_tensors_only(plain.checkpoint)['state_dict']
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_cli_png_without_checkpoint(tmp_path, cfg):
    out = tmp_path / 'sub' / 'icm.png'
    proc = run_tool('tools/visualize_icm.py', cfg.filename, 'none',
                    osp.join(VIDEOS, 'test.mp4'), '--out', out, '--size', '64')
    assert 'WARNING: no checkpoint' in proc.stdout
    with Image.open(out) as im:
        # title + 4 rows of 112-px tiles; label + 16 instants (α = 2)
        assert im.format == 'PNG'
        assert im.size == (110 + 16 * 112, 26 + 4 * 112)


@pytest.mark.slow
def test_cli_gif_with_trained_checkpoint(tmp_path, trained):
    out = tmp_path / 'icm.gif'
    proc = run_tool('tools/visualize_icm.py',
                    trained['hooked'].config, trained['hooked'].checkpoint,
                    osp.join(VIDEOS, 'test.avi'), '--out', out, '--depth',
                    'all', '--tile', '64')
    assert 'no checkpoint' not in proc.stdout
    with Image.open(out) as im:
        assert im.format == 'GIF' and im.is_animated
        assert im.n_frames == 16
        assert im.size == (2 * 64, 26 + 3 * 64)


@pytest.mark.slow
def test_cli_errors_name_the_file(tmp_path, cfg):
    tool = load_tool('visualize_icm')
    video = osp.join(VIDEOS, 'test.mp4')
    out = str(tmp_path / 'x.png')
    bad_video = tmp_path / 'broken.mp4'
    bad_video.write_text('not a video')
    random_file = tmp_path / 'random.pth'
    random_file.write_bytes(np.random.default_rng(0).bytes(4096))
    other = tmp_path / 'other.pth'
    torch.save({'state_dict': {'fc.weight': torch.zeros(2, 2)}}, other)
    cases = [('none', bad_video, 'cannot be read as a video'),
             (random_file, video, 'not a VTHCL checkpoint'),
             (other, video, 'not a VTHCL checkpoint')]
    for checkpoint, source, why in cases:
        with pytest.raises(SystemExit) as e:
            tool.main(
                [cfg.filename,
                 str(checkpoint),
                 str(source), '--out', out])
        # a message as exit code: printed to stderr, exit status 1
        message = e.value.code
        assert isinstance(message, str)
        named = source if checkpoint == 'none' else checkpoint
        assert str(named) in message and why in message
    assert not osp.exists(out)
