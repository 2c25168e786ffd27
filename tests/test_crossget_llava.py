"CrossGET on Hugging Face LLaVA-1.5 (spec §2.10, §3.3, §4.3, §4.5, §5.3): patch contract, token schedule, generation, parsers."
import copy, json
import pytest
import torch

pytest.importorskip('transformers')
from vlrepro import crossget as cg, crossget_llava as cgl
from vlrepro import core, models
from vlrepro.merge import token_schedule

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def tiny():
    return models.tiny_hf('crossget-llava', seed=0)


def _ids(m, batch=2, text=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = cgl.llava_visual_tokens(m)
    t = torch.randint(3, 100, (batch, text), generator=g)
    ids = torch.cat([torch.ones(batch, 1, dtype=torch.long), torch.full((batch, n), m.config.image_token_id), t], 1)
    px = torch.randn(batch, 3, 32, 32, generator=g)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=px)


def test_vitl336_schedule_meta():
    "578 tokens (CLS + 576 + cross) lose 13 per layer: 279 after layer 23, 278 visual tokens for the LLM."
    tower = models.build_hf('clip_vision', 'large-336', device='meta')
    st = cgl.LlavaCrossGETState(r=13, num_layers=24, num_patches=576)
    hs = cgl.llava_vision_hidden_states(tower, torch.empty(1, 3, 336, 336, device='meta'), st)
    counts = [h.shape[1] for h in hs]
    assert counts == [578] + [578 - 13 * i for i in range(1, 25)]
    assert counts[23] == 279 and counts[-2] - 1 == 278
    assert st.schedule() == token_schedule(578, [13] * 24, 2)


def test_vitl336_geometry_real_forward():
    "A real random-init forward at ViT-L/14-336 geometry (336 px, patch 14, 24 layers; narrow width for speed)."
    tower = models.build_hf('clip_vision', 'large-336', seed=0, hidden_size=32, intermediate_size=64, num_attention_heads=2)
    st = cgl.LlavaCrossGETState(r=13, num_layers=24, num_patches=576)
    with torch.no_grad():
        tower.crossget_cross_image = torch.nn.Parameter(torch.zeros(24, 32))
        hs = cgl.llava_vision_hidden_states(tower, torch.randn(1, 3, 336, 336), st)
    assert [h.shape[1] for h in hs][1:] == [578 - 13 * i for i in range(1, 25)]
    assert hs[-2][:, 1:].shape == (1, 278, 32)


def test_visual_tokens_7b_meta():
    m = models.build_hf('llava', '7b', device='meta', text_config=dict(num_hidden_layers=1))
    assert cgl.llava_visual_tokens(m) == 576
    cgl.patch_llava(m, r=13)
    assert cgl.llava_visual_tokens(m) == 278


def test_neutral_identity_and_contract(tiny):
    m = copy.deepcopy(tiny)
    inp = models.example_inputs(m, batch_size=2, seq_len=8)
    keys = set(m.state_dict())
    with torch.no_grad(): ref = m(**inp).logits
    assert cgl.patch_llava(m, r=0) is m and cg.is_patched(m)
    with torch.no_grad(): torch.testing.assert_close(m(**inp).logits, ref, rtol=0, atol=0)
    assert set(m.state_dict()) == keys
    with pytest.raises(ValueError, match='already patched'): cgl.patch_llava(m)
    cgl.unpatch_llava(m)
    assert not cg.is_patched(m) and type(m.model).__name__ == 'LlavaModel'
    cgl.patch_llava(m, r=13)
    new = set(m.state_dict()) - keys
    assert new and all('crossget_' in k for k in new) and keys <= set(m.state_dict())
    assert sorted(n for n, _ in m.named_parameters() if 'crossget_' in n) == sorted(new)
    cg.unpatch(m)                                             # 11_crossget's generic unpatch works too
    assert set(m.state_dict()) == keys
    with torch.no_grad(): torch.testing.assert_close(m(**inp).logits, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match='not patched'): cgl.unpatch_llava(m)


def test_type_errors(tiny):
    with pytest.raises(TypeError, match='LlavaForConditionalGeneration'): cgl.patch_llava(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match='LlavaForConditionalGeneration'): cgl.patch_llava(models.tiny_hf('llama'))
    with pytest.raises(ValueError, match='cross token'): cgl.patch_llava(copy.deepcopy(tiny), r=13, cross=False)


