"VQAScore / CLIP-FlanT5: the spec §9 invariants on the installed library, tiny random models."
import csv, json, math, random, warnings
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from vlrepro import vqascore as V, vqascore_eval as E, models, core

@pytest.fixture(scope='module')
def tok(): return models.build_tokenizer('vqascore', V.world_corpus())

@pytest.fixture(scope='module')
def model(tok): return V.tiny_clip_flant5(len(tok), seed=0)

def test_templates_byte_for_byte():
    assert V.QUESTION_TEMPLATE == 'Does this figure show "{}"? Please answer yes or no.'
    assert V.format_prompt('Q') == ("A chat between a curious user and an artificial intelligence assistant. The assistant "
                                    "gives helpful, detailed, and polite answers to the user's questions. USER: <image>\nQ ASSISTANT: ")
    assert V.format_prompt('Q', 't5_chat_no_system') == 'USER: <image>\nQ ASSISTANT: '
    assert V.format_prompt('Q', 't5_chat_no_system_no_user') == '<image>\nQ : '
    assert V.format_prompt('Q', 't5_plain') == '<image>Q'
    assert V.vqa_prompt_and_answer('x {y}')[0].count('"x {y}"') == 1   # braces inserted verbatim

def test_tokenize_with_image_counts(tok):
    for prompt in ['<image>', 'a <image> b', '<image>a<image>b<image>']:
        ids = V.tokenizer_image_token(prompt, tok)
        n_img = prompt.count('<image>')
        assert ids.count(V.IMAGE_TOKEN_INDEX) == n_img
        assert ids.count(tok.eos_token_id) == n_img + 1               # one </s> per chunk
    assert V.tokenizer_image_token('<image>', tok) == [1, -200, 1]

def test_splice_lengths_and_mask(model, tok):
    prompts = [V.format_prompt('Is it red?'), V.format_prompt('Is the shape on the left a circle?')]
    rows = [V.tokenizer_image_token(p, tok) for p in prompts]
    ids = V.pad_ids(rows)
    feats = torch.randn(2, 16, model.config.d_model)
    x, mask = V.splice_image_features(ids, feats, model.t5.get_input_embeddings())
    assert mask.sum(1).tolist() == [len(r) - 1 + 16 for r in rows]
    p = rows[0].index(-200)
    torch.testing.assert_close(x[0, :p], model.t5.get_input_embeddings()(torch.tensor(rows[0][:p])))
    torch.testing.assert_close(x[0, p:p + 16], feats[0])

def test_labels_and_decoder_mask(tok):
    lab = V.answer_labels(['Yes', 'a red circle left of a blue square'], tok)
    n_yes = len(tok('Yes').input_ids)
    assert (lab[0] != -100).sum() == n_yes and (lab[0, n_yes:] == -100).all() and lab[0, n_yes - 1] == tok.eos_token_id

def test_score_range_geometric_mean_and_batch_independence(model, tok):
    torch.manual_seed(1)
    imgs = [torch.randn(3, 32, 32) for _ in range(2)]
    texts = ['a red circle left of a blue square', 'a blue circle left of a red square']
    sc = V.Scorer(model, tok, batch_size=4)
    S = sc(imgs, texts)
    assert S.shape == (2, 2) and ((S > 0) & (S <= 1)).all()
    torch.testing.assert_close(S[0], sc.score_pairs([imgs[0]] * 2, texts), rtol=1e-5, atol=0)
    pad = sc.score_pairs([imgs[0]] * 2, [texts[0], texts[1] + ' and a green triangle left of a yellow circle' * 2])
    torch.testing.assert_close(pad[0], S[0, 0], rtol=1e-5, atol=0)
    # score**2 = P(Yes) * P(</s> | Yes) from the same logits
    ids = V.pad_ids([V.tokenizer_image_token(V.vqa_prompt_and_answer(texts[0])[0], tok)])
    lab = V.answer_labels(['Yes'], tok)
    with torch.no_grad(): p = model(ids, torch.stack(imgs[:1]), labels=lab).logits[0].softmax(-1)
    assert math.isclose(float(S[0, 0]) ** 2, float(p[0, lab[0, 0]] * p[1, lab[0, 1]]), rel_tol=1e-4)

def test_one_vision_pass_per_image(model, tok):
    sc = V.Scorer(model, tok)
    sc([torch.randn(3, 32, 32)], [f'a red circle {i}' for i in range(7)])
    assert sc.vision_calls == 1

