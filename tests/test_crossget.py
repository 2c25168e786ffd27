"CrossGET on open_clip CLIP: the STYLE §4 patch contract (tiny CLIP and ViT-B-16), spec §9.13-15, losses, CoOp, CLI."
import copy, math, warnings
import pytest
import torch
import torch.nn.functional as F
from torch import nn

open_clip = pytest.importorskip('open_clip')
from vlrepro import crossget as cg, crossget_clip as cgc
from vlrepro import models

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings('ignore::vlrepro.crossget.RClippedWarning')


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    return models.create_open_clip('vlrepro-tiny-clip')


@pytest.fixture(scope='module')
def vitb():
    torch.manual_seed(0)
    return models.create_open_clip('ViT-B-16')


def _inputs(ctx=24, eot=25, n=3, size=32, vocab=24):
    g = torch.Generator().manual_seed(1)
    img = torch.randn(n, 3, size, size, generator=g)
    txt = torch.zeros(n, ctx, dtype=torch.long)
    txt[:, 0] = eot - 1
    for b in range(n):
        L = 3 + 5 * b
        txt[b, 1:L] = torch.randint(1, vocab, (L - 1,), generator=g); txt[b, L] = eot
    return img, txt


def _contract(m, img, txt):
    with torch.no_grad(): ri, rt = m.encode_image(img), m.encode_text(txt)
    keys = set(m.state_dict())
    req = {n: p.requires_grad for n, p in m.named_parameters()}
    assert cg.patch(m, rv=0, rl=0) is m and cg.is_patched(m)
    with torch.no_grad():  # neutral setting = the original model, bitwise
        assert torch.equal(m.encode_image(img), ri) and torch.equal(m.encode_text(txt), rt)
    assert set(m.state_dict()) == keys
    with pytest.raises(ValueError, match='already patched'): cg.patch(m, rv=8)
    cg.unpatch(m)
    assert not cg.is_patched(m) and type(m).__name__ == 'CLIP' and set(m.state_dict()) == keys
    assert all(type(b).__name__ == 'ResidualAttentionBlock' for b in m.visual.transformer.resblocks)
    cg.patch(m, rv=0, rl=0, cross=True)  # §9.13: zero-init cross tokens, r=0 -> text unchanged
    with torch.no_grad():
        torch.testing.assert_close(m.encode_text(txt), rt)
        assert not torch.allclose(m.encode_image(img), ri)
    new = set(m.state_dict()) - keys
    assert new == {'visual.crossget_cross_image', 'crossget_cross_text'}
    assert {n for n, p in m.named_parameters() if n not in req} == new  # only new parameters are new
    assert all(m.get_parameter(n).requires_grad == r for n, r in req.items())  # the rest untouched
    assert all((p == 0).all() for p in cg.trainable_parameters(m).values())
    cg.unpatch(m)
    assert set(m.state_dict()) == keys
    with torch.no_grad(): assert torch.equal(m.encode_image(img), ri)
    return ri, rt


def test_contract_tiny(tiny):
    img, txt = _inputs()
    _contract(tiny, img, txt)


@pytest.mark.slow
def test_contract_vitb16(vitb):
    img, txt = _inputs(ctx=77, eot=49407, n=2, size=224, vocab=40000)
    _contract(vitb, img, txt)
    cg.patch(vitb, rv=16, rl=6)
    with torch.no_grad():
        out = cg.encode(vitb, img, txt)
    assert out.image_features.shape == (2, 512) and out.cross_image.shape == (24, 512) and out.cross_text.shape == (24, 512)
    cg.unpatch(vitb)


