"ADEM-VL: spec §9 invariants, the STYLE §4 patch contract, data formats, parsing, conversion and bad-input errors."
import json, math
import pytest, torch
from torch import nn
import torch.nn.functional as F
from vlrepro import ademvl, ademvl_sqa, bench, core, data, metrics, models, train

torch.set_num_threads(1)
IMG_PRE, TXT_PRE = [3, 4], [3, 4, 11, 12, 13]  # "Image: " / "Image: N/A" stand-ins


def tiny_llama(seed=0, vocab=64):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                                        rms_norm_eps=1e-6, tie_word_embeddings=False)).eval()


def tiny_clip(seed=0):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            image_size=32, patch_size=4, hidden_act='quick_gelu')).eval()


def patched(alpha=0.1, drop=0.1, dsn=(64, 16), with_cls=True, seed=0):
    llm, vt = tiny_llama(seed), tiny_clip(seed)
    ademvl.patch(llm, vt, down_sample_num=dsn, alpha=alpha, drop_ratio=drop, with_cls=with_cls,
                 image_prefix_ids=IMG_PRE, text_prefix_ids=TXT_PRE)
    return llm.eval(), vt


@pytest.fixture
def batch():
    torch.manual_seed(1)
    ids = torch.tensor([[1, 5, 6, 7, 8, 2], [1, 9, 10, 2, 0, 0]])
    labels = torch.tensor([[0, 0, 0, 7, 8, 2], [0, 0, 10, 2, 0, 0]])
    return ids, labels, torch.randn(2, 3, 32, 32), torch.tensor([True, False])


# ---------------------------------------------------------------- §9.1 / §9.3 identity settings
def test_alpha_zero_is_frozen_llm(batch):
    ids, labels, px, ind = batch
    llm, _ = patched(alpha=0.0)
    with torch.no_grad():
        out = ademvl.forward(llm, ids, px, ind)
        _, _, c = ademvl.encode_images(llm, px, ind)
        inp = ademvl.insert_visual(llm.get_input_embeddings(), ids, ind, c, IMG_PRE, TXT_PRE)
        ref = llm(inputs_embeds=inp['inputs_embeds']).logits  # outside the visual context = frozen LLM
    assert torch.equal(out['logits'], ref)


def test_text_only_at_init_is_frozen_llm(batch):
    ids, labels, px, _ = batch
    llm, _ = patched(alpha=0.1)
    ind = torch.tensor([False, False])
    with torch.no_grad():
        k, v, _ = ademvl.encode_images(llm, px, ind)
        assert torch.count_nonzero(v) == 0
        out = ademvl.forward(llm, ids, px, ind)['logits']
        inp = ademvl.insert_visual(llm.get_input_embeddings(), ids, ind, torch.zeros(2, 1, 32), IMG_PRE, TXT_PRE)
        assert torch.equal(out, llm(inputs_embeds=inp['inputs_embeds']).logits)
        # and [BOS] "Image: N/A" prompt is what the frozen LLM saw
        want = torch.cat([ids[:1, :1], torch.tensor([TXT_PRE]), ids[:1, 1:]], 1)
        assert torch.equal(out[:1], llm(want).logits)


def test_image_sample_changes_output_at_init(batch):
    ids, _, px, ind = batch
    llm, _ = patched(alpha=0.1)
    with torch.no_grad():
        a = ademvl.forward(llm, ids, px, ind)['logits']
        ademvl.get_state(llm).alpha = 0.0
        b = ademvl.forward(llm, ids, px, ind)['logits']
    assert not torch.equal(a[0], b[0])  # E2 = 0 but V != 0: fusion active for image samples (§6.10)
    assert torch.equal(a[1], b[1])      # text-only row untouched


def test_clip_adapters_at_init_keep_features():
    vt = tiny_clip()
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): ref = ademvl.clip_features(vt, px)
    ademvl.patch(tiny_llama(), vt, down_sample_num=(64,))
    with torch.no_grad(): torch.testing.assert_close(ademvl.clip_features(vt, px), ref, rtol=0, atol=0)


def test_clip_features_are_postln_penultimate():
    vt = tiny_clip()
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hs = vt(pixel_values=px, output_hidden_states=True).hidden_states
        torch.testing.assert_close(ademvl.clip_features(vt, px), vt.post_layernorm(hs[-2]))


# ---------------------------------------------------------------- §9.2 parameters
def test_fusion_has_no_parameters():
    llm = tiny_llama()
    n0 = sum(p.numel() for p in llm.model.layers.parameters())
    st = ademvl.ADEMState()
    w = ademvl.ADEMLlamaMLP(llm.model.layers[0].mlp, st, 0)
    assert sum(p.numel() for p in w.parameters()) == sum(p.numel() for p in llm.model.layers[0].mlp.parameters())
    llm2, _ = patched()
    assert sum(p.numel() for p in llm2.model.layers.parameters()) == n0


@pytest.mark.parametrize('D,want', [(4096, 4_530_432), (5120, 5_449_984)])
def test_trainable_count_real_sizes(D, want):
    assert ademvl.expected_trainable(D) == want
    assert ademvl._meta_count(D) == want


def test_trainable_split_tiny():
    llm, vt = patched()
    tp = core.count_parameters(ademvl.trainable_parameters(llm), group=ademvl.param_group)
    assert tp['total'] == ademvl.expected_trainable(llm_dim=32, clip_dim=16, M=80, hidden_proj=128, clip_blocks=2, r=12)
    assert tp.get('other', 0) == 0
    names = {n for n, p in llm.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in llm.named_parameters() if 'adapter' in n}
    assert all(k.startswith('ademvl.') for k in ademvl.adapter_state_dict(llm))
    assert all(not p.requires_grad for n, p in llm.named_parameters() if 'adapter' not in n)


