"""LaVIN-DAS / language-only LLaMA-DAS (vlrepro.das_lavin): counts, masks, prompts, parsing, checkpoints, pipeline."""
import json, math
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from vlrepro import das, data, metrics, models
from vlrepro import das_lavin as dl

torch.set_num_threads(1)


def tiny_clip(layers=2):
    return CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                            num_attention_heads=4, image_size=32, patch_size=8)).eval()


@pytest.fixture
def lavin():
    torch.manual_seed(0)
    return dl.LaVIN(models.tiny_hf('llama', num_hidden_layers=3), tiny_clip(), image_prefix=[5, 6], text_prefix=[5, 6, 7],
                    skip=[2]).eval()


# ---- counts (spec §3), on the meta device at the real sizes
@pytest.mark.parametrize('k', [0, 2, 4, 6])
def test_counts_7b(k):
    assert dl.meta_count('lavin', k) == 3_781_296 + k * 196_632
    assert dl.meta_count('llama', k) == (32 - k) * 69_640 + k * 266_272


def test_counts_match_spec_totals():
    assert [dl.meta_count('lavin', k) for k in (0, 2, 4, 6)] == [3_781_296, 4_174_560, 4_567_824, 4_961_088]
    with pytest.raises(ValueError, match="'lavin' or 'llama'"): dl.meta_count('vilt', 0)


def test_trainable_names_and_fp32(lavin):
    names = [n for n, p in lavin.named_parameters() if p.requires_grad]
    assert names and all('adapter' in n or '.das_skip.' in n for n in names)
    assert any('vision' in n and 'adapter_attn' in n for n in names)          # CLIP router adapters
    assert 'adapter_modality_embedding.weight' in names and any(n.startswith('adapter_proj.') for n in names)
    assert not any('.layers.2.das_adapter' in n for n in names)                 # skipped block: only its replacement
    assert all(p.dtype == torch.float32 for n, p in lavin.named_parameters() if p.requires_grad)
    assert not lavin.llm.lm_head.weight.requires_grad and lavin.skip == [2]


# ---- modality token and image insertion (spec §3)
def test_attention_mask_hides_modality_token():
    m = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    ok = dl.lavin_attention_mask(m)[:, 0] == 0
    assert ok[0, 2].tolist() == [False, False, True, False, False, False]
    assert not ok[0, 3:, 2].any() and not ok[1, 1:, 0].any()                  # nobody else attends to it
    assert ok[1, 5].tolist() == [False, True, True, True, True, True]
    assert ok[0, 0].tolist() == [True, False, False, False, False, False]     # padded query: itself only (no NaN)
    plain = dl.lavin_attention_mask(m, modality=False)[1, 0] == 0
    assert torch.equal(plain, torch.ones(6, 6, dtype=torch.bool).tril())


def test_modality_token_invisible_to_text(lavin):
    ids = torch.tensor([[1, 10, 11, 12]])
    with torch.no_grad():
        a = lavin(ids, None, None, torch.tensor([False]))['logits']
        lavin.adapter_modality_embedding.weight.add_(3.0)
        b = lavin(ids, None, None, torch.tensor([False]))['logits']
    torch.testing.assert_close(a[:, 1:], b[:, 1:])
    assert not torch.allclose(a[:, 0], b[:, 0])


