"""Hierarchical contrastive head and memory bank vs explicit references."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmvthcl.models import HierarchicalContrastiveHead, HierarchicalMemoryBank
from mmvthcl.models.heads.hierarchical_contrastive_head import (
    info_nce, mean_pairwise_cosine)
from mmvthcl.models.memories.hierarchical_memory_bank import (
    last_copy, last_occurrence)

DEPTHS = ('res3', 'res4', 'res5')


def make_head(n=50, k=7, per_sample=False, weights=(1.0, 0.5, 2.0), t=0.2,
              momentum=0.5, together=None):
    torch.manual_seed(0)
    return HierarchicalContrastiveHead(
        in_channels=(8, 16, 32), depths=DEPTHS, loss_weights=weights,
        feat_dim=6, temperature=t, num_negatives=k,
        per_sample_negatives=per_sample, read_banks_together=together,
        memory=dict(type='HierarchicalMemoryBank', num_samples=n,
                    momentum=momentum))


def unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def reference_nce(q, bank, index, negs, t, exclude_own_row=True):
    """-log softmax of the positive, one query at a time, in float64 and
    differentiable in ``q``; a query's own row drawn among its negatives is
    not scored, or, with ``exclude_own_row=False``, scored as a negative
    too."""
    q, bank = q.double(), bank.double()
    per_query = []
    for i in range(q.shape[0]):
        own = int(index[i])
        drawn = [j for j in (negs if negs.dim() == 1 else negs[i]).tolist()
                 if j != own or not exclude_own_row]
        scores = bank[[own] + drawn] @ q[i] / t
        per_query.append(torch.logsumexp(scores, 0) - scores[0])
    return torch.stack(per_query).mean()


@pytest.mark.parametrize('together', [False, True])
@pytest.mark.parametrize('per_sample', [False, True])
@pytest.mark.parametrize('n,k,exclude', [(50, 7, True), (4, 4, True),
                                         (4, 4, False)])
def test_loss_equals_explicit_reference(per_sample, together, n, k, exclude):
    """With 4 rows, queries draw their own row among their negatives; the
    reference does not score it, or scores it twice if asked to."""
    head = make_head(n=n, k=k, per_sample=per_sample, together=together)
    head.exclude_own_row = exclude
    mem = head.memory
    banks = {key: mem.bank(*key).clone() for key in mem.keys}
    index = torch.tensor([3, 17, 42, 8]) % n
    slow = {d: unit(4, 6) for d in DEPTHS}
    fast = {d: unit(4, 6) for d in DEPTHS}
    # the negatives the head will draw this step (seeded by the step count)
    shape = (4, k) if per_sample else (k, )
    negs = mem.sample_negatives(shape)
    # (B, K) with per-sample negatives, (K, ) broadcast to (B, K) if shared
    own = negs == index[:, None]
    assert own.any() == (n == 4)
    losses = head.loss(slow, fast, index)
    for d, w in zip(DEPTHS, (1.0, 0.5, 2.0)):
        ref = 0.0
        for q, other in ((slow[d], 'fast'), (fast[d], 'slow')):
            ref += float(reference_nce(q, banks[(d, other)], index, negs,
                                       0.2, exclude))
        assert losses[f'loss_{d}'].item() == pytest.approx(w * ref, rel=1e-5)
        assert 0.0 <= losses[f'acc_{d}'].item() <= 1.0
        # the collapse monitor reads the slow embeddings
        assert losses[f'cos_{d}'].item() == pytest.approx(
            float(mean_pairwise_cosine(slow[d])), abs=1e-6)
        assert losses[f'cos_{d}'].item() != pytest.approx(
            float(mean_pairwise_cosine(fast[d])), abs=1e-3)


@pytest.mark.parametrize('per_sample', [False, True])
def test_fused_gradient_equals_autograd_through_the_logits(per_sample):
    """Bank rows take the fused InfoNCE (gradient computed in the forward
    pass); the loss, accuracy and query gradient of every group, scaled by
    its own upstream gradient, equal plain autograd through cross-entropy in
    float64 over the negatives not excluded, one group at a time."""
    torch.manual_seed(1)
    q = unit(3, 5, 6).requires_grad_()
    pos = unit(3, 5, 6)
    negs = unit(3, 5, 9, 6) if per_sample else unit(3, 9, 6)
    exclude = torch.rand(5, 9) < 0.3
    assert exclude.any()
    loss, acc = info_nce(q, pos, negs, 0.1, exclude)
    assert loss.shape == acc.shape == (3, )
    upstream = torch.tensor([3.0, 0.5, -1.0])
    (upstream * loss).sum().backward()

    for g in range(3):
        q64 = q[g].detach().double().requires_grad_()
        n64 = negs[g].double()
        l_neg = (torch.einsum('bd,bkd->bk', q64, n64) if per_sample
                 else q64 @ n64.t())
        l_neg = torch.where(exclude, -math.inf, l_neg)
        logits = torch.cat(
            [(q64 * pos[g].double()).sum(1, keepdim=True), l_neg], dim=1) / 0.1
        ref = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
        (upstream[g].double() * ref).backward()
        assert loss[g].item() == pytest.approx(ref.item(), rel=1e-5)
        assert acc[g].item() == pytest.approx(
            (logits.argmax(1) == 0).double().mean().item())
        torch.testing.assert_close(q.grad[g].double(), q64.grad, rtol=1e-5,
                                   atol=1e-6)


def test_autograd_form_equals_the_fused_one():
    """The form GPUs take for shared negatives (autograd through the
    logits, chosen when an input needs a gradient or on CUDA) gives the
    fused form's loss, accuracy and gradient."""
    torch.manual_seed(2)
    q = unit(6, 4, 6)
    pos, negs = unit(6, 4, 6), unit(6, 11, 6)
    exclude = torch.rand(4, 11) < 0.3
    out = {}
    for form in ('fused', 'autograd'):
        qf = q.clone().requires_grad_()
        p = pos.clone().requires_grad_(form == 'autograd')
        loss, acc = info_nce(qf, p, negs, 0.07, exclude)
        (loss * torch.arange(1.0, 7.0)).sum().backward()
        out[form] = (loss.detach(), acc, qf.grad)
    for a, b in zip(out['fused'], out['autograd']):
        # float32 rounding: gradients are up to 6 / (B·T) ≈ 21 here
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('per_sample', [False, True])
def test_both_forms_under_autocast(per_sample):
    """Under mixed precision (``--amp``; bfloat16 on this CPU) φ hands over
    low-precision queries while the bank rows stay float32. Both forms
    return float32 losses and a gradient of the query's dtype, within
    bfloat16's rounding of the float64 loss and gradient."""
    torch.manual_seed(3)
    q = unit(6, 4, 6)
    pos = unit(6, 4, 6)
    negs = unit(6, 4, 11, 6) if per_sample else unit(6, 11, 6)
    exclude = torch.rand(4, 11) < 0.3
    weights = torch.arange(1.0, 7.0)
    ref = {}
    q64 = q.double().requires_grad_()
    loss64, _ = info_nce(q64, pos.double().requires_grad_(), negs.double(),
                         0.07, exclude)
    (loss64 * weights.double()).sum().backward()
    for form in ('fused', 'autograd'):
        qb = q.bfloat16().requires_grad_()
        p = pos.clone().requires_grad_(form == 'autograd')
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss, acc = info_nce(qb, p, negs, 0.07, exclude)
        assert loss.dtype == torch.float32, form
        (loss * weights).sum().backward()
        assert qb.grad.dtype == torch.bfloat16, form
        torch.testing.assert_close(loss.double(), loss64.detach(),
                                   rtol=1e-2, atol=0, msg=form)
        ref[form] = qb.grad.double()
        # gradients reach 6 / (B·T) ≈ 21; bfloat16 keeps 3 digits
        torch.testing.assert_close(ref[form], q64.grad, rtol=0.05,
                                   atol=0.1, msg=form)