def test_vitb16_token_counts_meta():  # §2.3 / §9.2 on the real architecture (meta device, no weights)
    from vlrepro.bench import token_counts
    m = cg.meta_clip('ViT-B-16')
    cg.patch(m, rv=16, rl=6)
    img = torch.zeros(1, 3, 224, 224, device='meta'); txt = torch.zeros(1, 77, dtype=torch.long, device='meta')
    with torch.no_grad():
        v = token_counts(m.visual, lambda: m.encode_image(img), r'resblocks\.\d+$')
        t = token_counts(m, lambda: m.encode_text(txt), r'^transformer\.resblocks\.\d+$')
    assert v == [198, 182, 166, 150, 134, 118, 102, 86, 70, 54, 38, 22]
    assert t == [78, 72, 66, 60, 54, 48, 42, 36, 30, 24, 18, 12]
    cg.unpatch(m)


def test_errors(tiny):
    with pytest.raises(TypeError, match='supports open_clip'): cg.patch(nn.Linear(3, 3))
    with pytest.raises(ValueError, match='>= 0'): cg.patch(tiny, rv=-1)
    with pytest.raises(ValueError, match='at most 4'): cg.patch(tiny, rv=[4] * 5)
    with pytest.raises(ValueError, match='method'): cg.patch(tiny, rv=4, method='nope')
    with pytest.raises(ValueError, match='vision encoder'): cg.patch(tiny, rv=4, rl=2, method='tome')
    with pytest.raises(ValueError, match='cross token'): cg.patch(tiny, rv=4, cross=False)
    with pytest.raises(ValueError, match='not patched'): cg.unpatch(tiny)
    assert not cg.is_patched(tiny)  # failed patches leave nothing behind
    assert type(tiny).__name__ == 'CLIP'
    with warnings.catch_warnings(record=True) as w:  # r too large: clipped as ToMe does, reported once
        warnings.simplefilter('always')
        cg.patch(tiny, rv=100)
        img, txt = _inputs()
        with torch.no_grad(): tiny.encode_image(img); tiny.encode_image(img)
    assert len([x for x in w if issubclass(x.category, cg.RClippedWarning)]) == 1
    cg.unpatch(tiny)


@pytest.mark.parametrize('method', ['crossget', 'complete', 'tome'])
def test_shapes_and_monotone_gflops(tiny, method):  # §9.14, §9.15
    img, txt = _inputs()
    prev = math.inf
    for r in (0, 4, 8, 16, 24):
        cg.patch(tiny, rv=r, rl=(2 if method != 'tome' and r else 0), method=method)
        with torch.no_grad():
            fi, ft = tiny.encode_image(img), tiny.encode_text(txt)
        assert fi.shape == (3, 64) and ft.shape == (3, 64) and torch.isfinite(fi).all() and torch.isfinite(ft).all()
        cg.unpatch(tiny)
        m = cg.meta_clip('vlrepro-tiny-clip'); cg.patch(m, rv=r, method=method)
        g = cg.gflops(m)['total']
        if r: assert g < prev
        prev = g


def test_gflops_table_vitb16():  # §4.4, §9.15
    df = cg.gflops_table('ViT-B-16')
    assert [round(x, 1) for x in df.ratio] == [100.0, 100.6, 80.0, 69.1, 58.5, 93.7, 51.6]
    official = [20.567, 20.699, 16.460, 14.215, 12.036, 19.275, 10.612]
    assert all(abs(a - b) < 1.2e-3 for a, b in zip(df.total, official))


def test_losses():  # §9.14
    z = torch.randn(10, 8)
    assert cg.cross_alignment_loss(z, z).abs() < 1e-6
    assert cg.cross_alignment_loss(z, torch.randn(10, 8)) > 0
    fi, ft = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    ids = torch.tensor([0, 0, 1, 2])  # captions of the same image are all positives
    l = cg.contrastive_loss(fi, ft, torch.tensor(5.), ids)
    T = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    lg = 5 * fi @ ft.t()
    ref = (-(T * lg.log_softmax(1)).sum(1).mean() - (T * lg.t().log_softmax(1)).sum(1).mean()) / 2
    torch.testing.assert_close(l, ref)


