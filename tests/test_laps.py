"""Tests of vlrepro.laps: every invariant of spec §9, the patch contract (STYLE §4) and the bad-input errors."""
import math, random

import pytest
import torch
import torch.nn.functional as F

from vlrepro import laps, laps_retrieval
from vlrepro.laps_retrieval import sharded_similarity
from vlrepro.laps import (LAPSHead, LAPSModel, TokenAggregation, align_loss, image_salience, l2norm, laps_loss,
                          num_aggregated, num_final_tokens, num_kept, patch_word_similarity, ratio_loss, select_patches,
                          split_cls, text_relevance, word_mask)

torch.set_num_threads(1)


def feats(bv=3, bt=5, n=64, d=16, L=9, cls=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(bv, n + int(cls), d, generator=g)
    cap = torch.randn(bt, L, d, generator=g)
    lens = torch.randint(3, L + 1, (bt,), generator=g); lens[0] = L
    return img, cap, lens


def tiny_model(embed=64, seed=0):
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel
    torch.manual_seed(seed)
    v = ViTModel(ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=64, num_hidden_layers=1,
                           num_attention_heads=4, intermediate_size=64), add_pooling_layer=False)
    t = BertModel(BertConfig(vocab_size=40, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=40), add_pooling_layer=False)
    return LAPSModel(v, t, embed_size=embed).eval()


def batch(b=4, L=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(b, 3, 32, 32, generator=g)
    ids = torch.randint(5, 40, (b, L), generator=g); ids[:, 0] = 2; ids[1, 5:] = 0
    return px, ids


# ---------------------------------------------------------------- selection / aggregation
@pytest.mark.parametrize('n,rho,lam,k,nc,m,cls', [(196, .5, .4, 98, 39, 41, True), (49, .8, .6, 40, 23, 24, False),
                                                   (64, .5, .4, 32, 12, 14, True)])
def test_token_budgets(n, rho, lam, k, nc, m, cls):
    assert num_kept(n, rho) == k and num_aggregated(n, rho, lam) == nc and num_final_tokens(n, rho, lam, cls) == m


def test_mask_rows_and_ratio_loss():
    for n, rho, want in [(196, .5, 0.0), (49, .8, (40 / 49 - .8) ** 2)]:
        img, cap, lens = feats(n=n, cls=(n == 196), d=8)
        head = LAPSHead(8, n, rho, 0.4 if n == 196 else 0.6).train()
        S, D = head(img, cap, lens)
        assert D.shape == (5, 3, n) and set(D.sum(-1).unique().tolist()) == {float(num_kept(n, rho))}
        assert math.isclose(D.mean().item(), num_kept(n, rho) / n, rel_tol=1e-6)
        assert math.isclose(ratio_loss(D, rho).item(), want, abs_tol=1e-7)
    assert math.isclose((40 / 49 - .8) ** 2, 2.666e-4, rel_tol=1e-3)


def test_kept_dropped_partition_and_topk():
    P, s = torch.randn(4, 64, 8), torch.randn(4, 64)
    sel = select_patches(P, s, 32)
    for b in range(4):
        kept, drop = set(sel.keep_idx[b].tolist()), set(sel.drop_idx[b].tolist())
        assert kept.isdisjoint(drop) and kept | drop == set(range(64))
        assert kept == set(s[b].topk(32).indices.tolist())
        torch.testing.assert_close(sel.kept[b], P[b, sel.keep_idx[b]])


def test_fused_token_is_convex_combination():
    P, s = torch.randn(2, 64, 8), torch.randn(2, 64)
    sel = select_patches(P, s, 32)
    w = torch.softmax(s.gather(1, sel.drop_idx), 1)
    assert (w >= 0).all(); torch.testing.assert_close(w.sum(1), torch.ones(2))
    torch.testing.assert_close(sel.fused[:, 0], torch.einsum('bk,bkd->bd', w, P[torch.arange(2)[:, None], sel.drop_idx]))
    same = torch.randn(1, 1, 8).expand(2, 64, 8)
    torch.testing.assert_close(select_patches(same, s, 32).fused, same[:, :1])
    assert select_patches(P, s, 64).fused is None


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_aggregation_weights(dtype):
    agg = TokenAggregation(16, 12).to(dtype)
    x = torch.randn(3, 32, 16, dtype=dtype)
    w = agg.weights(x)
    assert w.shape == (3, 12, 32) and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 12, dtype=dtype))
    perm = torch.randperm(32)
    torch.testing.assert_close(agg(x[:, perm]), agg(x))
    one = torch.randn(3, 1, 16, dtype=dtype).expand(3, 32, 16)
    torch.testing.assert_close(agg(one), one[:, :1].expand(3, 12, 16))
    m = (torch.rand(3, 32) > .5).to(dtype); m[:, 0] = 1
    assert (agg.weights(x, m)[m[:, None].expand(3, 12, 32) == 0] == 0).all()
    assert (agg.weights(x, m, soft_mask=True)[m[:, None].expand(3, 12, 32) == 0] == 0).all()
    assert sorted(agg.state_dict()) == sorted(['weight.0.weight', 'weight.0.bias', 'weight.1.weight', 'weight.1.bias',
                                               'weight.3.weight', 'weight.3.bias', 'scale'])