@pytest.mark.parametrize('per_sample', [False, True])
def test_banks_read_together_or_one_by_one_agree(per_sample):
    """All six losses in one batch of operations (GPU default) and one bank
    at a time (CPU default) give the same losses, logs, gradients and banks
    over several steps."""
    heads = [make_head(per_sample=per_sample, together=t)
             for t in (False, True)]
    g = torch.Generator().manual_seed(3)
    for step in range(3):
        index = torch.randperm(50, generator=g)[:4]
        emb = F.normalize(torch.randn(2, len(DEPTHS), 4, 6, generator=g),
                          dim=-1)
        results = []
        for head in heads:
            slow = {d: emb[0, i].clone().requires_grad_()
                    for i, d in enumerate(DEPTHS)}
            fast = {d: emb[1, i].clone().requires_grad_()
                    for i, d in enumerate(DEPTHS)}
            losses = head.loss(slow, fast, index)
            sum(v for k, v in losses.items() if k.startswith('loss')) \
                .backward()
            results.append((losses, [slow[d].grad for d in DEPTHS] +
                            [fast[d].grad for d in DEPTHS]))
        (la, ga), (lb, gb) = results
        assert la.keys() == lb.keys()
        for key in la:
            torch.testing.assert_close(la[key], lb[key], rtol=1e-5,
                                       atol=1e-6)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for key in heads[0].memory.keys:
        torch.testing.assert_close(heads[0].memory.bank(*key),
                                   heads[1].memory.bank(*key))