def test_image_na_insertion_and_labels(lavin):
    ids, lab = torch.tensor([[1, 10, 11, 12], [1, 20, 21, 0]]), torch.tensor([[0, 0, 11, 12], [0, 0, 21, 0]])
    px = torch.randn(2, 3, 32, 32)
    inp = dl.build_inputs(lavin, ids, lab, px, torch.tensor([True, False]))
    assert inp['attention_mask'].sum(1).tolist() == [1 + 1 + 2 + 6 + 3, 1 + 1 + 3 + 2]
    emb = lavin.llm.get_input_embeddings()
    with torch.no_grad():
        torch.testing.assert_close(inp['inputs_embeds'][1, 1], emb.weight[1])                    # BOS after the modality token
        torch.testing.assert_close(inp['inputs_embeds'][1, 2:5], emb(torch.tensor([5, 6, 7])))   # "Image: N/A"
        torch.testing.assert_close(inp['inputs_embeds'][0, 2:4], emb(torch.tensor([5, 6])))      # "Image: " then 6 tokens
        torch.testing.assert_close(inp['inputs_embeds'][0, 4:10], dl.image_tokens(lavin, px)[0])
        torch.testing.assert_close(inp['inputs_embeds'][0, 0], lavin.adapter_modality_embedding.weight[1])
        torch.testing.assert_close(inp['inputs_embeds'][1, 0], lavin.adapter_modality_embedding.weight[0])
    assert inp['labels'][0].tolist() == [0] * 11 + [11, 12]
    assert inp['labels'][1].tolist()[:7] == [0, 0, 0, 0, 0, 0, 21]


def test_clip_router_identity_at_init():
    v = tiny_clip(); px = torch.randn(1, 3, 32, 32)
    ref = dl.clip_cls_features(v, px)
    dl.patch_clip(v)
    torch.testing.assert_close(dl.clip_cls_features(v, px), ref)
    with pytest.raises(ValueError, match='already'): dl.patch_clip(v)
    assert dl.cls_layers(24) == [4, 8, 12, 16, 20, 24]


def test_generation_with_cache_matches_recompute(lavin):
    ids, hi, px = torch.tensor([[1, 10, 11, 12], [1, 20, 21, 0]]), torch.tensor([True, False]), torch.randn(2, 3, 32, 32)
    gen = dl.generate(lavin, ids, px, hi, max_new_tokens=3, eos_id=-1)
    with torch.no_grad():
        for b in range(2):
            row = ids[b:b+1, :int((ids[b] != 0).sum())]
            for t in gen[b]:
                assert int(lavin(row, None, px[b:b+1], hi[b:b+1])['logits'][0, -1].argmax()) == t
                row = torch.cat([row, torch.tensor([[t]])], 1)
    s = dl.generate(lavin, ids, px, hi, max_new_tokens=3, temperature=0.1, seed=1, eos_id=-1)
    assert s == dl.generate(lavin, ids, px, hi, max_new_tokens=3, temperature=0.1, seed=1, eos_id=-1)


# ---- prompts
def test_sqa_qcm_ale():
    r = dict(question='Which is a mammal?', hint='A zoo.', choices=['frog', 'dog'], answer=1, lecture='Mammals have fur.',
             solution='A dog has fur.')
    assert dl.sqa_qcm_ale(r) == ('Question: Which is a mammal?\nContext: A zoo.\nOptions: (A) frog (B) dog\nResponse:',
                                 'The answer is B. BECAUSE: Mammals have fur. A dog has fur.')
    assert dl.sqa_qcm_ale(dict(r, lecture='', solution=''))[1] == 'The answer is B.'


def test_language_prompts_train_eval_differ():
    b = dl.normalize_language_row('boolq', dict(question='is it', passage='P.', answer=False))
    assert b['answer'] == 1 and b['choices'] == ['yes', 'no']
    tr, ev = dl.language_prompt('boolq', b, True), dl.language_prompt('boolq', b, False)
    assert tr == ('Answer the question according to the passage.\nPassage: P.\nQuestion: is it?\nOptions: (A) yes (B) no\n'
                  'Response:', 'The answer is B.')
    assert ev[0] == tr[0].replace('passage.\n', 'passage\n', 1)
    assert dl.language_prompt('boolq', b, False, 'unified') == tr
    g = dl.normalize_language_row('gsm8k', dict(question='Q?', answer='2*3=<<2*3=6>>6\n#### 1,006'))
    assert g['answer'] == '1006'
    assert dl.language_prompt('gsm8k', g, True) == ('Question: Q?\n\nResponse:', '2*3=<<2*3=6>>6 The answer is 1006.')
    assert dl.language_prompt('gsm8k', g, False)[0] == 'Question: Q?\nResponse:'
    c = dl.normalize_language_row('csqa', dict(question='W?', choices=dict(label=list('ABCDE'), text=list('abcde')), answerKey='E'))
    assert dl.language_prompt('csqa', c) == ('Question: W?\nOptions: (A) a (B) b (C) c (D) d (E) e\nResponse:', 'The answer is E.')
    with pytest.raises(ValueError, match='prompt style'): dl.language_prompt('csqa', c, style='x')