def test_pad_to_square_geometry():
    im = Image.fromarray(np.full((10, 30, 3), 200, np.uint8))   # w=30, h=10
    a = np.asarray(V.pad_to_square(im))
    assert a.shape == (30, 30, 3) and (a[10:20] == 200).all()
    assert (a[:10] == (122, 116, 104)).all() and (a[20:] == (122, 116, 104)).all()
    tall = np.asarray(V.pad_to_square(Image.fromarray(np.full((30, 10, 3), 200, np.uint8))))
    assert (tall[:, 10:20] == 200).all() and (tall[:, :10] == (122, 116, 104)).all()

def test_projector_dims():
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(V.build_projector('mlp2x_gelu', 1024, 2048)) == 6_295_552
    assert n(V.build_projector('mlp2x_gelu', 1024, 4096)) == 20_979_712

def test_real_size_token_counts():
    cfg = models.hf_config('clip_vision', 'large-336')
    assert (cfg.image_size // cfg.patch_size) ** 2 == 576 and cfg.hidden_size == 1024

def test_split_text_and_flattening():
    r = random.Random(0)
    for cap in ['a yellow square left of a red circle', 'xy', 'z']:
        enc, dec = E.split_text(cap, r)
        assert enc.startswith('<image>') and enc[7:] + dec == cap
    conv = [{'from': 'human', 'value': '<image>\nq1'}, {'from': 'gpt', 'value': 'a1'},
            {'from': 'human', 'value': 'q2'}, {'from': 'gpt', 'value': 'a2'}]
    flat = E.flatten_conversations([{'id': 's', 'conversations': conv}])
    assert len(flat) == 2 and flat[1]['conversations'][0]['value'] == '<image>\nq2'
    assert E.t5_v1(flat[0]['conversations']) == (V.SYSTEM_MSG + ' USER: <image>\nq1 ASSISTANT: ', 'a1')

def test_stage_trainable_sets_and_frozen_tower(model, tok):
    V.set_stage(model, 1)
    assert {n.split('.')[0] for n, p in model.named_parameters() if p.requires_grad} == {'mm_projector'}
    V.set_stage(model, 2)
    assert {n.split('.')[0] for n, p in model.named_parameters() if p.requires_grad} == {'mm_projector', 't5'}
    before = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    b = E.T5VLCollate(tok)([dict(encoder='<image>a red', decoder=' circle', pixels=torch.randn(3, 32, 32))])
    E.t5vl_loss(model.train(), b).backward(); opt.step()
    assert all(torch.equal(before[k], v) for k, v in model.vision_tower.state_dict().items())
    model.eval()

def test_checkpoint_round_trip_official_layout(model, tmp_path):
    model.vision_tower.save_pretrained(tmp_path/'tower')
    E.save_clip_flant5(model, tmp_path/'ck', tmp_path/'tower', save_tower=True)
    from safetensors.torch import load_file
    keys = set(load_file(str(tmp_path/'ck'/'model.safetensors')))
    assert 'mm_projector.0.weight' in keys and any(k.startswith('vision_tower.vision_tower.vision_model.') for k in keys)
    m2 = E.load_clip_flant5(tmp_path/'ck')
    ids = torch.tensor([[5, 1, -200, 6, 1]]); px = torch.randn(1, 3, 32, 32); lab = torch.tensor([[7, 1]])
    with torch.no_grad(): torch.testing.assert_close(m2(ids, px, labels=lab).logits, model(ids, px, labels=lab).logits)
    with pytest.raises(FileNotFoundError, match='vision tower folder'):
        E.load_clip_flant5(tmp_path/'ck', vision_tower_path=tmp_path/'missing')

def test_winoground_rules():
    same = torch.full((5, 2, 2), 0.5)
    assert E.benchmark_scores('winoground', same) == {'text': 0.0, 'image': 0.0, 'group': 0.0}
    g = torch.Generator().manual_seed(0)
    w = E.benchmark_scores('winoground', torch.rand(20000, 2, 2, generator=g))
    assert abs(w['text'] - 25) < 1.5 and abs(w['image'] - 25) < 1.5 and abs(w['group'] - 100 / 6) < 1.5
    assert w['group'] <= min(w['text'], w['image'])

def test_bad_inputs(model, tok, tmp_path):
    sc = V.Scorer(model, tok)
    with pytest.raises(ValueError, match='empty prompt'): sc([torch.randn(3, 32, 32)], [''])
    with pytest.raises(ValueError, match='as many images as texts'): sc.score_pairs([torch.randn(3, 32, 32)] * 2, ['a'])
    with pytest.raises(TypeError, match='list of strings'): sc([torch.randn(3, 32, 32)], 'a red circle')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        V.Scorer(model, tok, max_length=12)([torch.randn(3, 32, 32)], ['a red circle left of a blue square ' * 3])
        assert any('truncated to 12' in str(x.message) for x in w)
    (tmp_path/'p.jsonl').write_text('{"image": "a.png", "prompt": "x"}\n{"img": 1}\n')
    with pytest.raises(ValueError, match="row 2 lacks 'image' or 'prompt'"): E.read_prompts(tmp_path/'p.jsonl')

def test_score_folder_resumes(model, tok, tmp_path):
    for i in range(3): Image.fromarray(np.random.randint(0, 255, (24, 40, 3), np.uint8)).save(tmp_path/f'{i}.png')
    rows = [dict(image=f'{i}.png', prompt=f'a red circle {i}') for i in range(3)]
    E.score_folder(V.Scorer(model, tok), tmp_path, rows[:2], tmp_path/'s.csv', log=lambda *_: None)
    c = E.score_folder(V.Scorer(model, tok), tmp_path, rows, tmp_path/'s.csv', log=lambda *_: None)
    assert c == dict(scored=1, skipped=0, resumed=2, retried=0)
    got = list(csv.DictReader((tmp_path/'s.csv').open()))
    assert [r['image'] for r in got] == ['0.png', '1.png', '2.png'] and all(float(r['score']) > 0 for r in got)

def test_paper_numbers_registered():
    rows = {(r.setting, r.metric): r.value for r in core.paper_numbers('vqascore')}
    assert rows[('CLIP-FlanT5-XXL VQAScore', 'winoground_group')] == 46.0
    assert rows[('CLIP-FlanT5-XL VQAScore', 'genai_bench_video_pairwise_acc')] == 60.2


def test_demo_claims_hand_made():
    "The demonstration's claims from hand-made scores: all hold, then none; matching vs mismatched means by hand."
    S = torch.tensor([[[0.9, 0.2], [0.3, 0.8]], [[0.6, 0.4], [0.5, 0.7]]])   # matching (0.9+0.8+0.6+0.7)/4, mismatched (0.2+0.3+0.4+0.5)/4
    assert E.match_scores(S) == pytest.approx((0.75, 0.35))
    ms = {'VQAScore/winoground_group': 30.0, 'VisualGPTScore/winoground_group': 20.0,
          'CLIPScore (web)/winoground_group': 10.0, 'CLIPScore (hard)/winoground_group': 25.0}
    sp = dict(n_texts=8, vision_passes_once=1, vision_passes_naive=8, speedup=1.5)
    c = E.demo_claims(ms, S, sp)
    assert [x['holds'] for x in c] == [True] * 6
    assert c[0]['measured'] == '0.750 vs 0.350' and c[4]['measured'] == '1 vs 8 passes for 8 texts'
    worse = {**ms, 'VQAScore/winoground_group': 5.0, 'VisualGPTScore/winoground_group': 100 / 6, 'CLIPScore (hard)/winoground_group': 10.0}
    c = E.demo_claims(worse, S.flip(2), dict(sp, vision_passes_naive=7, speedup=1.0))   # swapped captions: mismatched scores higher
    assert [x['holds'] for x in c] == [False] * 6


def test_benchmark_points_beside_the_model_zoo():
    pts = E.benchmark_points({'tiny VQAScore/winoground_group': 12.5, 'tiny VQAScore/winoground_text': 40.0,
                              'stage2/final_loss': 1.0, 'folder/scored': 3}, 'tiny-synthetic')
    assert [(p['source'], p['setting'], p['metric'], p['value'], p['scale']) for p in pts] == [
        ('paper', 'CLIP-FlanT5-XXL VQAScore', 'winoground_group', 46.0, 'paper'),
        ('paper', 'CLIP-FlanT5-XL VQAScore', 'winoground_group', 34.8, 'paper'),
        ('this run', 'tiny VQAScore', 'winoground_group', 12.5, 'tiny-synthetic'),
        ('this run', 'tiny VQAScore', 'winoground_text', 40.0, 'tiny-synthetic')]
    assert E.benchmark_points({'stage1/final_loss': 2.0}, 'full') == []