def test_last_clip_adapter_gets_no_gradient(batch):
    ids, labels, px, ind = batch
    llm, vt = patched()
    llm.train()
    for layer in vt.encoder.layers: nn.init.normal_(layer.mlp.ademvl_adapter.fc2.weight)  # non-zero so fc1 gets grads
    ademvl.forward(llm, ids, px, ind, labels=labels)['loss'].backward()
    assert vt.encoder.layers[-1].mlp.ademvl_adapter.fc1.weight.grad is None
    assert vt.encoder.layers[0].mlp.ademvl_adapter.fc1.weight.grad is not None
    assert llm.ademvl.adapter_emb1.grad is not None


# ---------------------------------------------------------------- contract
def test_patch_contract_roundtrip(batch):
    ids, _, px, ind = batch
    llm, vt = tiny_llama(), tiny_clip()
    keys_l, keys_v = set(llm.state_dict()), set(vt.state_dict())
    flags = {n: p.requires_grad for n, p in llm.named_parameters()}
    with torch.no_grad(): ref = llm(ids).logits
    out = ademvl.patch(llm, vt, down_sample_num=(64, 16))
    assert out is llm and ademvl.is_patched(llm)
    with pytest.raises(ValueError, match='already patched'): ademvl.patch(llm, vt, down_sample_num=(64, 16))
    with torch.no_grad(): assert torch.equal(llm(ids).logits, ref)  # outside ademvl.forward: the frozen LLM
    assert 'ADEMLlamaMLP' in repr(llm) and 'ADEMClipMLP' in repr(vt)
    ademvl.unpatch(llm)
    assert not ademvl.is_patched(llm) and not core.is_patched(vt, 'ademvl')
    assert set(llm.state_dict()) == keys_l and set(vt.state_dict()) == keys_v
    assert {n: p.requires_grad for n, p in llm.named_parameters()} == flags
    with torch.no_grad(): assert torch.equal(llm(ids).logits, ref)
    ademvl.patch(llm, vt, down_sample_num=(64,))  # patchable again after unpatch


def test_unsupported_models_raise_typeerror():
    with pytest.raises(TypeError, match='LlamaForCausalLM'): ademvl.patch(nn.Linear(2, 2), tiny_clip())
    with pytest.raises(TypeError, match='CLIPVisionModel'): ademvl.patch(tiny_llama(), nn.Linear(2, 2))


def test_bad_knobs_raise_before_patching():
    llm, vt = tiny_llama(), tiny_clip()
    with pytest.raises(ValueError, match='finer than the 8x8'): ademvl.patch(llm, vt, down_sample_num=(256, 64))  # grid is 8
    with pytest.raises(ValueError, match='perfect square'): ademvl.patch(llm, vt, down_sample_num=(60,))
    for d in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r'\[0, 1\)'): ademvl.patch(llm, vt, down_sample_num=(64,), drop_ratio=d)
    assert not ademvl.is_patched(llm) and 'ADEM' not in repr(llm)


def test_gradient_checkpointing_refused(batch):
    ids, _, px, ind = batch
    llm, _ = patched()
    (getattr(llm, 'activation_checkpointing_enable', None) or llm.gradient_checkpointing_enable)()
    with pytest.raises(ValueError, match='gradient checkpointing'): ademvl.forward(llm, ids, px, ind)


# ---------------------------------------------------------------- §9.4 drop, §9.6 locality
def _rand(*s): return torch.randn(*s, dtype=torch.float64)


def test_drop_count_and_kept_scores():
    A = _rand(3, 7, 320)
    Ad = ademvl.adaptive_drop(A, 0.1)
    assert ((Ad == 0) & (A != 0)).sum(-1).eq(32).all()
    assert torch.equal(Ad[Ad != 0], A[Ad != 0])
    assert ademvl.drop_count(0.29, 100) == 28 and ademvl.drop_count(0.0, 320) == 0
    assert torch.equal(ademvl.adaptive_drop(A[..., :9], 0.1), A[..., :9])  # d*M < 1
    Ah = ademvl.adaptive_drop(A.half(), 0.1)  # halves: ties with tau kept, never more than k dropped
    assert (((Ah == 0) & (A.half() != 0)).sum(-1) <= 32).all()


def test_fuse_equals_sum_over_kept():
    u, V, E1, E2 = _rand(2, 5, 16), _rand(2, 40, 16), _rand(1, 40, 16), _rand(1, 40, 16)
    K, Vals = ademvl.fusion_kv(V, E1, E2)
    A = F.silu(u) @ K.transpose(1, 2)
    tau = A.kthvalue(int(0.3 * 40) + 1, -1, keepdim=True).values
    want = torch.einsum('blm,bmd->bld', A * (A >= tau), Vals)
    torch.testing.assert_close(ademvl.fuse(u, K, Vals, 0.3), want)
    torch.testing.assert_close(ademvl.fuse(u, K, Vals, 0.0), A @ Vals)


def test_fuse_locality_permutation_scaling():
    u, V, E1, E2 = _rand(2, 6, 16), _rand(2, 40, 16), _rand(1, 40, 16), _rand(1, 40, 16)
    out = ademvl.fuse(u, *ademvl.fusion_kv(V, E1, E2), 0.1)
    perm = torch.randperm(40)
    torch.testing.assert_close(ademvl.fuse(u, *ademvl.fusion_kv(V[:, perm], E1[:, perm], E2[:, perm]), 0.1), out)
    K, Vals = ademvl.fusion_kv(V, E1, E2)
    torch.testing.assert_close(ademvl.fuse(u, K, 2.5 * Vals, 0.1), 2.5 * out)
    for t in range(6): torch.testing.assert_close(ademvl.fuse(u[:, t:t+1], K, Vals, 0.1), out[:, t:t+1])