def test_scale_never_increases_entropy():
    agg, x = TokenAggregation(16, 12), torch.randn(3, 32, 16)
    ent = []
    with torch.no_grad():
        for s in [0.25, 0.5, 1, 2, 4, 8, 16]:
            agg.scale.fill_(s); w = agg.weights(x); ent.append(-(w * w.clamp_min(1e-30).log()).sum(-1))
    for lo, hi in zip(ent, ent[1:]): assert (hi <= lo + 1e-5).all()


# ---------------------------------------------------------------- similarity
def test_similarity_shape_range_and_modes():
    img, cap, lens = feats()
    head = LAPSHead(16, 64).train()
    S, D = head(img, cap, lens)
    assert S.shape == (3, 5) and ((S >= -0.2) & (S <= 2)).all()
    head.eval(); torch.testing.assert_close(head(img, cap, lens), S)   # train and eval give identical S


def test_similarity_entries_depend_only_on_the_pair():
    img, cap, lens = feats(bv=7, bt=11)
    head = LAPSHead(16, 64).eval()
    S = head(img, cap, lens)
    torch.testing.assert_close(head(img[2:5], cap[4:9], lens[4:9]), S[2:5, 4:9])
    pi, pt = torch.randperm(7), torch.randperm(11)
    torch.testing.assert_close(head(img[pi], cap[pt], lens[pt]), S[pi][:, pt])
    for chunk in (1, 5, 13):
        head.pair_chunk = chunk; torch.testing.assert_close(head(img, cap, lens), S)
    for shard in (1, 2, 3, 4, 256):
        torch.testing.assert_close(sharded_similarity(LAPSHead.forward.__get__(head), img, cap, lens, shard, progress=False), S)
    torch.testing.assert_close(sharded_similarity(head, img[pi], cap[pt], lens[pt], 3, progress=False), S[pi][:, pt])
    torch.testing.assert_close(sharded_similarity(laps.dense_similarity, img, cap, lens, 4, progress=False),
                               laps.dense_similarity(img, cap, lens))


def test_sharded_working_set_bounded_by_shard():
    img, cap, lens = feats(bv=10, bt=23)
    seen = []
    def sim(i, c, l): seen.append((i.shape[0], c.shape[0])); return laps.dense_similarity(i, c, l)
    out = sharded_similarity(sim, img, cap, lens, 4, progress=False)
    assert out.dtype == torch.float32 and out.shape == (10, 23)
    assert max(a for a, _ in seen) <= 4 and max(b for _, b in seen) <= 4 and len(seen) == 3 * 6


def test_padding_does_not_matter():
    img, cap, lens = feats()
    head = LAPSHead(16, 64).eval()
    S = head(img, cap, lens)
    cap2 = cap.clone()
    for j, n in enumerate(lens.tolist()): cap2[j, n:] = 1e4 * torch.randn_like(cap2[j, n:])
    torch.testing.assert_close(head(img, cap2, lens), S)
    torch.testing.assert_close(laps.dense_similarity(img, cap2, lens), laps.dense_similarity(img, cap, lens))
    torch.testing.assert_close(text_relevance(img[:, 1:], cap2, lens), text_relevance(img[:, 1:], cap, lens))


