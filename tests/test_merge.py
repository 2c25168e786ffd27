"Token-merging primitives: the CrossGET spec §9 invariants 1-12 and 16 on random tensors."
import math
import pytest
import torch
import torch.nn.functional as F
from vlrepro import merge as M


def _prot(B, N, last=True, extra=None):
    return M.protected_mask(B, N, first=True, last=last, extra=extra)


def test_r0_is_identity():  # §9.1
    x, k = torch.randn(2, 12, 8), torch.randn(2, 12, 8)
    assert M.complete_graph_soft_matching(k, 0, protected=_prot(2, 12)) is None
    size = torch.ones(2, 12, 1)
    xo, so = M.merge_ensemble(x, size, None)
    assert xo is x and so is size
    m, u = M.bipartite_soft_matching(k, 0)
    assert m(x) is x and u(x) is x
    # r_eff = 0 when nothing can be merged: N - P < 2
    assert M.complete_graph_soft_matching(torch.randn(1, 3, 4), 5, protected=_prot(1, 3)) is None


@pytest.mark.parametrize('N0,L,r,P,expected_tail', [
    (198, 12, 16, 2, [22, 12]), (198, 12, 12, 2, [66, 54]), (198, 12, 8, 2, [110, 102]),
    (78, 12, 6, 3, [12, 8]), (578, 24, 13, 2, None)])