def test_fusion_preserves_causality(batch):
    ids, _, px, ind = batch
    llm, _ = patched()
    with torch.no_grad():
        a = ademvl.forward(llm, ids[:1], px[:1], ind[:1])['logits']
        ids2 = ids[:1].clone(); ids2[0, 4] = 30  # change a later token
        b = ademvl.forward(llm, ids2, px[:1], ind[:1])['logits']
    # positions before the change (BOS, 2 prefix, CLS, 3 tokens) are unchanged
    torch.testing.assert_close(a[:, :4 + 3], b[:, :4 + 3])
    assert not torch.allclose(a[:, -1], b[:, -1])


# ---------------------------------------------------------------- §9.5 multiscale and sequence length
def test_multiscale_layout():
    p = torch.randn(2, 256, 8)
    ms = ademvl.multiscale_prompt(p, (256, 64))
    assert ms.shape == (2, 320, 8)
    assert torch.equal(ms[:, :256], p)
    g = p.view(2, 16, 16, 8)
    for r in range(8):
        for c in range(8):
            torch.testing.assert_close(ms[:, 256 + 8 * r + c], g[:, 2*r:2*r+2, 2*c:2*c+2].mean((1, 2)))
    assert ademvl.multiscale_prompt(p, (64,)).shape == (2, 64, 8)   # single scale works (upstream CLI crashes)
    assert ademvl.multiscale_prompt(p, 64).shape == (2, 64, 8)
    out = ademvl.multiscale_prompt(p, (256, 36))                  # 16 -> 6 does not divide: adaptive pooling, as upstream
    torch.testing.assert_close(out[:, 256:], torch.nn.functional.adaptive_avg_pool2d(g.permute(0, 3, 1, 2), 6).flatten(2).transpose(1, 2))
    with pytest.raises(ValueError, match='square grid'): ademvl.multiscale_prompt(torch.randn(1, 257, 8), (256,))


@pytest.mark.parametrize('dsn', [(64,), (64, 16), (64, 16, 4)])
def test_sequence_growth_independent_of_M(batch, dsn):
    ids, labels, px, ind = batch
    llm, _ = patched(dsn=dsn)
    with torch.no_grad(): out = ademvl.forward(llm, ids, px, ind)
    n = (ids != 0).sum(1)
    assert out['lengths'].tolist() == [int(n[0]) + len(IMG_PRE) + 1, int(n[1]) + len(TXT_PRE)]
    llm2, _ = patched(dsn=dsn, with_cls=False)
    with torch.no_grad(): assert ademvl.forward(llm2, ids, px, ind)['lengths'].tolist() == n.tolist()


# ---------------------------------------------------------------- §9.7 labels
def test_labels_supervise_exactly_answer_and_eos():
    enc = lambda s: [10 + (ord(ch) % 40) for ch in s]
    prompt, answer = data.sqa_prompt(dict(question='Q?', choices=['x', 'y'], answer=1))
    ids, lab = ademvl_sqa.tokenize_example(enc, prompt, answer, max_len=200)
    n_prompt = 1 + len(enc(prompt))
    assert (lab[:n_prompt] == 0).all()
    sup = lab[lab > 0].tolist()
    assert sup == enc(prompt + answer)[n_prompt - 1:] + [2]
    llm, _ = patched()
    emb = llm.get_input_embeddings()
    for has in (True, False):
        out = ademvl.insert_visual(emb, ids[None], torch.tensor([has]), torch.zeros(1, 1, 32), IMG_PRE, TXT_PRE, lab[None])
        shift = len(IMG_PRE) + 1 if has else len(TXT_PRE)
        L = out['labels'][0]
        assert L[L > 0].tolist() == sup
        assert torch.equal(L[n_prompt + shift: n_prompt + shift + len(sup)], torch.tensor(sup))
        assert (L[1:1 + shift] == 0).all()


def test_loss_ignores_label_zero():
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[0, 0, 5, 2]])
    want = F.cross_entropy(logits[0, 1:3], torch.tensor([5, 2]))
    torch.testing.assert_close(ademvl.lm_loss(logits, labels), want)


def test_batch_cut_at_last_supervised_position(batch):
    ids, labels, px, ind = batch
    llm, _ = patched()
    emb = llm.get_input_embeddings()
    padded_ids = F.pad(ids, (0, 10)); padded_lab = F.pad(labels, (0, 10))
    out = ademvl.insert_visual(emb, padded_ids, ind, torch.zeros(2, 1, 32), IMG_PRE, TXT_PRE, padded_lab, max_seq_len=512)
    assert out['labels'].shape[1] == 6 + len(IMG_PRE) + 1  # cut at the last label > 0 over the batch
    short = ademvl.insert_visual(emb, padded_ids, ind, torch.zeros(2, 1, 32), IMG_PRE, TXT_PRE, padded_lab, max_seq_len=5)
    assert short['inputs_embeds'].shape[1] <= 5


# ---------------------------------------------------------------- §9.8 learning rate
def test_lr_schedule():
    lr = ademvl_sqa.effective_lr(9e-3, 32)
    assert math.isclose(lr, 1.125e-3)
    assert ademvl_sqa.lr_at(0, lr, 2, 20) == 0
    assert math.isclose(ademvl_sqa.lr_at(2, lr, 2, 20), 1.125e-3)
    assert math.isclose(ademvl_sqa.lr_at(11, lr, 2, 20), 5.625e-4)
    assert abs(ademvl_sqa.lr_at(20, lr, 2, 20)) < 1e-12
    assert math.isclose(ademvl_sqa.lr_at(1, lr, 2, 20), lr / 2)


