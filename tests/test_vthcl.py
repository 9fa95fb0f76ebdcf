"""The VTHCL model: wiring, modes, options and build-time validation."""
import copy
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from mmaction.registry import MODELS
from mmaction.structures import ActionDataSample


def vthcl_cfg(**overrides):
    cfg = dict(
        type='VTHCL',
        backbone=dict(type='VTHCLResNet3d', depth=18, base_channels=8),
        head=dict(
            type='HierarchicalContrastiveHead',
            num_negatives=5,
            memory=dict(type='HierarchicalMemoryBank', num_samples=20)))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def batch(b=2, t=4, size=32, idx=(3, 11), labels=None):
    g = torch.Generator().manual_seed(0)
    samples = []
    for i, j in enumerate(idx):
        ds = ActionDataSample(sample_idx=j)
        if labels is not None:
            ds.set_gt_label(labels[i])
        samples.append(ds)
    return dict(
        inputs=dict(
            imgs=[torch.randint(0, 255, (1, 3, t, size, size), generator=g,
                                dtype=torch.uint8) for _ in range(b)],
            imgs_fast=[torch.randint(0, 255, (1, 3, 2 * t, size, size),
                                     generator=g, dtype=torch.uint8)
                       for _ in range(b)]),
        data_samples=samples)


def build(**overrides):
    torch.manual_seed(0)
    model = MODELS.build(vthcl_cfg(**overrides))
    model.init_weights()
    return model


def own_embeddings(model, data):
    """Each tempo's embeddings computed apart from ``model.loss``: the
    slow clip through ``backbone``, the fast one through ``fast_backbone``,
    each depth through that tempo's φ, on a copy (BN running statistics of
    the model stay as they are; outputs use the batch statistics either
    way)."""
    twin = copy.deepcopy(model)
    emb = {}
    with torch.no_grad():
        for tempo, key, encoder in (('slow', 'imgs', twin.backbone),
                                    ('fast', 'imgs_fast',
                                     twin.fast_backbone)):
            feats = encoder(data['inputs'][key].flatten(0, 1))
            for depth, x in zip(twin.depths, feats):
                emb[depth, tempo] = twin.head.projections[
                    f'{depth}_{tempo}'](x)
    return emb


def test_loss_mode_gives_per_depth_losses_and_updates_banks():
    model = build()
    data = model.data_preprocessor(batch(), True)
    mem = model.head.memory
    before = {k: mem.bank(*k).clone() for k in mem.keys}
    emb = own_embeddings(model, data)
    losses = model(**data, mode='loss')
    assert {k for k in losses if k.startswith('loss')} == {
        'loss_res3', 'loss_res4', 'loss_res5'}
    assert all(torch.isfinite(v) for v in losses.values())
    index = [3, 11]
    beta = mem.momentum
    for key, old in before.items():
        new = mem.bank(*key)
        changed = (old != new).any(dim=1).nonzero().flatten()
        assert changed.tolist() == index
        # the memory's rule, m ← normalise(β·m + (1 − β)·v), with v the
        # embedding of this bank's own tempo and depth: a bank fed the
        # other tempo's (or depth's) embedding fails here
        want = F.normalize(beta * old[index] + (1 - beta) * emb[key], dim=1)
        torch.testing.assert_close(new[index], want, rtol=1e-5, atol=1e-6)