def test_unit_rows_equals_f_normalize_values_and_gradients():
    """φ's L2 normalisation (closed-form backward) against autograd through
    F.normalize, on ordinary rows, a zero row and a row under eps."""
    from mmvthcl.models.heads.hierarchical_contrastive_head import unit_rows
    torch.manual_seed(4)
    x = torch.randn(5, 3, 7, dtype=torch.float64)
    x[0, 1] = 0
    x[2, 0] = 1e-13  # its norm is clamped to eps
    upstream = torch.randn_like(x)
    grads = []
    for fn in (unit_rows, lambda v: F.normalize(v, dim=-1)):
        v = x.clone().requires_grad_()
        y = fn(v)
        (y * upstream).sum().backward()
        grads.append((y.detach(), v.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert torch.autograd.gradcheck(unit_rows, (torch.randn(
        4, 6, dtype=torch.float64, requires_grad=True), ))


def reference_query_grads(slow, fast, banks, index, negs, t, weights):
    """Gradients of the weighted symmetric loss with respect to every
    query, by float64 autograd through :func:`reference_nce`."""
    grads = {}
    for w, d in zip(weights, DEPTHS):
        for tempo, queries, other in (('slow', slow, 'fast'),
                                      ('fast', fast, 'slow')):
            q = queries[d].detach().double().requires_grad_()
            (w * reference_nce(q, banks[d, other], index, negs, t)).backward()
            grads[d, tempo] = q.grad
    return grads


@pytest.mark.parametrize('per_sample', [False, True])
def test_gradients_reach_the_queries_only(per_sample):
    """The query gradients (computed in the forward pass by the fused
    InfoNCE, from bank rows) are those of float64 autograd through the
    loss written out, weights included; the banks get none."""
    head = make_head(per_sample=per_sample)
    mem = head.memory
    banks = {key: mem.bank(*key).clone() for key in mem.keys}
    index = torch.tensor([0, 1, 2, 3])
    # the step's negatives, drawn from (seed, step) as the head will
    negs = mem.sample_negatives((4, 7) if per_sample else (7, ))
    slow = {d: unit(4, 6).requires_grad_() for d in DEPTHS}
    fast = {d: unit(4, 6).requires_grad_() for d in DEPTHS}
    losses = head.loss(slow, fast, index)
    sum(v for k, v in losses.items() if k.startswith('loss')).backward()
    want = reference_query_grads(slow, fast, banks, index, negs,
                                 head.temperature, head.loss_weights)
    for d in DEPTHS:
        for tempo, queries in (('slow', slow), ('fast', fast)):
            torch.testing.assert_close(queries[d].grad,
                                       want[d, tempo].float(), rtol=1e-5,
                                       atol=1e-6, msg=f'{d} {tempo}')
    assert not any(b.requires_grad or b.grad is not None
                   for b in mem.buffers())


def test_bank_update_equals_the_formula():
    head = make_head(momentum=0.3)
    mem = head.memory
    before = {key: mem.bank(*key).clone() for key in mem.keys}
    index = torch.tensor([5, 9, 30])
    slow = {d: unit(3, 6) for d in DEPTHS}
    fast = {d: unit(3, 6) for d in DEPTHS}
    head.loss(slow, fast, index)
    for (d, t), old in before.items():
        new = mem.bank(d, t)
        v = (slow if t == 'slow' else fast)[d]
        for row, i in enumerate(index.tolist()):
            mixed = [0.3 * float(a) + 0.7 * float(b)
                     for a, b in zip(old[i], v[row])]
            norm = math.sqrt(sum(x * x for x in mixed))
            expected = torch.tensor([x / norm for x in mixed])
            assert torch.allclose(new[i], expected, atol=1e-6)
        untouched = [i for i in range(50) if i not in index.tolist()]
        assert torch.equal(new[untouched], old[untouched])
    assert int(mem.num_updates) == 1


def test_duplicate_indices_keep_the_last_copy():
    idx = torch.tensor([4, 2, 4, 7, 2])
    uniq, last = last_occurrence(idx)
    assert uniq.tolist() == [2, 4, 7] and last.tolist() == [4, 2, 3]
    mem = HierarchicalMemoryBank(depths=('res5', ), num_samples=10,
                                 feat_dim=4, momentum=0.0)
    feats = unit(3, 4)
    mem.update(torch.tensor([1, 1, 2]), {('res5', 'slow'): feats,
                                         ('res5', 'fast'): feats})
    assert torch.allclose(mem.bank('res5', 'slow')[1], feats[1])


def test_last_copy_equals_an_explicit_search():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 64):
        idx = torch.randint(0, max(1, n // 2), (n, ), generator=g)
        want = [max(j for j in range(n) if idx[j] == idx[i])
                for i in range(n)]
        assert last_copy(idx).tolist() == want


def test_steps_follow_updates_writes_and_checkpoints():
    mem = HierarchicalMemoryBank(depths=('res5', ), num_samples=10,
                                 feat_dim=4)
    feats = unit(2, 4)
    for _ in range(3):
        mem.update(torch.tensor([0, 1]), {('res5', 'slow'): feats,
                                          ('res5', 'fast'): feats})
    assert mem.steps_taken() == int(mem.num_updates) == 3
    mem.num_updates.fill_(7)  # a write outside update()
    assert mem.steps_taken() == 7
    other = HierarchicalMemoryBank(depths=('res5', ), num_samples=10,
                                   feat_dim=4)
    assert other.steps_taken() == 0
    other.load_state_dict(mem.state_dict())
    assert other.steps_taken() == 7
    assert torch.equal(other.sample_negatives((5, )),
                       mem.sample_negatives((5, )))


def test_banks_start_as_random_unit_vectors_reproducibly():
    a = HierarchicalMemoryBank(num_samples=9000, feat_dim=16)
    b = HierarchicalMemoryBank(num_samples=9000, feat_dim=16)
    for key in a.keys:
        bank = a.bank(*key)
        assert bank.shape == (9000, 16)
        assert torch.allclose(bank.norm(dim=1), torch.ones(9000), atol=1e-5)
        assert torch.equal(bank, b.bank(*key))
    # every bank differs, and any row slice can be generated on its own
    assert not torch.equal(a.bank('res3', 'slow'), a.bank('res3', 'fast'))
    assert torch.equal(a.initial_rows(2, 4000, 8500),
                       a.bank(*a.keys[2])[4000:8500])


def test_negatives_depend_on_the_step_only():
    a = HierarchicalMemoryBank(num_samples=100, seed=3)
    b = HierarchicalMemoryBank(num_samples=100, seed=3)
    n1 = a.sample_negatives((16, ))
    assert torch.equal(n1, b.sample_negatives((16, )))
    a.num_updates += 1
    assert not torch.equal(n1, a.sample_negatives((16, )))
    assert a.sample_negatives((2, 5)).shape == (2, 5)


def test_zero_features_give_finite_loss():
    head = make_head()
    zeros = {d: torch.zeros(2, 6) for d in DEPTHS}
    losses = head.loss(zeros, zeros, torch.tensor([0, 1]))
    assert all(torch.isfinite(v) for v in losses.values())
    for key in head.memory.keys:
        assert torch.isfinite(head.memory.bank(*key)).all()


def test_nan_loss_names_the_depth():
    head = make_head()
    slow = {d: unit(2, 6) for d in DEPTHS}
    slow['res4'] = torch.full((2, 6), float('nan'))
    with pytest.raises(FloatingPointError, match='loss_res4'):
        head.loss(slow, {d: unit(2, 6) for d in DEPTHS}, torch.tensor([0, 1]))


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_negatives=60), 'num_negatives=60 is larger than the memory'),
    (dict(loss_weights=(1.0, 1.0)), 'loss_weights has 2 entries'),
    (dict(temperature=0.0), 'temperature must be > 0'),
    (dict(memory=dict(type='HierarchicalMemoryBank', num_samples=50,
                      feat_dim=9)), 'memory.feat_dim=9 conflicts'),
    (dict(per_sample_negatives=True,
          memory=dict(type='HierarchicalMemoryBank', sharded=True)),
     'not supported with a sharded memory'),
    (dict(compile=True,
          memory=dict(type='HierarchicalMemoryBank', sharded=True)),
     'compile is not supported with a sharded memory'),
    (dict(compile=True, norm_cfg=dict(type='SyncBN')),
     'compile is not supported with norm_cfg=SyncBN'),
])
def test_bad_head_configs_fail_at_build_time(kwargs, match):
    cfg = dict(in_channels=(8, 16, 32), feat_dim=6, num_negatives=7,
               memory=dict(type='HierarchicalMemoryBank', num_samples=50))
    cfg.update(kwargs)
    with pytest.raises(ValueError, match=match):
        HierarchicalContrastiveHead(**cfg)