def test_tokenize_pair_labels():
    enc = lambda s: [ord(c) for c in s]
    assert dl.tokenize_pair(enc, 'ab', 'c', joiner='') == ([1, 97, 98, 99, 2], [0, 0, 0, 99, 2])
    assert dl.tokenize_pair(enc, 'ab', 'c', max_len=3, joiner='') == ([1, 97, 98], [0, 0, 0])
    assert dl.tokenize_pair(enc, 'ab', None) == ([1, 97, 98], [0, 0, 0])


# ---- answer parsing
@pytest.mark.parametrize('text,n,want', [('The answer is C. BECAUSE: x', 3, 2), ('The answer is B .', 2, 1),
                                         ('no letter here', 4, -1), ('The answer is A. The answer is B.', 3, -1),
                                         ('The answer is E.', 3, -1), ('', 3, -1), (None, 3, -1), ('B.', 3, 1),
                                         ('A. or B.', 3, -1)])
def test_parse_choice_malformed(text, n, want):
    assert metrics.parse_choice(text, n, 'lavin') == want   # LaVIN's ScienceQA rule


def test_parse_fallback_and_language():
    g = torch.Generator().manual_seed(0)
    picks = {metrics.parse_choice('garbage', 3, 'lavin', fallback='random', generator=g) for _ in range(40)}
    assert picks == {0, 1, 2}
    assert metrics.parse_choice('hence the answer is B.', 2, 'lavin_language') == 1
    assert metrics.parse_choice('Answer: C', 5, 'lavin_language') == 2
    with pytest.raises(ValueError, match='fallback'): metrics.parse_choice('x', 2, 'lavin', fallback='coin')
    assert dl.parse_number('so 5+5=10. The answer is 10.') == '10' and dl.parse_number('The answer is 1,234.') == '1234'
    assert dl.parse_number('The answer is -3.5') == '-3.5' and dl.parse_number('none') == ''


# ---- checkpoints
def test_meta_layout_round_trip(tmp_path):
    torch.manual_seed(0)
    m = models.tiny_hf('llama', num_key_value_heads=2).eval()           # grouped-query heads exercise n_kv_heads
    dl.save_meta_llama(m, tmp_path/'w'/'7B')
    sd = torch.load(tmp_path/'w'/'7B'/'consolidated.00.pth', weights_only=True)
    assert 'layers.0.attention.wq.weight' in sd and 'tok_embeddings.weight' in sd and 'output.weight' in sd
    assert json.loads((tmp_path/'w'/'7B'/'params.json').read_text())['n_kv_heads'] == 2
    back = dl.load_llama(tmp_path/'w')
    ids = torch.randint(3, 128, (2, 7))
    torch.testing.assert_close(back(ids).logits, m(ids).logits)
    assert not any(p.requires_grad for p in back.parameters())
    # Meta's q rows differ from HF's (RoPE pairs interleaved), and the inverse is exact
    assert not torch.equal(sd['layers.0.attention.wq.weight'], m.state_dict()['model.layers.0.self_attn.q_proj.weight'])
    rt = dl.meta_to_hf(dl.hf_to_meta(m.state_dict(), 4, 2), 4, 2)
    assert all(torch.equal(rt[k], v) for k, v in m.state_dict().items())
    assert dl.llama_depth(tmp_path/'w') == (2, 64)
    shards = [{k: v.chunk(2, models._SHARD_DIM.get(k.split('.')[-2], 0))[i] if v.ndim == 2 and models._SHARD_DIM.get(k.split('.')[-2]) is not None
               else v for k, v in sd.items()} for i in range(2)]
    merged = dl.merge_shards(shards)
    assert all(torch.equal(merged[k], v) for k, v in sd.items())
    with pytest.raises(FileNotFoundError, match='params.json'): dl.llama_depth(tmp_path)
    with pytest.raises(KeyError, match='unexpected key'): dl.meta_to_hf({'layers.0.foo.weight': torch.zeros(1)}, 4)