# ---------------------------------------------------------------- §9.9 generation pad invariance
def test_generation_pad_invariance():
    llm, _ = patched()
    torch.manual_seed(3)
    px = torch.randn(3, 3, 32, 32)
    prompts = [[1, 5, 6, 7, 8, 9], [1, 10, 11], [1, 12, 13, 14]]
    ind = torch.tensor([True, False, True])
    P = torch.zeros(3, 6, dtype=torch.long)
    for i, p in enumerate(prompts): P[i, :len(p)] = torch.tensor(p)
    gen, first = ademvl.generate(llm, P, px, ind, max_gen_len=4, eos_id=2)
    for i, p in enumerate(prompts):
        g1, f1 = ademvl.generate(llm, torch.tensor([p]), px[i:i+1], ind[i:i+1], max_gen_len=4, eos_id=2)
        torch.testing.assert_close(first[i:i+1], f1, rtol=1e-4, atol=1e-5)
        assert gen[i] == g1[0]
        assert len(g1[0]) <= 4


# ---------------------------------------------------------------- §9.10 scores, §4.2 parsing
def test_parse_answer_malformed_never_crashes():
    assert ademvl_sqa.parse_answer('B', 3) == 1
    assert ademvl_sqa.parse_answer('The answer is C.', 3) == 2
    assert ademvl_sqa.parse_answer(' A.', 5) == 0
    for bad in ['', 'The', 'D', 'A or B', 'AB', 'B B C', None, 42, '\n', '(E)']:
        assert ademvl_sqa.parse_answer(bad, 3) == -1
    assert ademvl_sqa.parse_answer('The', 3, mode='official') == -1   # 'T' is not an option (§6.12)
    assert ademvl_sqa.parse_answer('AB', 3, mode='official') == 0     # upstream: first capital letter
    with pytest.raises(ValueError, match='strict'): ademvl_sqa.parse_answer('A', 3, mode='lenient')


def test_category_scores_recomputed():
    probs = [dict(subject='natural science', grade='grade2', hint='', image='x.png', answer=0),
             dict(subject='social science', grade='grade8', hint='h', image=None, answer=1),
             dict(subject='language science', grade='grade9', hint='', image=None, answer=2),
             dict(subject='natural science', grade='grade1', hint='h', image='y.png', answer=1)]
    preds = [0, 1, -1, 0]
    got = ademvl_sqa.sqa_scores(preds, probs)
    ok = [p == q['answer'] for p, q in zip(preds, probs)]
    def acc(m): sel = [o for o, q in zip(ok, probs) if m(q)]; return 100 * sum(sel) / len(sel)
    want = dict(NAT=acc(lambda q: q['subject'] == 'natural science'), SOC=acc(lambda q: q['subject'] == 'social science'),
                LAN=acc(lambda q: q['subject'] == 'language science'), TXT=acc(lambda q: bool(q['hint'])),
                IMG=acc(lambda q: bool(q['image'])), NO=acc(lambda q: not q['hint'] and not q['image']),
                **{'G1-6': acc(lambda q: int(q['grade'][5:]) <= 6), 'G7-12': acc(lambda q: int(q['grade'][5:]) >= 7)},
                Avg=100 * sum(ok) / len(ok))
    for k, v in want.items(): assert math.isclose(got[k], v), k


# ---------------------------------------------------------------- §3 formats
def test_sqa_prompt_handwritten():
    q = lambda question, choices, answer, **kw: dict(question=question, choices=choices, answer=answer, **kw)
    p, a = data.sqa_prompt(q('Which word is a color?', ['red', 'circle', 'dog'], 0))
    assert p + a == 'Context: N/A\nQuestion: Which word is a color?\nOptions: (A) red (B) circle (C) dog\nResponse:The answer is A.'
    p, a = data.sqa_prompt(q('What color is the ball?', ['blue', 'green'], 1, hint='The ball is green.'))
    assert p == 'Context: The ball is green.\nQuestion: What color is the ball?\nOptions: (A) blue (B) green\nResponse:'
    assert a == 'The answer is B.'
    p, _ = data.sqa_prompt(q('Q?', ['a', 'b'], 0, hint='H.', caption='A cat.'), fmt='QCM-A', use_caption=True)
    assert p == 'Question: Q?\nContext: H. A cat.\nOptions: (A) a (B) b\nResponse:'
    p, _ = data.sqa_prompt(q('Q?', ['a', 'b'], 0, hint='', caption='A cat.'), use_caption=True)
    assert p.startswith('Context: A cat.\n')
    p, _ = data.sqa_prompt(q('Q?  x', ['a'], 0))
    assert 'Q? x' in p  # double spaces collapsed
    p, _ = data.sqa_prompt(q('Q?   x', ['a'], 0))
    assert 'Q?  x' in p  # one str.replace('  ', ' '), as the official base_prompt: three spaces leave two
    with pytest.raises(ValueError, match='CQM-A'): data.sqa_prompt(q('Q?', ['a'], 0), fmt='XYZ')


def test_caption_and_instruction_formats(tmp_path):
    assert ademvl_sqa.pre_caption('A Dog (running)!  On the   beach.') == 'a dog running on the beach'
    assert len(ademvl_sqa.pre_caption(' '.join(['w'] * 50)).split()) == 30
    assert ademvl_sqa.caption_example('Two cats.') == ('a picture of', 'a picture of two cats')
    assert ademvl_sqa.extract_caption('a picture of a dog') == 'a dog'
    assert ademvl_sqa.extract_caption('garbage') == 'garbage'
    assert ademvl_sqa.mme_prompt('Is there a cat?') == 'Instruction: Is there a cat?\nResponse:'
    assert ademvl_sqa.instruction_example({'instruction': 'Do x.', 'answer': 'ok'}) == ('Do x.', 'ok')
    with pytest.raises(ValueError, match='conversation'): ademvl_sqa.instruction_example({'id': 1, 'conversations': []})
    ademvl_sqa.write_mme_predictions(tmp_path, 'existence', [('a.jpg', 'q1', 'Yes', 'Yes'), ('a.jpg', 'q2', 'No', 'yes\nit is'),
                                                        ('b.jpg', 'q1', 'Yes', 'Yes, there is'), ('b.jpg', 'q2', 'No', 'No')])
    s = ademvl_sqa.mme_scores(tmp_path)
    assert math.isclose(s['existence'], 75 + 50) and math.isclose(s['MME-P'], 125) and s['MME-C'] == 0