def test_hand_made_similarity():
    toks = l2norm(torch.randn(1, 4, 8))
    one = torch.ones(1, 5, dtype=torch.bool)
    assert math.isclose(patch_word_similarity(toks, toks[:, [3, 1, 0, 2, 2]], one).item(), 2.0, rel_tol=1e-6)
    e = torch.eye(8)[None]
    w1 = torch.ones(1, 1, dtype=torch.bool)
    assert abs(patch_word_similarity(e[:, :1], e[:, 1:2], w1).item()) < 1e-7           # orthogonal: 0
    # one word equal to the token, one anti-parallel: t2i = (1 - 0.1)/2, i2t = max(1, -0.1) = 1
    w2 = torch.ones(1, 2, dtype=torch.bool)
    got = patch_word_similarity(e[:, :1], torch.cat([e[:, :1], -e[:, :1]], 1), w2).item()
    assert math.isclose(got, 0.45 + 1.0, rel_tol=1e-6)


def _reference_pair(P, cls, cap, n, agg, K, detach_scores=True, const=None):
    "Loop reference of one (image, caption) pair, as the spec describes it; `const` = precomputed (keep, drop, w)."
    Ph = l2norm(P)
    with torch.set_grad_enabled(not detach_scores):
        s = Ph @ l2norm(P.mean(0)) + Ph @ l2norm(cap[:n].mean(0))
    if const is None:
        order = torch.sort(s.detach(), descending=True).indices
        keep, drop = order[:K], order[K:]
        w = torch.softmax(s[drop], 0)
    else:
        keep, drop, w = const
    fused = (w[:, None] * P[drop]).sum(0, keepdim=True)
    X = l2norm(torch.cat([cls, agg(P[keep][None])[0], fused]))
    A = F.leaky_relu(l2norm(cap[:n]) @ X.T, 0.1)
    return A.max(1).values.mean() + A.max(0).values.mean(), (keep, drop, w.detach())


def test_head_matches_loop_reference_and_stop_gradient():
    torch.manual_seed(0)
    img, cap, lens = feats(bv=2, bt=3, d=8)
    head = LAPSHead(8, 64).eval()
    G = torch.randn(2, 3)
    def grads(fn):
        i, c = img.clone().requires_grad_(), cap.clone().requires_grad_()
        (G * fn(i, c)).sum().backward()
        return torch.cat([i.grad.flatten(), c.grad.flatten()])
    def ref(i, c, detach=True, consts=None):
        rows = []
        for a in range(2):
            row = []
            for b in range(3):
                v, k = _reference_pair(i[a, 1:], i[a, :1], c[b], int(lens[b]), head.aggregation, 32, detach,
                                       None if consts is None else consts[a][b])
                row.append(v)
            rows.append(torch.stack(row))
        return torch.stack(rows)
    torch.testing.assert_close(head(img, cap, lens), ref(img, cap).detach())
    consts = [[_reference_pair(img[a, 1:], img[a, :1], cap[b], int(lens[b]), head.aggregation, 32)[1] for b in range(3)] for a in range(2)]
    g_head = grads(lambda i, c: head(i, c, lens))
    torch.testing.assert_close(g_head, grads(lambda i, c: ref(i, c, consts=consts)))          # constants: same gradient
    g_flow = grads(lambda i, c: ref(i, c, detach=False))                                        # gradients through a_img/a_txt
    assert (g_flow - g_head).norm() / g_head.norm() > 1e-5


# ---------------------------------------------------------------- loss
def test_loss_examples():
    assert align_loss(torch.eye(5), torch.arange(5)).item() == 0.0
    S2 = torch.tensor([[0.5, 0.6], [0.1, 0.4]])
    for mv in (False, True): assert math.isclose(align_loss(S2, torch.tensor([0, 1]), 0.2, mv).item(), 0.7, rel_tol=1e-6)
    S3 = torch.tensor([[0.5, 0.6, 0.9], [0.1, 0.4, 0.3], [0.2, 0.35, 0.7]])
    assert math.isclose(align_loss(S3, torch.arange(3)).item(), 1.95, rel_tol=1e-6)
    assert math.isclose(align_loss(S3, torch.arange(3), max_violation=True).item(), 1.5, rel_tol=1e-6)
    S3m = S3.clone(); S3m[0, 1] = S3m[1, 0] = 7.0                               # ids [0,0,1]: (0,1), (1,0) masked
    ids = torch.tensor([0, 0, 1])
    assert math.isclose(align_loss(S3m, ids).item(), align_loss(S3, ids).item(), rel_tol=1e-6)