def test_vocab_check():
    tok = models.build_tokenizer('ademvl', ['a b c'], vocab_size=200)
    with pytest.raises(ValueError, match='vocabulary mismatch'): dl.check_vocab(tok, models.tiny_hf('llama'))


def test_latency_extrapolated_decreases():
    df = dl.lavin_latency(ks=(0, 2, 6), seq=4, repeats=2, warmup=1, device='cpu')
    assert list(df['k']) == [0, 2, 6] and df['relative'].iloc[0] == 1.0 and (df['relative'].diff().dropna() < 0).all()
    assert df['paper_relative'].round(3).tolist() == [1.0, round(3.44 / 3.70, 3), round(3.06 / 3.70, 3)]


def test_setting_names_line_up_with_paper():
    names = {n.setting for n in das.PAPER_NUMBERS}
    assert {dl.setting_name('lavin', k, 32, 4096) for k in (0, 2, 4, 6)} <= names
    assert dl.setting_name('lavin', 2, 4, 64) == 'DAS2-4L64d' and dl.setting_name('llama', 0, 32, 4096) == 'LLaMA-7B'
    assert dl.parse_skip_list('[24, 27, 25, 22]') == [24, 27, 25, 22] and dl.parse_skip_list('') == []
    with pytest.raises(ValueError, match='list of block indices'): dl.parse_skip_list('[1, 2')


# ---- the pipeline
@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('lavin')
    sq = data.make_synthetic(root/'data', 'sciqa', {'train': 12, 'val': 8, 'test': 6}, seed=0)
    rows = data.read_jsonl(sq/'train.jsonl')
    ck = dl.tiny_checkpoints(root/'ckpt', layers=4, texts=[' '.join(dl.sqa_qcm_ale(r)) for r in rows])
    bq = root/'boolq'; bq.mkdir()
    mk = lambda n, s: [dict(question=f'is {s} {i} even', passage=f'{s} {i} is a number.', answer=i % 2 == 0, idx=i) for i in range(n)]
    (bq/'train.jsonl').write_text('\n'.join(json.dumps(r) for r in mk(12, 'x')))
    (bq/'validation.jsonl').write_text('\n'.join(json.dumps(r) for r in mk(6, 'y')))
    return dict(root=root, sq=str(sq), boolq=str(bq), **ck)


SMALL = dict(das_epoch=2, search_epochs=2, warmup_epoch=1, das_turn=1, train_epochs=1, lr=1e-3, per_gpu_batchsize=2,
             batch_size=4, precision='fp32', device='cpu', max_steps=2, max_text_len=80, eval_batch_size=6)