def test_train_step_runs_and_optimises():
    """One step of plain SGD (no momentum, no weight decay): the logged
    total is the sum of the loss terms, and every parameter moves by −lr
    times its gradient, computed separately on a copy of the model taken
    before the step (same weights, same banks, so the same negatives)."""
    from mmengine.optim import OptimWrapper
    lr = 0.1
    model = build()
    twin = copy.deepcopy(model)
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=lr))
    group = optim.optimizer.param_groups[0]
    assert group['momentum'] == 0 and group['weight_decay'] == 0
    log_vars = model.train_step(batch(), optim)
    assert {'loss', 'loss_res3', 'loss_res4', 'loss_res5',
            'acc_res5'} <= set(log_vars)

    losses = twin(**twin.data_preprocessor(batch(), True), mode='loss')
    terms = [k for k in losses if k.startswith('loss')]
    assert sorted(terms) == ['loss_res3', 'loss_res4', 'loss_res5']
    total = sum(losses[k] for k in terms)
    total.backward()
    logged = {k: float(torch.as_tensor(v).detach())
              for k, v in log_vars.items()}
    assert logged['loss'] == pytest.approx(sum(logged[k] for k in terms),
                                           rel=1e-6)
    assert logged['loss'] == pytest.approx(float(total.detach()), rel=1e-6)
    after = dict(model.named_parameters())
    moved = 0
    for name, p in twin.named_parameters():
        assert p.grad is not None, name  # every depth's φ and encoder
        want = p.detach() - lr * p.grad
        torch.testing.assert_close(after[name].detach(), want, rtol=1e-5,
                                   atol=1e-7, msg=name)
        moved += not torch.equal(after[name], p)
    assert moved > 0
    # the banks took the step's embeddings once, as the copy's did
    mem, twin_mem = model.head.memory, twin.head.memory
    for key in mem.keys:
        assert torch.equal(mem.bank(*key), twin_mem.bank(*key)), key


@pytest.mark.filterwarnings('ignore:.*GradScaler.*:UserWarning')
def test_train_step_under_mixed_precision(monkeypatch):
    """``tools/train.py --amp`` swaps in MMEngine's ``AmpOptimWrapper``,
    which runs the data preprocessor and the forward pass under autocast
    (float16 on a GPU; on this CPU, bfloat16, with fewer mantissa bits).
    The step keeps float32 losses and banks, and stays close to a float32
    step from the same model: its losses, the direction of its parameter
    update and the bank rows it writes."""
    import mmengine.optim.optimizer.amp_optimizer_wrapper as amp_wrapper
    from mmengine.optim import AmpOptimWrapper, OptimWrapper

    # the wrapper refuses to be built without a GPU; its loss scaler then
    # disables itself (bfloat16 needs none)
    monkeypatch.setattr(amp_wrapper, 'is_cuda_available', lambda: True)
    index = [3, 11, 5, 7]
    runs = {}
    for amp in (False, True):
        model = build()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        optim = AmpOptimWrapper(optimizer=sgd, dtype='bfloat16') if amp \
            else OptimWrapper(sgd)
        log_vars = model.train_step(batch(b=4, idx=index), optim)
        mem = model.head.memory
        runs[amp] = dict(
            logged={k: v for k, v in log_vars.items()
                    if k.startswith(('loss', 'cos'))},
            update={n: p.detach() - before[n]
                    for n, p in model.named_parameters()},
            banks={k: mem.bank(*k)[index] for k in mem.keys},
            dtypes={mem.bank(*k).dtype for k in mem.keys})
    fp32, amp = runs[False], runs[True]
    assert amp['dtypes'] == {torch.float32}
    assert set(amp['logged']) == {'loss'} | {
        f'{k}_{d}' for k in ('loss', 'cos') for d in ('res3', 'res4', 'res5')}
    for k, v in amp['logged'].items():
        assert v.dtype == torch.float32, k
        # 8 mantissa bits: a relative error of about 0.4 % per rounding
        # (cos_* can be near 0, hence an absolute bound too)
        assert float(v.detach()) == pytest.approx(
            float(fp32['logged'][k].detach()), rel=2e-2, abs=1e-2)
    moved = {n for n, u in fp32['update'].items() if u.any()}
    # the same parameters move (a gradient lost in bfloat16 would not) ...
    assert {n for n, u in amp['update'].items() if u.any()} == moved
    assert any(n.startswith('head.') for n in moved)
    assert all(torch.isfinite(u).all() for u in amp['update'].values())
    # ... in nearly the same direction: bfloat16's rounding of this tiny
    # encoder's features, amplified by BN over 4 clips, moves single
    # gradients by tens of percent (keeping the head in float32 does not
    # change that), but not the update as a whole
    flat = {k: torch.cat([u.flatten() for u in run['update'].values()])
            for k, run in runs.items()}
    assert F.cosine_similarity(flat[True], flat[False], dim=0) > 0.9
    for key, rows in amp['banks'].items():
        torch.testing.assert_close(
            rows.norm(dim=1), torch.ones(len(index)), rtol=0, atol=1e-5)
        torch.testing.assert_close(rows, fp32['banks'][key], rtol=0,
                                   atol=2e-2, msg=str(key))