def test_hardest_below_all_and_same_ids_never_count():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        S, ids = torch.rand(8, 8, generator=g), torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
        assert align_loss(S, ids, max_violation=True) <= align_loss(S, ids) + 1e-6
        S2 = S.clone(); same = ids[:, None] == ids[None]; S2[same & ~torch.eye(8, dtype=torch.bool)] = 10.0
        assert math.isclose(align_loss(S2, ids).item(), align_loss(S, ids).item(), rel_tol=1e-6)


def test_full_objective_with_hard_topk():
    img, cap, lens = feats(bv=3, bt=3, n=49, cls=False, d=8)
    head = LAPSHead(8, 49, 0.8, 0.6).train()
    S, D = head(img, cap, lens)
    ids = torch.arange(3)
    want = 0.3 * align_loss(S, ids) + 2.0 * (40 / 49 - 0.8) ** 2
    torch.testing.assert_close(laps_loss(S, D, ids, 0.8, alpha=0.3), want)
    assert laps_loss(torch.full((2, 2), float('inf')), None, torch.arange(2)).item() == 0.0


# ---------------------------------------------------------------- retrieval metrics
def test_retrieval_metrics_examples():
    S = torch.tensor([[.90, .10, .20, .30, .40, .85, .05, .06, .07, .08],
                      [.15, .25, .35, .95, .55, .12, .22, .32, .42, .65]])
    r = laps_retrieval.retrieval_metrics(S, 5)
    assert (r['i2t_r1'], r['i2t_r5'], r['i2t_r10'], r['i2t_medr'], r['i2t_meanr']) == (50, 100, 100, 1, 1.5)
    assert (r['t2i_r1'], r['t2i_r5'], r['t2i_r10'], r['t2i_medr'], r['t2i_meanr']) == (50, 100, 100, 1, 1.5)
    assert r['rsum'] == 500
    n = 7
    P = torch.rand(n, 5 * n) * 0.5
    for i in range(n): P[i, 5 * i:5 * i + 5] = 1 + torch.rand(5)
    r = laps_retrieval.retrieval_metrics(P, 5)
    assert r['i2t_r1'] == r['t2i_r1'] == 100 and r['i2t_medr'] == r['t2i_medr'] == 1 and r['i2t_meanr'] == r['t2i_meanr'] == 1


def test_coco_1k_folds_average():
    g = torch.Generator().manual_seed(0)
    S = torch.rand(10, 50, generator=g)
    r = laps_retrieval.retrieval_metrics(S, 5, coco_folds=True)
    folds = [laps_retrieval.retrieval_metrics(S[2 * f:2 * f + 2, 10 * f:10 * f + 10], 5) for f in range(5)]
    for k in ('i2t_r1', 't2i_r5', 'rsum'):
        assert math.isclose(r[f'1k/{k}'], sum(f[k] for f in folds) / 5, rel_tol=1e-9)


# ---------------------------------------------------------------- schedule
def test_schedule():
    want = {0: 2e-4, 8: 2e-4, 9: 6e-5, 14: 6e-5, 15: 1.8e-5, 19: 1.8e-5, 20: 5.4e-6, 24: 5.4e-6, 25: 1.62e-6, 29: 1.62e-6}
    for e, v in want.items():
        assert math.isclose(2e-4 * laps_retrieval.lr_factor(e), v, rel_tol=1e-9)
        assert math.isclose(2e-5 * laps_retrieval.lr_factor(e), v / 10, rel_tol=1e-9)
    assert laps_retrieval.loss_alpha(0, 3, 12) == 0.25 and laps_retrieval.loss_alpha(1, 3, 12) == 1.0
    assert not laps_retrieval.use_hardest(0) and laps_retrieval.use_hardest(1) and laps_retrieval.use_hardest(0, max_violation=True)


# ---------------------------------------------------------------- patch contract
def test_patch_contract():
    m = tiny_model()
    px, ids = batch()
    ref, keys = m(px, ids), set(m.state_dict())
    assert laps.patch(m, sparse_ratio=1.0, aggregate=False) is m and laps.is_patched(m)
    torch.testing.assert_close(m(px, ids), ref)                                   # neutral setting = dense model
    with pytest.raises(ValueError, match='already patched'): laps.patch(m)
    laps.unpatch(m); assert not laps.is_patched(m) and set(m.state_dict()) == keys
    torch.testing.assert_close(m(px, ids), ref)
    laps.patch(m, 0.5, 0.4)
    new = set(m.state_dict()) - keys
    assert keys <= set(m.state_dict()) and new and all(k.startswith('laps_head.') for k in new)
    assert {id(p) for p in laps.laps_parameters(m)} == {id(p) for p in m.laps_head.parameters()}
    assert len(laps.trainable_parameters(m)) == len(list(m.parameters()))          # LAPS fine-tunes everything
    assert m.visual_tokens_per_pair() == 14
    with pytest.raises(ValueError, match='not patched'): laps.unpatch(laps.unpatch(m))
    with pytest.raises(TypeError, match='LAPSModel'): laps.patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match='ViTModel / SwinModel'): LAPSModel(torch.nn.Linear(2, 2), m.text)