# ---------------------------------------------------------------- §8 loading / conversion
def test_meta_conversion_roundtrip(tmp_path):
    src = tiny_llama(seed=2)
    meta = ademvl_sqa.hf_to_meta(src.state_dict(), 4)
    halves = [{}, {}]
    for k, v in meta.items():
        dim = models._SHARD_DIM.get(k.split('.')[-2])
        for j in range(2): halves[j][k] = v if dim is None or v.ndim == 1 else v.chunk(2, dim)[j].clone()
    merged = ademvl_sqa.merge_meta_shards(halves)
    assert all(torch.equal(merged[k], meta[k]) for k in meta)
    d = tmp_path / '13B'; d.mkdir()
    for j in range(2): torch.save(halves[j], d / f'consolidated.0{j}.pth')
    (d / 'params.json').write_text(json.dumps({'dim': 32, 'n_heads': 4, 'n_layers': 2, 'norm_eps': 1e-6, 'multiple_of': 64, 'vocab_size': -1}))
    back = ademvl_sqa.load_llama(tmp_path, 'meta', '13B', dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 20]])
    with torch.no_grad(): torch.testing.assert_close(back(ids).logits, src(ids).logits)
    assert not any(p.requires_grad for p in back.parameters())
    W = torch.randn(32, 32)
    assert torch.equal(ademvl_sqa.permute_qk(ademvl_sqa.permute_qk(W, 4, True), 4, False), W)


def test_hf_folder_loading(tmp_path):
    src = tiny_llama(seed=4)
    src.save_pretrained(tmp_path / 'hf')
    back = ademvl_sqa.load_llama(tmp_path / 'hf', 'hf', dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9]])
    with torch.no_grad(): torch.testing.assert_close(back(ids).logits, src(ids).logits)


def test_ffn_and_config():
    assert ademvl_sqa.ffn_dim(4096) == 11008 and ademvl_sqa.ffn_dim(5120) == 13824
    cfg = ademvl_sqa.llama_config_from_params({'dim': 4096, 'n_heads': 32, 'n_layers': 32, 'norm_eps': 1e-6, 'multiple_of': 256, 'vocab_size': -1})
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size) == (4096, 11008, 32, 32000)


def test_missing_weights_and_vocab_mismatch(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): ademvl_sqa.load_llama(tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match='config.json'): ademvl_sqa.load_llama(tmp_path, 'hf')
    with pytest.raises(FileNotFoundError, match='consolidated'): ademvl_sqa.load_llama(tmp_path, 'meta', '7B')
    with pytest.raises(ValueError, match='llama_format'): ademvl_sqa.load_llama(tmp_path, 'gguf')

    class Tok:
        def __len__(self): return 100
    with pytest.raises(ValueError, match='does not belong'): ademvl_sqa.check_vocab(Tok(), tiny_llama(vocab=64))
    ademvl_sqa.check_vocab(type('T', (), {'__len__': lambda s: 64})(), tiny_llama(vocab=64))


# ---------------------------------------------------------------- methods of the §7 comparison, data through the workbench
def test_methods_agree_on_text_only(batch):
    ids, _, px, ind = batch
    txt = ademvl_sqa.TextOnlyVL(tiny_llama(), IMG_PRE, TXT_PRE)
    isv = ademvl_sqa.InputSpaceVL(tiny_llama(), tiny_clip(), IMG_PRE, TXT_PRE)
    llm, _ = patched()
    adem = ademvl_sqa.ADEMVLModel(llm)
    no = torch.tensor([False, False])
    with torch.no_grad():
        ref = txt(ids, px, no)['logits']
        assert torch.equal(adem(ids, px, no)['logits'], ref) and torch.equal(isv(ids, px, no)['logits'], ref)
        assert isv(ids, px, ind)['lengths'].tolist() == [6 + len(IMG_PRE) + 64, 4 + len(TXT_PRE)]
    assert sum(p.numel() for p in isv.parameters() if p.requires_grad) == 16 * 32 + 32 + 32 * 32 + 32


def test_sqa_examples_match_workbench_prompt():
    s = data.generate('sciqa', 24, seed=0, split='train')
    for r in s.rows:   # the oracle description goes first in the context, and only with oracle=True
        assert data.sqa_prompt(r, oracle=True)[0].startswith(f"Context: {(r['description'] + ' ' + (r['hint'] or '')).strip() or 'N/A'}\n")
        assert data.sqa_prompt(r)[0].startswith(f"Context: {r['hint'] or 'N/A'}\n")
    mc = data.MCQADataset(s)
    tok = ademvl_sqa.demo_tokenizer(s.rows)
    ex = ademvl_sqa.SQAExamples(mc, tok, max_len=96)
    b = ademvl_sqa.collate_sqa([ex[i] for i in range(8)])
    enc = ademvl_sqa.encoder_of(tok)
    for i in range(8):
        p, a = data.sqa_prompt(s.rows[i])
        sup = b['labels'][i][b['labels'][i] > 0].tolist()
        assert sup == enc(p + a)[len(enc(p)):] + [2]          # the answer part and EOS only
        assert tok.decode(b['prompt_ids'][i][b['prompt_ids'][i] > 0][1:]).endswith('The answer is')
    assert b['has_image'].tolist() == [bool(r['has_image']) for r in s.rows[:8]]