def test_training_step_and_checkpointing(tiny):
    m = copy.deepcopy(tiny)
    img, txt = _inputs()
    cg.patch(m, rv=16, rl=4); m.train()
    with torch.no_grad(): m.logit_scale.fill_(10.)
    out = m(img, txt, return_cross=True)  # the clamp to ln 100 happens in place before the forward
    assert m.logit_scale.item() == pytest.approx(math.log(100))
    loss, parts = cg.retrieval_loss(out, torch.arange(3))
    loss.backward()
    grads = [p.grad.clone() for p in cg.trainable_parameters(m).values()]
    assert all(g.abs().sum() > 0 for g in grads) and set(parts) == {'itc', 'cross'}
    m.zero_grad(); m.set_grad_checkpointing(True)
    loss2, _ = cg.retrieval_loss(m(img, txt, return_cross=True), torch.arange(3)); loss2.backward()
    torch.testing.assert_close(loss2, loss)
    for p, g in zip(cg.trainable_parameters(m).values(), grads): torch.testing.assert_close(p.grad, g)


def test_batch_independence_model(tiny):  # merging is per sample: batch results = single results
    img, txt = _inputs()
    cg.patch(tiny, rv=16, rl=4)
    with torch.no_grad():
        fi, ft = tiny.encode_image(img), tiny.encode_text(txt)
        for b in range(3):
            torch.testing.assert_close(tiny.encode_image(img[b:b+1]), fi[b:b+1], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(tiny.encode_text(txt[b:b+1]), ft[b:b+1], atol=1e-5, rtol=1e-4)
    cg.unpatch(tiny)


def test_coop(tiny):
    m = copy.deepcopy(tiny)
    cg.patch(m, rv=16)
    tok = lambda texts: _inputs()[1][:len(texts)]
    coop = cgc.CoOp(m, ['a', 'b', 'c'], tok, n_ctx=4)
    img, _ = _inputs()
    trainable = {n for n, p in coop.named_parameters() if p.requires_grad}
    assert trainable == {'coop_ctx', 'clip.visual.crossget_cross_image', 'clip.crossget_cross_text'}
    logits, cr = coop(img, torch.tensor([0, 1, 2]))
    assert logits.shape == (3, 3) and cr >= 0
    loss, parts = cgc.coop_loss(coop, dict(image=img, label=torch.tensor([0, 1, 2])))
    loss.backward()
    assert coop.coop_ctx.grad.abs().sum() > 0
    assert 0 <= cgc.coop_accuracy(coop, img, torch.tensor([0, 1, 2])) <= 100


def test_trace_and_pickle(tiny):
    import pickle
    m = cg.patch(copy.deepcopy(tiny), rv=16)
    tr = cg.trace_merges(m, _inputs()[0][0])
    assert [t['tokens'] for t in tr] == [50, 34, 18, 10]
    assert all(t['groups'].shape == (64,) for t in tr) and tr[0]['importance'].shape == (64,)
    m2 = pickle.loads(pickle.dumps(m))  # patched classes are importable by name
    img, txt = _inputs()
    with torch.no_grad(): torch.testing.assert_close(m2.encode_image(img), m.encode_image(img))


def test_paper_numbers_registered():
    from vlrepro.core import paper_numbers
    rows = paper_numbers('crossget')
    assert any(r.setting == 'CLIP CrossGET rv=16' and r.metric == 'i2t_r1' and r.value == 92.1 for r in rows)
    assert any(r.setting == 'CoOp CrossGET rv=16' and r.metric == 'acc_Average' and r.value == 76.7 for r in rows)


def test_bench_cli_smoke(capsys):
    assert cg.bench_main(['--model', 'vlrepro-tiny-clip', '--batch', '2', '--repeats', '2', '--warmup', '1']) == 0
    out = capsys.readouterr().out
    assert 'crossget rv=16' in out and 'measured/ideal' in out and 'merge_overhead_%' in out