def test_param_groups_follow_recipe():
    m = laps.patch(tiny_model(embed=32))
    g = {x['name']: x['lr'] for x in laps.param_groups(m, 2e-4, 0.1)}
    assert g == {'vision': 2e-5, 'text': 2e-5, 'img_proj': 2e-4, 'txt_proj': 2e-4, 'laps_head': 2e-4}


def test_swin_has_no_cls():
    from transformers import SwinConfig, SwinModel
    s = SwinModel(SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4),
                  add_pooling_layer=False)
    m = laps.patch(LAPSModel(s, tiny_model().text, embed_size=32), 0.8, 0.6).eval()
    assert (m.num_patches, m.has_cls, m.visual_tokens_per_pair()) == (64, False, num_aggregated(64, .8, .6) + 1)
    px, ids = batch()
    assert m(px, ids).shape == (4, 4)


def test_gumbel_variant():
    torch.manual_seed(0)
    img, cap, lens = feats(d=16)
    head = LAPSHead(16, 64, selection='gumbel').train()
    S, D = head(img, cap, lens)
    assert S.shape == (3, 5) and set(D.unique().tolist()) <= {0.0, 1.0}
    loss = align_loss(S[:, :3], torch.arange(3)) + 2.0 * ratio_loss(D, 0.5)
    loss.backward()
    assert head.score_predictor[1].weight.grad is not None and head.score_predictor[1].weight.grad.abs().sum() > 0
    head.eval(); S2, D2 = head(img, cap, lens, return_mask=True)
    assert set(D2.sum(-1).unique().tolist()) == {32.0}
    with pytest.raises(ValueError, match="'topk' or 'gumbel'"): LAPSHead(16, 64, selection='soft')


# ---------------------------------------------------------------- bad input
def test_bad_ratios():
    for bad in (0, -0.1, 1.01, 2):
        with pytest.raises(ValueError, match=r'\(0, 1\]'): num_kept(196, bad)
        with pytest.raises(ValueError, match=r'\(0, 1\]'): LAPSHead(16, 64, aggr_ratio=bad)
        with pytest.raises(ValueError, match=r'\(0, 1\]'): laps.patch(tiny_model(), sparse_ratio=bad)
    with pytest.raises(ValueError, match='leaves no aggregated token'): LAPSHead(16, 4, 0.5, 0.4)


def test_long_captions_truncated_and_counted(caplog):
    from tokenizers import Tokenizer, models as tm, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', 'b', 'c']
    t = Tokenizer(tm.WordLevel({w: i for i, w in enumerate(words)}, unk_token='[UNK]'))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single='[CLS] $A [SEP]', special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token='[PAD]', cls_token='[CLS]', sep_token='[SEP]',
                                  mask_token='[MASK]', unk_token='[UNK]')
    ids, n = laps_retrieval.tokenize(tok, ['a b c a b c a b', 'a b'], max_len=6)
    assert n == 1 and ids.shape == (2, 6) and ids[0, -1].item() == 3 and ids[1].tolist() == [2, 5, 6, 3, 0, 0]
    e, l, cut = laps_retrieval.truncate_captions(torch.randn(3, 100, 4), torch.tensor([100, 12, 91]), 90)
    assert cut == 2 and e.shape[1] == 90 and l.tolist() == [90, 12, 90]
    aug = laps_retrieval.augment_caption(tok, 'a b c ' * 50, random.Random(0))
    assert aug[0] == 2 and aug[-1] == 3 and len(aug) < 152 and 4 in aug