def test_demo_pipeline_smoke(tmp_path):
    tr, te = data.generate('sciqa', 64, seed=0, split='train'), data.generate('sciqa', 16, seed=0, split='test')
    tok = ademvl_sqa.demo_tokenizer(tr.rows + te.rows)
    trm, tem = data.MCQADataset(tr), data.MCQADataset(te)
    train, test = ademvl_sqa.SQAExamples(trm, tok), ademvl_sqa.SQAExamples(tem, tok)
    llm, vit = models.tiny_hf('ademvl-llama', seed=0), models.tiny_hf('ademvl-clip-vision', seed=0)
    ademvl_sqa.check_vocab(tok, llm)
    ademvl_sqa.train_text_llm(llm, train, tok, steps=2, batch_size=8)
    ademvl_sqa.train_vision(vit, trm, steps=2, batch_size=8)
    assert not any(p.requires_grad for p in llm.parameters()) and not any(p.requires_grad for p in vit.parameters())
    enc = ademvl_sqa.encoder_of(tok)
    ademvl.patch(llm, vit, down_sample_num=(64, 16), hidden_proj=32, image_prefix_ids=enc(ademvl_sqa.IMAGE_PREFIX),
                 text_prefix_ids=enc(ademvl_sqa.TEXT_PREFIX))
    m = ademvl_sqa.ADEMVLModel(llm)
    assert core.count_parameters(ademvl.trainable_parameters(llm)) == ademvl.expected_trainable(96, 64, 80, 32, 3, 12)
    before = llm.ademvl.adapter_emb2.detach().clone()
    ademvl_sqa._fit(m, train, ademvl_sqa.fit_config(steps=2, batch_size=8, lr=1e-3, weight_decay=0.02))
    assert not torch.equal(before, llm.ademvl.adapter_emb2)
    ev = ademvl_sqa.evaluate_sqa(m, test, tok, batch_size=8)
    assert set(ev['scores']) >= {'NAT', 'SOC', 'LAN', 'TXT', 'IMG', 'NO', 'G1-6', 'G7-12', 'Avg'}
    assert len(ev['preds']) == 16 and all(-1 <= p < 3 for p in ev['preds'])
    c = ademvl_sqa.method_cost(m, ademvl_sqa.collate_sqa([test[i] for i in range(4)]))
    assert c['llm_gflops_per_example'] > 0 and c['total_gflops_per_example'] >= c['llm_gflops_per_example']
    fm = ademvl.fusion_maps(llm, *(ademvl_sqa.collate_sqa([test[i] for i in range(2)])[k] for k in ('input_ids', 'pixel_values', 'has_image')))
    assert fm['A'].shape[-1] == 80


def test_layer_cost_flops_at_7b_sizes():
    df = ademvl.layer_cost(text_len=128, n_visual=256, M=320, measure=False)
    assert list(df.variant) == ['text only', 'ADEM (embedded)', 'input-space (prepend)']
    assert df.gflops[1] < 0.55 * df.gflops[2]
    fusion = df.gflops[1] - ademvl.layer_cost(text_len=132, n_visual=0, measure=False).gflops[0]
    assert abs(fusion - 4 * 132 * 320 * 4096 / 1e9) / fusion < 0.05   # ~4·L·M·D (spec §2.5)


def test_openai_clip_conversion():
    oc = models.create_open_clip('vlrepro-tiny-clip')
    sd = {f'visual.{k}': v for k, v in oc.visual.state_dict().items()}
    hf = models.open_clip_state_dict_to_hf(sd, vision_only=True)
    cfg = models.clip_vision_config(sd, n_heads=oc.visual.transformer.resblocks[0].attn.num_heads)
    from transformers import CLIPVisionModel
    m = CLIPVisionModel(cfg).eval()
    m.load_state_dict(hf, strict=True)
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        want = oc.visual.eval()(x)
        got = m(pixel_values=x).pooler_output @ oc.visual.proj
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_full_scale_path_on_local_tiny_checkpoints(tmp_path):
    root = tmp_path / 'data'
    data.make_synthetic(root, 'sciqa', splits={'train': 32, 'test': 8}, name='scienceqa')
    rows = [r for sp in ('train', 'test') for r in data.read_jsonl(root / 'scienceqa' / f'{sp}.jsonl', image_fields=())]
    tok = ademvl_sqa.demo_tokenizer(rows)
    llm = models.tiny_hf('ademvl-llama', seed=0); llm.save_pretrained(tmp_path / 'llama'); tok.save_pretrained(tmp_path / 'llama')
    models.tiny_hf('ademvl-clip-vision', seed=0).save_pretrained(tmp_path / 'clip')
    kw = dict(llama_dir=str(tmp_path / 'llama'), clip_path=str(tmp_path / 'clip'), out_dir=str(tmp_path / 'run'), epochs=1,
              warmup_epochs=0.1, batch_size=4, accum_iter=2, max_seq_len=128, hidden_proj=16, down_sample_num=(64, 16), max_steps=2,
              device='cpu', eval_prompt_format='QCM-A', eval_use_caption=True)
    with pytest.raises(ValueError, match='no captions'): ademvl_sqa.run_full_scale(ademvl_sqa.full_config(task='sqa', data_root=str(root), **kw))  # before any training
    assert not (tmp_path / 'run').exists()
    (tmp_path / 'captions.json').write_text(json.dumps({'captions': {r['id']: 'A picture.' for r in rows}}))
    out = ademvl_sqa.run_full_scale(ademvl_sqa.full_config(task='sqa', data_root=str(root), caption_file=str(tmp_path / 'captions.json'), **kw))
    assert set(out['metrics']) >= {'LLaMA-7B ScienceQA/Avg', 'LLaMA-7B ScienceQA/IMG'}
    assert out['efficiency']['trainable_params'] == ademvl.expected_trainable(96, 64, 80, 16, 3, 12)
    # the same through the workbench launcher (one plain-python process; torchrun/DeepSpeed on GPUs)
    out2 = ademvl_sqa.run_full_scale(ademvl_sqa.full_config(task='sqa', data_root=str(root), llama_dir=str(tmp_path / 'llama'), clip_path=str(tmp_path / 'clip'),
                                 out_dir=str(tmp_path / 'run2'), epochs=1, warmup_epochs=0.1, batch_size=4, accum_iter=1,
                                 max_seq_len=128, hidden_proj=16, down_sample_num=(64, 16), max_steps=2, device='cpu',
                                 nproc=1, launcher='python', caption_file=str(tmp_path / 'captions.json')))
    assert set(out2['metrics']) == set(out['metrics'])
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ademvl_sqa.run_full_scale(ademvl_sqa.full_config(task='sqa', data_root=str(tmp_path / 'nope'), llama_dir=str(tmp_path / 'llama'), clip_path=str(tmp_path / 'clip')))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ademvl_sqa.run_full_scale(ademvl_sqa.full_config(task='sqa', data_root=str(root), llama_dir=str(tmp_path / 'missing'), clip_path=str(tmp_path / 'clip'), eval_use_caption=False))