def test_unsized_memory_says_how_to_size_it():
    mem = HierarchicalMemoryBank()
    with pytest.raises(RuntimeError, match='MemoryBankHook'):
        mem.sample_negatives((4, ))


def test_checkpoint_size_adopted_unless_fixed():
    trained = HierarchicalMemoryBank(num_samples=12, feat_dim=4, seed=1)
    state = trained.state_dict()
    fresh = HierarchicalMemoryBank(feat_dim=4)  # size left open: adopt
    fresh.load_state_dict(state)
    assert fresh.num_samples == 12
    assert torch.equal(fresh.bank('res4', 'fast'), trained.bank('res4',
                                                                'fast'))
    fixed = HierarchicalMemoryBank(num_samples=30, feat_dim=4)
    with pytest.raises(ValueError, match='has 12 rows but this run expects'):
        fixed.load_state_dict(state)


@pytest.mark.parametrize('n, world', [(10, 4), (6, 2), (3, 4), (7, 7)])
def test_shards_tile_the_bank_and_hold_its_rows(monkeypatch, n, world):
    """Sharded over W ranks, the ranks' rows [lo, hi) cover the N rows
    once each, in order (a rank may hold none when N < W), and each rank
    starts with exactly its slice of the replicated bank's initial rows."""
    import mmvthcl.models.memories.hierarchical_memory_bank as hmb
    whole = HierarchicalMemoryBank(depths=DEPTHS, num_samples=n)
    ranges, slices = [], {key: [] for key in whole.keys}
    for rank in range(world):
        monkeypatch.setattr(hmb, 'get_dist_info', lambda r=rank: (r, world))
        shard = HierarchicalMemoryBank(depths=DEPTHS, num_samples=n,
                                       sharded=True)
        lo, hi = shard.shard_range()
        ranges.append((lo, hi))
        for key in whole.keys:
            assert shard.bank(*key).shape == (hi - lo, whole.feat_dim)
            slices[key].append(shard.bank(*key))
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(lo <= hi for lo, hi in ranges)
    for key in whole.keys:
        assert torch.equal(torch.cat(slices[key]), whole.bank(*key)), key