def test_image_id_mismatch_named():
    with pytest.raises(ValueError, match="caption 7 has image id 'x'"):
        laps_retrieval.check_caption_ids(['a'] * 5 + ['b', 'b', 'x', 'b', 'b'], ['a', 'b'])
    with pytest.raises(ValueError, match='expected 5 per image'): laps_retrieval.check_caption_ids(['a'] * 4, ['a'])
    with pytest.raises(ValueError, match='cap_lens must lie'): LAPSHead(16, 64)(*feats()[:2], torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match='built for N=64'): LAPSHead(16, 64)(torch.randn(2, 50, 16), *feats()[1:])


def test_paper_numbers_registered():
    from vlrepro.core import paper_numbers
    rows = {(r.setting, r.metric): r.value for r in paper_numbers('laps')}
    assert rows[('Flickr30K ViT', 'i2t_r1')] == 75.8 and rows[('MSCOCO-5K Swin', 'i2t_r5')] == 90.2 and len(rows) == 24


def test_train_laps_recipe():
    """A tiny Trainer run on synthetic tiles pairs: loss ramp, step decay, kept fraction in the log."""
    from vlrepro import data, models
    tr = data.generate('tiles', 16, seed=0, split='train')
    ds = data.RetrievalDataset(tr, transform=data.image_transform(mean=(.5,) * 3, std=(.5,) * 3))
    tok = models.build_tokenizer('laps', ds.captions)
    v, t = laps.build_encoders('laps-vit', 'laps-bert', vocab_size=len(tok), seed=0)
    m = laps.patch(LAPSModel(v, t, 64))
    rec = laps_retrieval.Recipe(batch_size=16, learning_rate=5e-4, backbone_lr_mult=1.0, vse_mean_warmup_epochs=1000, progress=False,
                      log_every=1, lr_schedules=[1])
    res = laps_retrieval.train_laps(m, ds.caption_view('all'), tok, rec, '', epochs=2)
    hist = [r for r in res['history'] if r['kind'] == 'train']
    assert res['finished'] and len(hist) == 10 and hist[0]['alpha'] == 0.0 and hist[-1]['alpha'] == 1.0
    assert hist[0]['kept_fraction'] == 0.5
    assert math.isclose(hist[0]['lr'], 5e-4) and math.isclose(hist[-1]['lr'], 1.5e-4)   # x0.3 from epoch 1


@pytest.mark.slow
def test_papermill_smoke(tmp_path):
    import json, pathlib, papermill as pm
    nbs = pathlib.Path(__file__).parents[1] / 'nbs'
    pm.execute_notebook(str(nbs / '30_laps.ipynb'), str(tmp_path / 'out.ipynb'), cwd=str(nbs), kernel_name='python3',
                        parameters=dict(train_images=40, test_images=20, dense_epochs=1, num_epochs=1, eff_images=2,
                                        batch_size=32, out_dir=str(tmp_path / 'run')))
    rec = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert rec['paper'] == 'laps' and rec['scale'] == 'tiny-synthetic' and 'laps/rsum' in rec['metrics']
    assert rec['metrics']['laps/visual_tokens_per_pair'] == 14 and rec['metrics']['dense/visual_tokens_per_pair'] == 65


@pytest.mark.slow
def test_torchrun_two_processes_global_batch(tmp_path):
    """2 CPU processes under torchrun: each scores the gathered global batch (2 x 8 pairs); weights come back."""
    import json
    from vlrepro.train import launch
    cfg = laps_retrieval.train_config(laps_retrieval.Recipe(batch_size=8, learning_rate=5e-4, lr_schedules=[], progress=False, log_every=1),
                            str(tmp_path / 'run'), epochs=1)
    res = launch('vlrepro.laps_retrieval:train_task', cfg, nproc=2, launcher='torchrun', quiet=True, timeout=600,
                 task_args=dict(config=dict(train_images=8, backbone_lr_mult=1.0, vse_mean_warmup_epochs=1000, learning_rate=5e-4)))
    assert res['finished']
    recs = [json.loads(l) for l in (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()]
    train = [r for r in recs if r['kind'] == 'train']
    assert train and all(r['pairs'] == 16.0 for r in train) and all(math.isfinite(r['loss']) for r in train)
    sd = torch.load(tmp_path / 'run' / 'model.pt', map_location='cpu')
    assert any(k.startswith('laps_head.') for k in sd)


def test_gather_is_identity_without_process_group():
    img, cap, lens = feats()
    out = laps.gather_batch(img, cap, lens)
    assert out[0] is img and out[1] is cap and out[2] is lens