def test_convert_llama_script(tmp_path):
    import runpy, pathlib
    src = tiny_llama(seed=5)
    meta = ademvl_sqa.hf_to_meta(src.state_dict(), 4)
    (tmp_path / 'w' / '7B').mkdir(parents=True)
    torch.save(meta, tmp_path / 'w' / '7B' / 'consolidated.00.pth')
    (tmp_path / 'w' / '7B' / 'params.json').write_text(json.dumps({'dim': 32, 'n_heads': 4, 'n_layers': 2, 'norm_eps': 1e-6, 'multiple_of': 64, 'vocab_size': -1}))
    script = pathlib.Path(__file__).parents[1] / 'data_scripts' / 'convert_llama.py'
    main = runpy.run_path(str(script))['main']
    assert main(['--src', str(tmp_path / 'w'), '--out', str(tmp_path / 'hf'), '--dry-run']) == 0
    assert not (tmp_path / 'hf').exists()
    assert main(['--src', str(tmp_path / 'w'), '--out', str(tmp_path / 'hf'), '--dtype', 'float32']) == 0
    back = ademvl_sqa.load_llama(tmp_path / 'hf', 'hf', dtype=torch.float32)
    ids = torch.tensor([[1, 7, 3]])
    with torch.no_grad(): torch.testing.assert_close(back(ids).logits, src(ids).logits)


@pytest.mark.slow
def test_notebook_smoke_run(tmp_path):
    "papermill run of nbs/40_ademvl.ipynb with preset='smoke' writes a results.json with the category table."
    pm = pytest.importorskip('papermill')
    import pathlib
    nbs = pathlib.Path(__file__).parents[1] / 'nbs'
    pm.execute_notebook(str(nbs / '40_ademvl.ipynb'), str(tmp_path / 'out.ipynb'), cwd=str(nbs),
                        parameters=dict(preset='smoke', out_dir=str(tmp_path / 'run')), progress_bar=False,
                        kernel_name='python3')
    rec = core.read_results(tmp_path / 'run')
    assert rec['paper'] == 'ademvl' and rec['scale'] == 'tiny-synthetic'
    for c in ('NAT', 'SOC', 'LAN', 'TXT', 'IMG', 'NO', 'G1-6', 'G7-12', 'Avg'): assert f'ADEM/{c}' in rec['metrics']
    assert rec['efficiency']['llm_flops_ratio_adem_vs_input_space'] < 0.55
    assert any(r['setting'] == 'LLaMA-7B ScienceQA' and r['this_run'] is not None for r in rec['comparison'])


def _tiny_checkpoints(tmp_path, texts):
    "A tiny random Llama (+ word-level tokenizer over `texts`) and CLIP saved in HF layout, as the full-scale path loads them."
    tok = models.build_tokenizer('ademvl', [ademvl_sqa.IMAGE_PREFIX, ademvl_sqa.TEXT_PREFIX, *texts], vocab_size=128)
    models.tiny_hf('ademvl-llama', seed=0).save_pretrained(tmp_path / 'llama'); tok.save_pretrained(tmp_path / 'llama')
    models.tiny_hf('ademvl-clip-vision', seed=0).save_pretrained(tmp_path / 'clip')
    return dict(llama_dir=str(tmp_path / 'llama'), clip_path=str(tmp_path / 'clip'))


def _png(path, rgb):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (32, 32), rgb).save(path)


def test_full_scale_coco_caption_end_to_end(tmp_path):
    "Karpathy json -> convert_karpathy -> run_full_scale('coco_caption'): trains 2 steps, generates, scores BLEU-4/CIDEr."
    cols = {'red': (220, 30, 30), 'blue': (30, 30, 220), 'green': (30, 200, 30)}
    imgs = []
    for i, (c, rgb) in enumerate(cols.items()):
        for sp in ('train', 'val'):
            _png(tmp_path / 'src' / f'{sp}2014' / f'{c}{i}.jpg', rgb)
            imgs.append(dict(filepath=f'{sp}2014', filename=f'{c}{i}.jpg', split=sp, cocoid=len(imgs),
                             sentences=[{'raw': f'A {c} square.'}, {'raw': f'The {c} picture!'}]))
    (tmp_path / 'karpathy.json').write_text(json.dumps({'dataset': 'coco', 'images': imgs}))
    root = tmp_path / 'data'
    data.convert_karpathy(tmp_path / 'karpathy.json', tmp_path / 'src', root / 'coco')
    texts = [f'{ademvl_sqa.CAPTION_PROMPT} {ademvl_sqa.pre_caption(s["raw"])}' for im in imgs for s in im['sentences']]
    out = ademvl_sqa.run_full_scale(ademvl_sqa.full_config(task='coco_caption', data_root=str(root), **_tiny_checkpoints(tmp_path, texts), out_dir=str(tmp_path / 'run'),
                                epochs=1, warmup_epochs=0.1, batch_size=2, accum_iter=1, hidden_proj=16,
                                down_sample_num=(64, 16), max_steps=2, device='cpu', eval_batch_size=3))
    assert set(out['metrics']) == {'LLaMA-7B COCO caption/BLEU-4', 'LLaMA-7B COCO caption/CIDEr'}
    assert all(math.isfinite(v) and v >= 0 for v in out['metrics'].values())
    assert out['train']['step'] == 2 and math.isfinite(out['train']['loss'])
    assert out['efficiency']['trainable_params'] == ademvl.expected_trainable(96, 64, 80, 16, 3, 12)