def test_load_vthcl_weights_loads_every_weight_but_the_banks(tmp_path):
    """``load_vthcl_weights`` (eval_knn, visualize_icm) fills a model built
    from another seed with the checkpoint's encoders, projections and BN
    statistics, key for key, and leaves its memory (banks, num_updates)
    alone, as the function documents; a checkpoint missing a weight is
    refused."""
    from mmvthcl.utils import load_vthcl_weights
    state = build().state_dict()
    # every tensor of the file made unlike any freshly built model's (BN
    # weights start at 1 and statistics at 0/1 whatever the seed), so that
    # an equality below cannot hold without loading
    g = torch.Generator().manual_seed(7)
    for k, v in state.items():
        if v.is_floating_point():
            state[k] = v + torch.rand(v.shape, generator=g) + 0.5
        else:
            state[k] = v + 5  # num_batches_tracked, num_updates
    path = tmp_path / 'iter_2.pth'
    # a training checkpoint's meta holds objects a weights-only load
    # refuses: the tensors-only fallback reads it
    torch.save({'state_dict': state, 'meta': {'hub': Fraction(1, 3)}},
               str(path))
    torch.manual_seed(1)
    model = MODELS.build(vthcl_cfg())
    model.init_weights()
    own = {k: v.clone() for k, v in model.state_dict().items()}
    assert own.keys() == state.keys()
    weights = [k for k in state if not k.startswith('head.memory.')]
    assert any(k.startswith('backbone.') for k in weights)
    assert any(k.startswith('fast_backbone.') for k in weights)
    assert any(k.startswith('head.projections.') for k in weights)
    assert not any(torch.equal(own[k], state[k]) for k in state)
    load_vthcl_weights(model, str(path))
    loaded = model.state_dict()
    for k in weights:
        assert loaded[k].dtype == state[k].dtype, k
        assert torch.equal(loaded[k], state[k]), k
    for k in state:
        if k.startswith('head.memory.'):  # skipped: the model's own
            assert torch.equal(loaded[k], own[k]), k
    del state['head.projections.res4_fast.fc2.weight']
    torch.save({'state_dict': state}, str(path))
    with pytest.raises(ValueError, match=r'iter_2.pth: does not match.*'
                       r'res4_fast\.fc2\.weight'):
        load_vthcl_weights(MODELS.build(vthcl_cfg()), str(path))


def test_labels_are_never_used():
    a, b = build(), build()
    la = a(**a.data_preprocessor(batch(labels=[0, 1]), True), mode='loss')
    lb = b(**b.data_preprocessor(batch(labels=[7, 3]), True), mode='loss')
    for k in la:
        assert torch.equal(la[k], lb[k])