def test_cross_token_zero_init_r0_changes_only_via_cross(tiny):
    "cross=True, r=0: the cross token is inserted (official r=0 behaviour); visual tokens 65 = 64 patches + cross."
    m = cgl.patch_llava(copy.deepcopy(tiny), r=0, cross=True)
    assert cgl.llava_visual_tokens(m) == 65
    with torch.no_grad(): out = m(**_ids(m)).logits
    assert torch.isfinite(out).all()


def test_patched_forward_generate_and_cross(tiny):
    m = cgl.patch_llava(copy.deepcopy(tiny), r=13)
    assert cgl.llava_visual_tokens(m) == 26                   # 66 -> 53 -> 40 -> 27 (layer -2) minus CLS
    inp = _ids(m)
    with cgl.collect_llava_cross() as rec:
        with torch.no_grad(): out = m(**inp)
    assert out.logits.shape == (2, inp['input_ids'].shape[1], 128)
    assert len(rec['vision']) == 4 and len(rec['text']) == 2
    assert float(cgl.llava_cross_loss(m, rec)) >= 0
    g = m.generate(**inp, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert g.shape == (2, inp['input_ids'].shape[1] + 4)
    with torch.no_grad(): torch.testing.assert_close(m(**inp).logits, out.logits)   # no state kept between calls
    with pytest.raises(ValueError, match='image placeholders|image tokens|features'):
        with torch.no_grad(): m(**_ids(tiny))                # 64 placeholders for 26 features


def test_cross_loss_zero_for_identical(tiny):
    m = cgl.patch_llava(copy.deepcopy(tiny), r=13)
    proj = m.model.multi_modal_projector
    with torch.no_grad(): z = proj(torch.ones(3, 64))
    rec = dict(vision=[torch.ones(3, 64)] * 4, text=[z] * 2)
    assert float(cgl.llava_cross_loss(m, rec)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match='collect_llava_cross'): cgl.llava_cross_loss(m, dict(vision=[], text=[]))


def test_training_step_grads(tiny):
    "Vision tower frozen except the cross token; LLM, projector and cross tokens get gradients (spec §3.3)."
    m = cgl.patch_llava(copy.deepcopy(tiny), r=13)
    names = cgl.freeze_for_llava_tuning(m)
    assert 'model.vision_tower.crossget_cross_image' in names
    assert not any(n.startswith('model.vision_tower.') and 'crossget' not in n for n in names)
    recs = cgl.llava_synthetic('train', 4, 2, seed=0)
    tok = cgl.llava_tokenizer(recs + cgl.llava_synthetic('train', 64, 32, seed=0) + cgl.llava_synthetic('test', 64, 32, seed=1))
    ds = cgl.LlavaSFTDataset(recs, tok, cgl.llava_visual_tokens(m), 127, system='')
    b = cgl.llava_collate([ds[i] for i in range(len(ds))])
    m.train()
    loss, logs = cgl.llava_loss_fn(0.001)(m, b, None)
    loss.backward()
    assert m.model.vision_tower.crossget_cross_image.grad is not None
    assert m.model.language_model.layers[0].crossget_cross_text.grad is not None
    assert m.model.vision_tower.embeddings.patch_embedding.weight.grad is None
    assert set(logs) == {'lm', 'cross'}


def test_tokenize_masks_prompt(tiny):
    recs = cgl.llava_synthetic('train', 2, 2, seed=0)
    tok = cgl.llava_tokenizer(recs + cgl.llava_synthetic('train', 64, 32, seed=0) + cgl.llava_synthetic('test', 64, 32, seed=1))
    it = cgl.tokenize_llava(tok, recs[0]['conversations'], 26, 127, system='')
    assert int((it['input_ids'] == 127).sum()) == 26
    learned = it['input_ids'][it['labels'] >= 0]
    assert tok.decode(learned[:-1]).strip() == recs[0]['conversations'][1]['value'] and learned[-1] == tok.eos_token_id
    with pytest.raises(ValueError, match='alternate'):
        cgl.tokenize_llava(tok, [dict({'from': 'gpt', 'value': 'a'}), dict({'from': 'human', 'value': 'b'})], 26, 127)


def test_from_pretrained_roundtrip(tiny, tmp_path):
    "The real loader path: save_pretrained a LLaVA, load it with vlrepro.models.load_hf, patch, same outputs."
    tiny.save_pretrained(tmp_path / 'llava')
    a = cgl.patch_llava(models.load_hf('llava', tmp_path / 'llava'), r=13)
    b = cgl.patch_llava(copy.deepcopy(tiny), r=13)
    inp = _ids(a)
    with torch.no_grad(): torch.testing.assert_close(a(**inp).logits, b(**inp).logits)


@pytest.mark.parametrize('bench,text,n,expected', [
    ('vqav2', 'Two.', 4, '2'), ('vqav2', 'Yes\nbecause it is', 4, 'yes'), ('vqav2', 'The dog', 4, 'dog'),
    ('gqa', 'Left.', 4, 'left'), ('gqa', 'Wooden Table', 4, 'wooden table'),
    ('vizwiz', 'Unanswerable.', 4, 'unanswerable'), ('textvqa', 'COCA-COLA', 4, 'coca cola'),
    ('sqa', 'B', 3, 1), ('sqa', 'C. purple', 3, 2), ('sqa', 'The answer is A.', 3, 0), ('sqa', 'D', 3, -1),
    ('sqa', 'I do not know', 3, -1), ('mmbench', '(C) a bird', 4, 2), ('mmbench', 'D', 4, 3),
    ('mmbench_cn', 'A', 4, 0), ('seed', 'B.', 4, 1), ('seed', 'answer: maybe', 4, -1),
    ('pope', 'No, there is no cat in the image.', 0, 'no'), ('pope', 'Yes, there is a cat.', 0, 'yes'),
    ('pope', 'There is not a cat', 0, 'no'), ('mme', 'Yes', 0, 'yes'), ('mme', 'no.', 0, 'no'), ('mme', 'Maybe', 0, 'other'),
])
def test_answer_parsers(bench, text, n, expected):
    assert cgl.parse_answer(bench, text, n) == expected


def test_benchmark_scores():
    recs = [dict(answers=['2'] * 10), dict(answers=['dog'] * 3 + ['cat'] * 7)]
    assert cgl.score_benchmark('vqav2', recs, ['two', 'dog'])['vqav2'] == pytest.approx(95.0)   # 3 of 10 humans: 0.9 (leave-one-out)
    assert cgl.score_benchmark('gqa', [dict(answers=['left'])], ['Left.'])['gqa'] == 100.0
    mc = [dict(answer=1, num_choices=3), dict(answer=0, num_choices=3)]
    assert cgl.score_benchmark('sqa', mc, ['B', 'C'])['sqa'] == 50.0
    pope = [dict(answers=['yes'], category='random'), dict(answers=['no'], category='random'),
            dict(answers=['yes'], category='adversarial'), dict(answers=['no'], category='adversarial')]
    assert cgl.score_benchmark('pope', pope, ['Yes', 'No', 'Yes', 'Yes'])['pope'] == pytest.approx((100 + 200 / 3) / 2)
    sc = cgl.mme_scores(['Yes', 'No', 'Yes', 'No'], ['yes', 'no', 'yes', 'yes'], ['a', 'a', 'b', 'b'], ['count'] * 4)
    assert sc['count'] == 75.0 + 50.0 and sc['perception'] == 125.0
    assert cgl.mmbench_circular([True, True, False, True], [0, 0, 1, 1]) == 50.0
    assert len(cgl.LLAVA_BENCHMARKS) == 10
    with pytest.raises(ValueError, match='unknown benchmark'): cgl.parse_answer('coco', 'x')


def test_paper_numbers_keep_clip_rows():
    rows = core.paper_numbers('crossget')
    tables = {r.table for r in rows}
    assert cg.LLAVA_TABLE in tables and len(tables) > 1
    llava = [r for r in rows if r.table == cg.LLAVA_TABLE]
    assert len(llava) == 42
    assert {(r.setting, r.metric): r.value for r in llava}[('CrossGET 7B', 'gqa')] == 61.4
    n = len(rows); cg.register_llava_numbers(); assert len(core.paper_numbers('crossget')) == n   # idempotent


def test_mix67k_and_script(tmp_path):
    recs = [dict(id=str(i), image=f'im{i}.png', conversations=[dict({'from': 'human', 'value': '<image>\nq'}),
                                                                dict({'from': 'gpt', 'value': 'a'})]) for i in range(25)]
    assert [r['id'] for r in cgl.mix67k(recs)] == ['0', '10', '20']
    with pytest.raises(ValueError): cgl.mix67k(recs, 0)
    import subprocess, sys
    src = tmp_path / 'raw'; src.mkdir()
    (src / 'llava_v1_5_mix665k.json').write_text(json.dumps(recs))
    from PIL import Image
    for i in range(25): Image.new('RGB', (4, 4)).save(src / f'im{i}.png')
    p = subprocess.run([sys.executable, 'data_scripts/make_llava_mix67k.py', '--src', str(src), '--root', str(tmp_path / 'data'),
                        '--dry-run'], capture_output=True, text=True, cwd=__file__.rsplit('/tests/', 1)[0])
    assert p.returncode == 0, p.stderr
    assert '3 of the' in p.stdout and not (tmp_path / 'data' / 'llava_mix67k').exists()


def test_throughput_tiny():
    r = cgl.llava_throughput('tiny', batch_size=2, prompt_len=8, new_tokens=2, warmup=0, repeats=1)
    assert r['prefill'] == {'LLaVA': 1 + 64 + 8, 'CrossGET': 1 + 26 + 8}
    assert list(r['table'].model) == ['LLaVA', 'CrossGET'] and r['speedup'] > 0


def test_llm_cross_token_only_at_prefill_and_checkpointing(tiny):
    "The LLM cross token is added once per layer at prefill, never in decode steps; activation checkpointing works."
    m = cgl.patch_llava(copy.deepcopy(tiny), r=13)
    inp = _ids(m, batch=1)
    with cgl.collect_llava_cross() as rec:
        m.generate(**inp, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert len(rec['text']) == m.config.text_config.num_hidden_layers and len(rec['vision']) == 4
    m.train(); cgl.enable_checkpointing(m)
    loss = cgl.llava_loss_fn(0.001)(m, dict(inp, labels=inp['input_ids']), None)[0]
    loss.backward()
    assert m.model.language_model.layers[1].crossget_cross_text.grad is not None


def test_generic_patch_dispatches_to_llava():
    "crossget.patch(llava, rv=r) is the LLaVA path (issue 8): same visual tokens as patch_llava; generic unpatch restores."
    from vlrepro import models
    a, b = models.tiny_hf('crossget-llava', seed=0), models.tiny_hf('crossget-llava', seed=0)
    cg.patch(a, rv=4); cgl.patch_llava(b, r=4)
    assert cgl.llava_visual_tokens(a) == cgl.llava_visual_tokens(b) and cg.is_patched(a)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    with pytest.raises(ValueError, match='rl must be 0'): cg.patch(models.tiny_hf('crossget-llava'), rv=4, rl=2)
    cg.unpatch(a); assert not cg.is_patched(a)


def test_llm_cross_token_compiles_without_graph_breaks(tiny):
    "The prefill test of the LLM cross token reads the cache length (a Python int), not a tensor: no host sync."
    m = cg.patch(copy.deepcopy(tiny).eval(), rv=2)
    inner = getattr(m, 'model', m)
    n, why = cg._explain(inner.language_model, inputs_embeds=torch.randn(1, 8, m.config.text_config.hidden_size))
    assert n == 0, why


def test_llava_claims_hand_made():
    "The paper's LLaVA claims from hand-made figures: all hold at the paper's numbers, none at worse ones; MME (points) left out."
    acc = {'LLaVA': dict(gqa=62.0, sqa=66.8, mme=1510.7, vqav2_answers=10), 'CrossGET': dict(gqa=61.4, sqa=66.7, mme=1400.0)}
    c = cgl.llava_claims({'LLaVA': 576, 'CrossGET': 278}, {'LLaVA': 8600.0, 'CrossGET': 4600.0}, 1.9, acc)
    assert [x['holds'] for x in c] == [True] * 4
    assert c[0]['measured'] == '576 -> 278 (0.48x)' and c[3]['measured'] == 'mean loss 0.35 points over gqa, sqa'
    c = cgl.llava_claims({'LLaVA': 64, 'CrossGET': 40}, {'LLaVA': 1.0, 'CrossGET': 0.7}, 1.05,
                         {'LLaVA': dict(gqa=62.0), 'CrossGET': dict(gqa=59.5)})
    assert [x['holds'] for x in c] == [False] * 4 and c[1]['measured'] == '1 -> 0.7 GFLOPs (0.70x)'
    assert len(cgl.llava_claims({'LLaVA': 64, 'CrossGET': 26}, {'LLaVA': 1.0, 'CrossGET': 0.5}, 1.3)) == 3   # no accuracy: 3 claims
    assert len(cgl.llava_claims({'LLaVA': 64, 'CrossGET': 26}, {'LLaVA': 1.0, 'CrossGET': 0.5}, 1.3,
                                {'LLaVA': {'vqav2_answers': 4}, 'CrossGET': {'vqav2_answers': 4}})) == 3   # server-scored only


def test_prefill_gflops_fall_with_the_tokens(tiny):
    m = copy.deepcopy(tiny)
    stock = cgl.llava_prefill_gflops(m)
    cgl.patch_llava(m, r=13)
    assert 0.4 < cgl.llava_prefill_gflops(m) / stock < 2 / 3