def test_full_scale_instruction_end_to_end(tmp_path):
    "LLaVA conversations -> convert_llava -> run_full_scale('instruction') with a tiny MME folder: MME-P/MME-C and prediction files."
    items = []
    for i, (c, rgb) in enumerate({'red': (220, 30, 30), 'blue': (30, 30, 220)}.items()):
        _png(tmp_path / 'src' / f'{c}.jpg', rgb)
        items.append(dict(id=f'i{i}', image=f'{c}.jpg', conversations=[{'from': 'human', 'value': '<image>\nWhat color is it?'},
                                                                       {'from': 'gpt', 'value': f'It is {c}.'}]))
    items.append(dict(id='t0', conversations=[{'from': 'human', 'value': 'Say yes.'}, {'from': 'gpt', 'value': 'Yes.'}]))
    (tmp_path / 'llava.json').write_text(json.dumps(items))
    root = tmp_path / 'data'
    data.convert_llava(tmp_path / 'llava.json', tmp_path / 'src', root / 'llava')
    mme = tmp_path / 'mme' / 'color'
    _png(mme / 'a.jpg', (220, 30, 30))
    (mme / 'a.txt').write_text('Is it red? Please answer yes or no.\tYes\nIs it blue? Please answer yes or no.\tNo\n')
    texts = [ademvl_sqa.mme_prompt('What color is it?') + ' It is red. blue. Yes. No. Say yes. Is it red? Please answer yes or no.']
    out = ademvl_sqa.run_full_scale(ademvl_sqa.full_config(task='instruction', data_root=str(root), dataset='llava', **_tiny_checkpoints(tmp_path, texts), out_dir=str(tmp_path / 'run'),
                                epochs=1, warmup_epochs=0.2, batch_size=3, accum_iter=1, max_seq_len=64, hidden_proj=16,
                                down_sample_num=(64, 16), max_steps=2, device='cpu', mme_root=str(tmp_path / 'mme')))
    assert set(out['metrics']) == {'LLaMA-7B instruction/MME-P', 'LLaMA-7B instruction/MME-C'}
    assert out['train']['step'] == 2 and math.isfinite(out['train']['loss'])
    rows = (tmp_path / 'run' / 'mme' / 'color.txt').read_text().splitlines()
    assert [r.split('\t')[:3] for r in rows] == [['a.jpg', 'Is it red? Please answer yes or no.', 'Yes'],
                                                 ['a.jpg', 'Is it blue? Please answer yes or no.', 'No']]
    assert 0 <= out['metrics']['LLaMA-7B instruction/MME-P'] <= 200 and out['metrics']['LLaMA-7B instruction/MME-C'] == 0


class _FakeScenes:
    "MCQADataset stand-in: each image is the one-hot of its per-cell colour/shape targets (or all zeros)."
    options = {'colors': ['red', 'blue'], 'shapes': ['circle', 'square']}
    def __init__(self, n, informative, seed=0):
        g = torch.Generator().manual_seed(seed)
        cells = ['top left', 'top right', 'bottom left', 'bottom right']
        self.rows, self.informative = [], informative
        for _ in range(n):
            objs = [dict(cell=c, color=['red', 'blue'][int(torch.randint(2, (), generator=g))],
                         shape=['circle', 'square'][int(torch.randint(2, (), generator=g))])
                    for c in cells if float(torch.rand((), generator=g)) < 0.4]
            self.rows.append(dict(has_image=True, objects=objs))
        self.rows.append(dict(has_image=False))  # text items are skipped
    def __getitem__(self, i):
        c, s = ademvl_sqa.cell_targets(self.rows[i], sorted(self.options['colors']), sorted(self.options['shapes']))
        x = torch.cat([F.one_hot(torch.tensor(c), 3).flatten(), F.one_hot(torch.tensor(s), 3).flatten()]).float()
        return {'image': x if self.informative else torch.zeros_like(x)}


class _FlatTower(nn.Module):
    def forward(self, pixel_values):
        from types import SimpleNamespace
        return SimpleNamespace(pooler_output=pixel_values.flatten(1))


def test_probe_accuracy_perfect_and_chance_features():
    good = ademvl_sqa.probe_accuracy(_FlatTower(), _FakeScenes(200, True), _FakeScenes(100, True, seed=1), steps=200)
    assert good['color_acc'] == 1.0 and good['shape_acc'] == 1.0
    bad = ademvl_sqa.probe_accuracy(_FlatTower(), _FakeScenes(200, False), _FakeScenes(100, False, seed=1), steps=200)
    # constant features: the head can only predict the majority class (empty), so accuracy is the empty-cell share
    assert bad['color_acc'] == pytest.approx(bad['empty_share']) and bad['shape_acc'] == pytest.approx(bad['empty_share'])
    assert 0.5 < bad['empty_share'] < 0.7