def test_run_full_scale_lavin(tiny_setup, tmp_path):
    s = tiny_setup
    r = dl.run_full_scale(dl.config('lavin', 'scienceqa', s['sq'], s['ckpt'], s['vision_ckpt'], skip_num=2, out_dir=str(tmp_path/'run'),
                          limit_eval=6, **SMALL))
    assert set(r) >= {'metrics', 'efficiency', 'extra', 'scale', 'status'} and (r['scale'], r['status']) == ('real-data', 'complete')
    S = r['extra']['skip']
    assert len(S) == 2 and all(0 <= i < 4 for i in S) and r['extra']['search']['updates'] >= 1
    assert (tmp_path/'run'/'search.json').exists() and (tmp_path/'run'/'train'/'model.pt').exists()
    keys = {f'DAS2-4L64d/{c}' for c in ('NAT', 'SOC', 'LAN', 'TXT', 'IMG', 'NO', 'G1-6', 'G7-12', 'Avg')}
    assert keys <= set(r['metrics'])
    assert all(math.isnan(v) or 0 <= v <= 100 for k, v in r['metrics'].items() if k in keys)
    e = r['efficiency']
    assert e['trainable_params'] == dl.trainable_count(r['model']) and e['skipped_blocks'] == 2 and e['inference_s_per_example'] > 0
    assert r['extra']['n_eval'] == 6 and r['extra']['train_steps'] == 2 and r['extra']['train_finished']
    # resume: the finished search and training are reused, the evaluation is the same
    r2 = dl.run_full_scale(dl.config('lavin', 'scienceqa', s['sq'], s['ckpt'], s['vision_ckpt'], skip_num=2, out_dir=str(tmp_path/'run'),
                           limit_eval=6, **SMALL))
    assert r2['extra']['skip'] == S and r2['extra']['train_steps'] == 2 and json.dumps(r2['metrics']) == json.dumps(r['metrics'])
    sd = torch.load(tmp_path/'run'/'train'/'model.pt', weights_only=True)
    for n, p in r2['model'].named_parameters():
        if p.requires_grad: torch.testing.assert_close(p.detach(), sd[n].float())


def test_run_full_scale_llama_boolq(tiny_setup, tmp_path):
    s = tiny_setup
    r = dl.run_full_scale(dl.config('llama', 'boolq', s['boolq'], s['ckpt'], skip_list='[3, 1]', out_dir=str(tmp_path/'b'), **SMALL))
    assert r['extra']['skip'] == [1, 3] and 'search' not in r['extra']
    assert list(r['metrics']) == ['DAS2-4L64d BoolQ/accuracy'] and 0 <= r['metrics']['DAS2-4L64d BoolQ/accuracy'] <= 100
    assert r['extra']['eval_split'] == 'validation' and r['extra']['n_eval'] == 6
    n_plain = sum(p.numel() for p in das.PlainAdapter(64, 8).parameters())
    n_rep = sum(p.numel() for p in das.PlainAdapter(64, 32).parameters())
    assert r['efficiency']['trainable_params'] == 2 * n_plain + 2 * n_rep


def test_run_full_scale_errors(tiny_setup, tmp_path):
    s, o = tiny_setup, str(tmp_path/'e')
    run = lambda **kw: dl.run_full_scale(dl.config(**{**dict(model='lavin', task='scienceqa', data_root=s['sq'], ckpt=s['ckpt'],
                                                   vision_ckpt=s['vision_ckpt'], out_dir=o, skip_num=2), **SMALL, **kw}))
    with pytest.raises(ValueError, match="'lavin'.*'llama'"): run(model='vilt')
    with pytest.raises(ValueError, match='unknown task'): run(task='vqav2')
    with pytest.raises(ValueError, match="does not run task"): run(task='boolq')
    with pytest.raises(FileNotFoundError, match='data_root'): run(data_root=str(tmp_path/'none'))
    with pytest.raises(FileNotFoundError, match='ckpt'): run(ckpt=str(tmp_path/'none'))
    with pytest.raises(FileNotFoundError, match='vision_ckpt'): run(vision_ckpt='')
    with pytest.raises(ValueError, match='4 candidate blocks'): run(skip_list='[24, 27, 25, 22]')
    with pytest.raises(ValueError, match='skip_num'): run(skip_num=6)
    with pytest.raises(ValueError, match='precision'): run(precision='int8')
    bad = tmp_path/'badtok'; models.build_tokenizer('ademvl', ['a b c'], vocab_size=300).save_pretrained(bad)
    with pytest.raises(ValueError, match='vocabulary mismatch'): run(text_ckpt=str(bad), skip_list='[1]')
    assert not (tmp_path/'e'/'train').exists()                                  # nothing trained