def test_mean_pairwise_cosine_equals_explicit_loop():
    emb = unit(5, 6)
    pairs = [float(emb[i] @ emb[j]) for i in range(5) for j in range(5)
             if i != j]
    assert float(mean_pairwise_cosine(emb)) == pytest.approx(
        sum(pairs) / len(pairs), abs=1e-6)
    same = F.normalize(torch.ones(4, 6), dim=1)
    assert float(mean_pairwise_cosine(same)) == pytest.approx(1.0)


@pytest.mark.parametrize('out_norm', [None, dict(type='BN1d', affine=False)])
def test_dense_projection_matches_the_pooled_one_per_location(out_norm):
    from mmvthcl.models.heads.hierarchical_contrastive_head import Projection
    torch.manual_seed(0)
    phi = Projection(8, 8, 6, out_norm_cfg=out_norm)
    phi.train()
    for _ in range(3):  # move the running statistics away from 0 / 1
        phi(torch.randn(16, 8, 2, 3, 3) * 3 + 1)
    phi.eval()
    x = torch.randn(2, 8, 2, 3, 3)
    dense = phi.dense(x)
    assert dense.shape == (2, 6, 2, 3, 3)
    # a location alone, as a 1x1x1 map, gives the same unit vector
    one = phi(x[:, :, 1:2, 2:3, 0:1])
    assert torch.allclose(dense[:, :, 1, 2, 0], one, atol=1e-6)
    if out_norm is not None:
        assert phi.out_bn.weight is None  # centring only, no affine
    # in train mode too: the running statistics, left as they are (batch
    # statistics would mix the locations and move the running ones)
    stats = {k: v.clone() for k, v in phi.state_dict().items()}
    phi.train()
    assert torch.equal(phi.dense(x), dense)
    for k, v in phi.state_dict().items():
        assert torch.equal(v, stats[k]), k