def test_tensor_and_predict_modes_return_embeddings():
    model = build().eval()
    data = model.data_preprocessor(batch(), False)
    with torch.no_grad():
        out = model(**data, mode='tensor')
        assert set(out) == {f'{d}_{t}' for d in ('res3', 'res4', 'res5')
                            for t in ('slow', 'fast')}
        assert all(v.shape == (2, 128) for v in out.values())
        # a slow clip alone is enough (feature extraction, kNN)
        slow_only = model({'imgs': data['inputs']['imgs']}, mode='tensor')
        assert set(slow_only) == {'res3_slow', 'res4_slow', 'res5_slow'}
        assert torch.allclose(slow_only['res5_slow'], out['res5_slow'])
        preds = model(**data, mode='predict')
        assert torch.allclose(preds[1].res4_fast, out['res4_fast'][1])
        # each tempo through its own encoder and φ
        for tempo, key, encoder in (('slow', 'imgs', model.backbone),
                                    ('fast', 'imgs_fast',
                                     model.fast_backbone)):
            own = model.head.project(
                encoder(data['inputs'][key].flatten(0, 1)), tempo)
            for d, v in own.items():
                torch.testing.assert_close(out[f'{d}_{tempo}'], v,
                                           msg=f'{d}_{tempo}')


def test_separate_or_shared_encoders():
    sep = build()
    keys = set(sep.state_dict())
    assert any(k.startswith('fast_backbone.') for k in keys)
    assert not torch.equal(sep.backbone.conv1.conv.weight,
                           sep.fast_backbone.conv1.conv.weight)
    shared = build(share_encoder=True)
    assert shared.encoder('fast') is shared.backbone
    assert not any(k.startswith('fast_backbone.') for k in shared.state_dict())
    losses = shared(**shared.data_preprocessor(batch(), True), mode='loss')
    assert torch.isfinite(losses['loss_res5'])


def encoder_weights(model):
    return {k: v for k, v in model.state_dict().items()
            if k.startswith(('backbone.', 'fast_backbone.'))}


def test_encoders_start_from_the_seed_whatever_the_head():
    """An ablation of the head compares the same random encoders: heads
    that build other projections (and so draw other numbers from the global
    generator while the model is built) leave the encoders' initial weights
    alone; the seed decides them, and init_weights leaves the global
    generator where building left it."""
    full = encoder_weights(build())
    for head in (dict(depths=('res5', ), loss_weights=(1.0, )),
                 dict(depths=('res3', 'res4'), loss_weights=(1.0, 1.0)),
                 dict(feat_dim=32, hidden_channels=(64, 64, 64))):
        other = encoder_weights(build(head=head))
        assert other.keys() == full.keys()
        assert all(torch.equal(other[k], full[k]) for k in full), head
    torch.manual_seed(1)
    model = MODELS.build(vthcl_cfg())
    built = torch.get_rng_state()
    model.init_weights()
    assert torch.equal(torch.get_rng_state(), built)
    seed1 = encoder_weights(model)
    assert not torch.equal(seed1['backbone.conv1.conv.weight'],
                           full['backbone.conv1.conv.weight'])


def test_depth_subset_and_weights_follow_the_head():
    model = build(head=dict(depths=('res5', ), loss_weights=(2.0, )))
    assert model.backbone.out_indices == (3, )
    assert set(model.head.projections) == {'res5_slow', 'res5_fast'}
    losses = model(**model.data_preprocessor(batch(), True), mode='loss')
    assert [k for k in losses if k.startswith('loss')] == ['loss_res5']


@pytest.mark.parametrize('depths', [('res3', 'res4', 'res5'), ('res5', ),
                                    ('res3', 'res4'), ('res3', )])
def test_every_trainable_parameter_gets_a_gradient(depths):
    """What DDP needs without find_unused_parameters: with depths that stop
    before res5, the later stages are neither run nor trained, and their
    keys are still the stock backbone's."""
    model = build(head=dict(depths=depths, loss_weights=(1.0, ) * len(depths)))
    losses = model(**model.data_preprocessor(batch(), True), mode='loss')
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and p.grad is None]
    assert missing == []
    last = max(model.backbone.out_indices)
    for encoder in (model.backbone, model.fast_backbone):
        for i in range(last + 2, 5):
            assert not any(p.requires_grad for p in
                           getattr(encoder, f'layer{i}').parameters())
    stock = MODELS.build(dict(type='ResNet3dSlowOnly', depth=18,
                              base_channels=8, pretrained=None))
    assert model.backbone.state_dict().keys() == stock.state_dict().keys()