def test_schedule_counts(N0, L, r, P, expected_tail):  # §9.2
    counts = M.token_schedule(N0, M.parse_r(L, r), P)
    if expected_tail: assert counts[-2:] == expected_tail
    else: assert counts[22] == 279 and counts[:3] == [565, 552, 539]
    # the real matching produces exactly these counts
    n, k = N0, torch.randn(1, N0, 8)
    for i, c in enumerate(counts[:4]):
        mt = M.complete_graph_soft_matching(k, r, protected=_prot(1, n, extra=torch.tensor([n // 2]) if P == 3 else None))
        k = M.merge_plain(k, mt, 'mean'); n = k.shape[1]
        assert n == c


def test_output_count_and_clip():  # §9.2
    k = torch.randn(2, 10, 4)
    for r in range(0, 8):
        mt = M.complete_graph_soft_matching(k, r, protected=_prot(2, 10))
        n = 10 if mt is None else len(mt.keep[0])
        assert n == 10 - min(r, (10 - 2) // 2)


def test_sizes_positive_integers_sum():  # §9.3
    B, N = 3, 40
    x, k, I = torch.randn(B, N, 8), torch.randn(B, N, 8), torch.randn(B, N)
    size = None
    for layer in range(4):
        mt = M.complete_graph_soft_matching(k, 6, I, _prot(B, x.shape[1]))
        if layer == 0:
            untouched = [j for j in mt.keep[0].tolist() if j not in mt.dst[0].tolist()]
        x, size_new = M.merge_ensemble(x, size, mt)
        if layer == 0:
            pos = {j: i for i, j in enumerate(mt.keep[0].tolist())}
            assert all(size_new[0, pos[j], 0] == 1 for j in untouched)
        size = size_new
        k, I = M.merge_plain(k, mt, 'mean'), M.merge_plain(I, mt, 'mean')
        assert (size >= 1).all() and torch.equal(size, size.round()) and (size.sum(1) == N).all()


def test_src_dst_disjoint_protected_keep():  # §9.4, §9.5
    B, N = 4, 33
    k, I = torch.randn(B, N, 16), torch.randn(B, N)
    eot = torch.randint(1, N - 1, (B,))
    prot = _prot(B, N, extra=eot)
    mt = M.complete_graph_soft_matching(k, 9, I, prot)
    assert mt.src.shape == (B, 9) and mt.dst.shape == (B, 9) and mt.keep.shape == (B, N - 9)
    for b in range(B):
        src, dst, keep = set(mt.src[b].tolist()), set(mt.dst[b].tolist()), mt.keep[b].tolist()
        p = {0, N - 1, int(eot[b])}
        assert not src & dst and not (p & src) and not (p & dst) and dst <= set(keep)
        assert keep == sorted(keep) and len(set(keep)) == len(keep) and keep[0] == 0 and keep[-1] == N - 1
        assert set(keep) | src == set(range(N))


def test_eot_tracking():  # §9.5 (text)
    B, N = 2, 20
    ids = torch.zeros(B, N); ids[:, 0] = 25; ids[0, 1:6] = torch.tensor([3., 4, 5, 6, 7]); ids[0, 6] = 26
    ids[1, 1:12] = torch.arange(1., 12); ids[1, 12] = 26; ids[:, -1] = 25  # cross slot gets the SOT id
    tid, size, k = ids, None, torch.randn(B, N, 8)
    for _ in range(4):
        eot = tid.argmax(-1)
        mt = M.complete_graph_soft_matching(k, 3, torch.randn(B, tid.shape[1]), _prot(B, tid.shape[1], extra=eot))
        new_tid = M.merge_token_ids(tid, size, mt)
        _, size = M.merge_ensemble(k, size, mt); k = M.merge_plain(k, mt, 'mean'); tid = new_tid
        assert (tid.max(-1).values == 26).all() and ((tid == 26).sum(-1) == 1).all()
        assert (tid[:, 0] == 25).all() and (tid[:, -1] == 25).all()


def test_constant_importance_equals_tome_wavg():  # §9.6
    x, k = torch.randn(3, 25, 8), torch.randn(3, 25, 8)
    size = torch.randint(1, 4, (3, 25, 1)).float()
    mt = M.complete_graph_soft_matching(k, 8, torch.full((3, 25), 0.3), _prot(3, 25))
    torch.testing.assert_close(mt.alpha, torch.full_like(mt.alpha, 0.5))
    xe, se = M.merge_ensemble(x, size, mt)
    xw, sw = M.merge_wavg(M.as_merge(mt), x, size)
    torch.testing.assert_close(xe, xw); torch.testing.assert_close(se, sw)
    # explicit: every kept token is (Σ s x)/Σ s over what it absorbed
    for b in range(3):
        for i, j in enumerate(mt.keep[b].tolist()):
            members = [j] + [s for s, d in zip(mt.src[b].tolist(), mt.dst[b].tolist()) if d == j]
            w = size[b, members]
            torch.testing.assert_close(xe[b, i], (w * x[b, members]).sum(0) / w.sum())


def test_single_pair_convex():  # §9.7
    torch.manual_seed(1)
    for _ in range(5):
        x, k, I = torch.randn(1, 8, 4), torch.randn(1, 8, 4), torch.randn(1, 8)
        mt = M.complete_graph_soft_matching(k, 1, I)
        s, d = mt.src[0, 0].item(), mt.dst[0, 0].item()
        a_s, a_d = mt.alpha[0, 0]
        torch.testing.assert_close(a_s + a_d, torch.tensor(1.))
        torch.testing.assert_close(torch.stack([a_s, a_d]), torch.softmax(torch.stack([I[0, s], I[0, d]]), 0))
        x2, s2 = M.merge_ensemble(x, None, mt)
        torch.testing.assert_close(x2[0, mt.keep[0].tolist().index(d)], a_d * x[0, d] + a_s * x[0, s])


def test_sum_preservation_only_at_half():  # §9.8
    x, k = torch.randn(2, 30, 6), torch.randn(2, 30, 6)
    size = torch.randint(1, 3, (2, 30, 1)).float()
    mt = M.complete_graph_soft_matching(k, 7, None, _prot(2, 30))
    x2, s2 = M.merge_ensemble(x, size, mt)
    torch.testing.assert_close((x2 * s2).sum(1), (x * size).sum(1))
    mt = M.complete_graph_soft_matching(k, 7, 3 * torch.randn(2, 30), _prot(2, 30))
    x2, s2 = M.merge_ensemble(x, size, mt)
    assert not torch.allclose((x2 * s2).sum(1), (x * size).sum(1))


def test_partner_is_best_kept_and_first_ranked_is_source():  # §9.9
    B, N = 3, 24
    k = torch.randn(B, N, 8); k[:, 5] = k[:, 9]  # force an exact tie
    prot = _prot(B, N)
    mt = M.complete_graph_soft_matching(k, 6, torch.randn(B, N), prot)
    kn = F.normalize(k, dim=-1); S = kn @ kn.transpose(1, 2)
    for b in range(B):
        keep = [j for j in mt.keep[b].tolist() if j not in (0, N - 1)]
        for s, d in zip(mt.src[b].tolist(), mt.dst[b].tolist()):
            assert d in keep and torch.isclose(S[b, s, d], S[b, s, keep].max(), atol=1e-6)
    mt = M.complete_graph_soft_matching(k, 1, None, prot)
    Sm = S.clone(); Sm.diagonal(dim1=1, dim2=2).fill_(-math.inf); Sm[:, [0, N - 1]] = -math.inf; Sm[:, :, [0, N - 1]] = -math.inf
    best = Sm.max(-1).values
    first = [int((best[b] >= best[b].max() - 1e-6).nonzero()[0]) for b in range(B)]
    assert mt.src[:, 0].tolist() == first == [5] * B  # the tie goes to the lower index


def test_batch_independence():  # §9.10
    B, N = 5, 31
    x, k, I = torch.randn(B, N, 8), torch.randn(B, N, 8), torch.randn(B, N)
    size = torch.randint(1, 4, (B, N, 1)).float()
    prot = _prot(B, N)
    mt = M.complete_graph_soft_matching(k, 10, I, prot)
    xb, sb = M.merge_ensemble(x, size, mt)
    for b in range(B):
        m1 = M.complete_graph_soft_matching(k[b:b+1], 10, I[b:b+1], prot[b:b+1])
        x1, s1 = M.merge_ensemble(x[b:b+1], size[b:b+1], m1)
        torch.testing.assert_close(xb[b:b+1], x1); torch.testing.assert_close(sb[b:b+1], s1)


def test_proportional_attention():  # §9.11, §9.12
    q, k, v = torch.randn(3, 2, 3, 6, 8).unbind(0)
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(M.proportional_attention(q, k, v, torch.ones(2, 6, 1)), ref)
    o, p = M.proportional_attention(q, k, v, torch.ones(2, 6, 1), return_probs=True)
    torch.testing.assert_close(o, ref)
    torch.testing.assert_close(p, torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), -1))
    size = torch.ones(2, 6, 1); size[:, 2] = 4; size[:, 5] = 2
    dup = [0, 1, 2, 2, 2, 2, 3, 4, 5, 5]
    _, pd = M.proportional_attention(q, k[:, :, dup], v[:, :, dup], return_probs=True)
    o2, p2 = M.proportional_attention(q, k, v, size, return_probs=True)
    torch.testing.assert_close(o2, F.scaled_dot_product_attention(q, k[:, :, dup], v[:, :, dup]))
    torch.testing.assert_close(p2[..., 2], pd[..., 2:6].sum(-1))  # softmax mass n·e^l
    bias = M.size_bias(size)
    assert bias.shape == (2, 1, 1, 6)
    full = bias.expand(2, 3, 6, 6)
    assert (full == full[:, :1, :1]).all()  # identical across heads and queries
    torch.testing.assert_close(bias[:, 0, 0], size[..., 0].log())


def test_tome_reference_order():  # §9.16
    for class_token in (True, False):
        x = torch.randn(2, 13, 8)
        r = 4
        merge, unmerge = M.bipartite_soft_matching(x, r, class_token=class_token)
        src = M.merge_source(merge, x)
        assert src.shape == (2, 13 - r, 13)
        nb = 13 // 2
        for b in range(2):
            rows = src[b]
            for j in range(nb):  # the last nb outputs are the odd tokens, in order
                assert rows[-nb + j, 2 * j + 1] == 1
            unm = [int(rows[i].argmax()) for i in range(13 - r - nb)]
            assert all(u % 2 == 0 for u in unm) and all(rows[i].sum() == 1 for i in range(len(unm)))
            if class_token: assert unm == sorted(unm) and unm[0] == 0
            else:  # by descending best-match score
                xn = F.normalize(x[b], dim=-1); sc = (xn[::2] @ xn[1::2].T).max(-1).values
                vals = [float(sc[u // 2]) for u in unm]
                assert vals == sorted(vals, reverse=True)
        y, s = M.merge_wavg(merge, x)
        assert (s.sum(1) == 13).all()
        if class_token: torch.testing.assert_close(y[:, 0], x[:, 0])
    # r_eff = min(r, (N-1)//2) with a class token
    merge, _ = M.bipartite_soft_matching(torch.randn(1, 12, 4), 100, class_token=True)
    assert merge(torch.randn(1, 12, 4)).shape[1] == 12 - 5
    merge, _ = M.bipartite_soft_matching(torch.randn(1, 12, 4), 100, class_token=True, distill_token=True)
    assert merge(torch.randn(1, 12, 4)).shape[1] == 12 - 5


def test_unmerge_roundtrip():
    x = torch.randn(2, 17, 5)
    merge, unmerge = M.bipartite_soft_matching(x, 5, class_token=True)
    src = M.merge_source(merge, x)
    back = unmerge(merge(x))
    assert back.shape == x.shape
    y = merge(x)
    for b in range(2):  # every original position gets the value of the token that holds it
        owner = src[b].argmax(0)
        torch.testing.assert_close(back[b], y[b, owner])


def test_parse_r_errors():
    assert M.parse_r(3, 4) == [4, 4, 4] and M.parse_r(3, [1]) == [1, 0, 0]
    with pytest.raises(ValueError, match='at most 3'): M.parse_r(3, [1, 1, 1, 1])
    with pytest.raises(ValueError, match='>= 0'): M.parse_r(3, -1)
    with pytest.raises(ValueError, match='>= 0'): M.parse_r(3, [2, -1])
    with pytest.raises(TypeError, match='int'): M.parse_r(3, 2.5)
    with pytest.raises(ValueError, match='>= 0'): M.bipartite_soft_matching(torch.randn(1, 5, 2), -1)


def test_importance():
    k, q = torch.randn(2, 7, 6), torch.randn(2, 6)
    I = M.cross_importance(k, q)
    torch.testing.assert_close(I, F.cosine_similarity(k, q[:, None], dim=-1))
    A = torch.softmax(torch.randn(2, 7, 7), -1)
    torch.testing.assert_close(M.attention_importance(A), A[:, :-1].mean(1) + A[:, -1])