def test_convert_language_script(tiny_setup, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location('conv', Path(__file__).parents[1]/'data_scripts'/'convert_lavin_language.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    assert mod.main(['--task', 'boolq', '--src', tiny_setup['boolq'], '--root', str(tmp_path), '--dry-run']) is None
    assert not (tmp_path/'boolq').exists()
    mod.main(['--task', 'boolq', '--src', tiny_setup['boolq'], '--root', str(tmp_path)])
    rows, split = dl.read_language_split('boolq', tmp_path/'boolq', 'test')
    assert split == 'validation' and len(rows) == 6 and rows[0]['choices'] == ['yes', 'no'] and rows[0]['answer'] == 0
    assert json.loads((tmp_path/'boolq'/'MANIFEST.json').read_text())['counts'] == {'train': 12, 'validation': 6}
    with pytest.raises(FileNotFoundError, match='no train split'): dl.convert_language_task('csqa', tmp_path, tmp_path/'x')


def test_yamls_match_signature():
    import inspect, yaml
    sig = set(dl.das.Config.names())   # run_full_scale(cfg) takes a das.Config
    nbs = Path(__file__).parents[1]/'nbs'/'params'
    for name, model in (('lavin_sqa', 'lavin'), ('llama_boolq', 'llama'), ('llama_csqa', 'llama'), ('llama_gsm8k', 'llama')):
        d = yaml.safe_load((nbs/f'20_das.{name}.yaml').read_text())
        assert set(d) <= sig, (name, set(d) - sig)
        assert d['model'] == model and d['eta'] == 0.05 and d['batch_size'] == 32
    assert yaml.safe_load((nbs/'20_das.llama_gsm8k.yaml').read_text())['skip_num'] == 4


def test_run_full_scale_launched(tiny_setup, tmp_path):
    s = tiny_setup      # one process under vlrepro.train.launch ('python'); adapters read back from model.pt
    r = dl.run_full_scale(dl.config('llama', 'boolq', s['boolq'], s['ckpt'], skip_list='[2]', out_dir=str(tmp_path/'l'), nproc=1,
                          launcher='python', **SMALL))
    assert r['extra']['train_steps'] == 2 and r['extra']['skip'] == [2]
    sd = torch.load(tmp_path/'l'/'train'/'model.pt', weights_only=True)
    for n, p in r['model'].named_parameters():
        if p.requires_grad: torch.testing.assert_close(p.detach(), sd[n].float())


@pytest.mark.parametrize('task', ['csqa', 'gsm8k'])
def test_evaluate_language(tiny_setup, task):
    tok = dl.load_llama_tokenizer(tiny_setup['ckpt'])
    torch.manual_seed(0)
    m = dl.LaVIN(models.tiny_hf('llama', vocab_size=max(128, len(tok))), skip=[1]).eval()
    raw = (dict(question='Where?', choices=dict(label=list('ABCDE'), text=list('vwxyz')), answerKey='B') if task == 'csqa'
           else dict(question='1+1?', answer='#### 2'))
    ex = dl.LaVINExamples([dl.normalize_language_row(task, raw)] * 3, tok, task, train=False, max_len=64)
    ev = dl.evaluate(m, ex, batch_size=2, max_new_tokens=4)
    assert 0 <= ev['scores']['accuracy'] <= 100 and len(ev['preds']) == 3 and ev['seconds_per_example'] > 0
    assert all(isinstance(p, str) for p in ev['preds']) if task == 'gsm8k' else all(-1 <= p < 5 for p in ev['preds'])