def test_ddp_never_touches_the_banks():
    model = build()
    assert sorted(model._ddp_params_and_buffers_to_ignore) == sorted(
        f'head.memory.bank_{d}_{t}' for d in ('res3', 'res4', 'res5')
        for t in ('slow', 'fast'))
    names = dict(model.named_buffers())
    assert all(n in names for n in model._ddp_params_and_buffers_to_ignore)


@pytest.mark.parametrize('overrides, error, match', [
    (dict(head=dict(depths=('res3', 'res6'))), ValueError,
     'unknown depth name'),
    (dict(backbone=dict(type='VTHCLResNet3d', depth=18, out_indices=(3, ))),
     ValueError, 'out_indices=\\(3,\\) disagrees with model.head.depths'),
    (dict(share_encoder=True,
          fast_backbone=dict(type='VTHCLResNet3d', depth=18)), ValueError,
     'remove model.fast_backbone'),
    (dict(share_encoder=True,
          backbone=dict(type='VTHCLResNet3d', depth=18, with_cp=True)),
     ValueError, 'set model.backbone.with_cp=False'),
    (dict(fast_backbone=dict(type='VTHCLResNet3d', depth=50,
                             base_channels=8)), ValueError,
     'same channels per depth'),
    (dict(head=dict(num_negatives=21)), ValueError,
     'num_negatives=21 is larger than the memory bank'),
])
def test_bad_configs_fail_at_build_time(overrides, error, match):
    with pytest.raises(error, match=match):
        MODELS.build(vthcl_cfg(**overrides))


def test_missing_dataset_index_is_explained():
    model = build()
    data = model.data_preprocessor(batch(), True)
    data['data_samples'] = [ActionDataSample() for _ in range(2)]
    with pytest.raises(KeyError, match="algorithm_keys=\\('sample_idx',\\)"):
        model(**data, mode='loss')


def test_a_training_batch_of_one_clip_names_the_fix():
    """φ's BatchNorm cannot train on one clip; the shipped configs drop a
    last partial batch, and a batch of one says what to set."""
    from mmengine.config import Config

    from .conftest import R18_CONFIG
    assert Config.fromfile(R18_CONFIG).train_dataloader.drop_last is True
    model = build()
    data = model.data_preprocessor(batch(b=1, idx=(3, )), True)
    with pytest.raises(ValueError, match='drop_last=True'):
        model(**data, mode='loss')
    # SyncBN normalises over every rank's clips: not refused
    sync = build(head=dict(norm_cfg=dict(type='SyncBN')))
    assert not sync._plain_batch_norm() and build()._plain_batch_norm()


def test_sample_index_outside_the_banks_names_the_key():
    model = build()
    data = model.data_preprocessor(batch(idx=(3, 20)), True)
    with pytest.raises(IndexError, match=r'sample_idx 20 is outside the '
                       r'memory banks \(20 rows, model.head.memory'):
        model(**data, mode='loss')


def test_predict_mode_unfolds_views():
    """Clips of V views are folded into the batch for the encoders; each
    sample gets back its own (V, D) embeddings."""
    model = build().eval()
    data = model.data_preprocessor(batch(), False)
    imgs = data['inputs']['imgs'][:, 0]  # (B, 1, C, T, H, W): one view
    views = torch.stack([imgs, imgs.flip(-1), imgs.flip(-2)], dim=1)
    with torch.no_grad():
        out = model(dict(imgs=views), [ActionDataSample() for _ in range(2)],
                    mode='predict')
        flat = model(dict(imgs=views.flatten(0, 1)), mode='tensor')
    for name, v in flat.items():
        assert out[0].get(name).shape == (3, v.shape[-1])
        for i in range(2):
            torch.testing.assert_close(out[i].get(name), v[3 * i:3 * i + 3])