def test_centred_embeddings_keep_the_batch_spread():
    head = HierarchicalContrastiveHead(
        in_channels=(8, 16, 32), feat_dim=6, num_negatives=7,
        out_norm_cfg=dict(type='BN1d', affine=False),
        memory=dict(type='HierarchicalMemoryBank', num_samples=50))
    feats = [torch.rand(8, c, 1, 2, 2) + 5 for c in (8, 16, 32)]  # biased
    emb = head.project(feats, 'slow')
    losses = head.loss(emb, head.project(feats, 'fast'), torch.arange(8))
    for d in DEPTHS:
        assert abs(float(losses[f'cos_{d}'])) < 0.3


def test_compile_option_is_a_bool_or_torch_compile_options():
    cfg = dict(in_channels=(8, 16, 32), feat_dim=6, num_negatives=7,
               memory=dict(type='HierarchicalMemoryBank', num_samples=50))
    with pytest.raises(TypeError, match='head.compile must be a bool'):
        HierarchicalContrastiveHead(compile='yes', **cfg)
    head = HierarchicalContrastiveHead(compile=dict(mode='max-autotune'),
                                       **cfg)
    assert head.compile_cfg == dict(fullgraph=True, dynamic=False,
                                    mode='max-autotune')
    assert HierarchicalContrastiveHead(**cfg).compile_cfg is None


@pytest.mark.slow
def test_compiled_head_trains_like_the_eager_one():
    """``compile=True``: φ and the losses as one graph (no break:
    ``fullgraph``), the row update as another; three training steps give
    the eager head's losses, gradients, banks, step count and BN statistics
    up to rounding, and a non-finite step still raises before the banks."""
    import copy
    torch.manual_seed(0)
    cfg = dict(in_channels=(8, 16, 32), feat_dim=6, num_negatives=16,
               temperature=0.2, loss_weights=(1.0, 0.5, 2.0),
               memory=dict(type='HierarchicalMemoryBank', num_samples=40))
    from torch._dynamo.utils import counters
    graphs = counters['stats']['unique_graphs']
    eager = HierarchicalContrastiveHead(**cfg)
    compiled = HierarchicalContrastiveHead(compile=True, **cfg)
    compiled.load_state_dict(eager.state_dict())
    shapes = [(8, 2, 4, 4), (16, 2, 2, 2), (32, 2, 1, 1)]
    g = torch.Generator().manual_seed(1)
    for step in range(3):
        # a repeated index: the compiled update keeps the last copy too
        index = torch.tensor([3, 17, 3, 8, 30, 1]) + step
        feats = {t: [torch.randn(6, *s, generator=g) for s in shapes]
                 for t in ('slow', 'fast')}
        grads = []
        for head in (eager, compiled):
            x = {t: [f.clone().requires_grad_() for f in v]
                 for t, v in feats.items()}
            losses = head.loss_from_features(x['slow'], x['fast'], index)
            sum(v for k, v in losses.items() if k.startswith('loss')
                ).backward()
            grads.append((losses, [f.grad for f in x['slow'] + x['fast']]))
        (l_e, g_e), (l_c, g_c) = grads
        assert l_e.keys() == l_c.keys()
        for k in l_e:
            assert torch.allclose(l_e[k], l_c[k], atol=1e-5), (step, k)
        for a, b in zip(g_e, g_c):
            assert torch.allclose(a, b, atol=1e-6), step
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name
    state_e, state_c = eager.state_dict(), compiled.state_dict()
    assert state_e.keys() == state_c.keys()  # no compiler's prefix
    for k in state_e:
        assert torch.allclose(state_e[k].double(), state_c[k].double(),
                              atol=1e-6), k
    assert int(compiled.memory.num_updates) == 3
    assert compiled.memory.steps_taken() == 3
    # dynamo made the two graphs, once: the steps did not recompile
    assert set(compiled._compiled) == {'contrast', 'write_rows'}
    assert counters['stats']['unique_graphs'] - graphs == 2
    # a copy does not share the original's compiled functions
    assert not copy.deepcopy(compiled)._compiled
    banks = {k: v.clone() for k, v in state_c.items() if 'bank' in k}
    feats['slow'][1] = torch.full_like(feats['slow'][1], float('nan'))
    with pytest.raises(FloatingPointError, match='loss_res4'):
        compiled.loss_from_features(feats['slow'], feats['fast'], index)
    for k, v in banks.items():
        assert torch.equal(compiled.state_dict()[k], v), k
    assert compiled.memory.steps_taken() == 3
