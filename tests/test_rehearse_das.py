"""DAS parameter sets under `vlrepro rehearse`: the bugs the rehearsals found, the stand-ins through the real loaders,
the data scripts on upstream-format files, and the plans of every 20_das set."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from vlrepro import core, das, data, models
from vlrepro import das_lavin as dl
from vlrepro import das_vl as D
from vlrepro.rehearse import plan_function

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SETS = sorted((ROOT/'nbs'/'params').glob('20_das.*.yaml'))


class Killed(Exception): pass


@pytest.fixture
def kill_once(monkeypatch, tmp_path):
    "A rehearsal kill point that raises instead of SIGKILL-ing the test process (once per marker, as core.kill_point)."
    marker = tmp_path/'killed'
    monkeypatch.setenv('VLREPRO_REHEARSE_KILL', str(marker))
    def kp(what=''):
        if marker.exists(): return
        marker.write_text(what); raise Killed(what)
    monkeypatch.setattr(core, 'kill_point', kp)
    return marker


# ---------------------------------------------------------------------------------------------- the DAS search / fit loops
def _search_setup(seed=0):
    from transformers import ViltModel
    torch.manual_seed(seed)
    cfg = das.tiny_vilt_config(vocab_size=32)
    m = das.ViltVQA(ViltModel(cfg), 4); das.patch(m, search=True)
    g = core.make_generator(seed)
    batches = [dict(input_ids=torch.randint(1, 32, (4, 8), generator=g), attention_mask=torch.ones(4, 8, dtype=torch.long),
                    pixel_values=torch.randn(4, 3, 32, 32, generator=g), target=torch.eye(4)[torch.randint(0, 4, (4,), generator=g)],
                    label=torch.zeros(4, dtype=torch.long)) for _ in range(3)]
    return m, batches


def _run_search(tmp, name):
    m, batches = _search_setup()
    cfg = das.SearchConfig(k=2, das_epoch=2, das_turn=1, warmup_epoch=1)
    torch.manual_seed(1)
    return das.search(m, das.vqa_loss, batches, batches[0], cfg, state_path=tmp/name), m


def test_search_stops_at_a_kill_point_after_saving_and_resumes_exactly(tmp_path, kill_once):
    "Before: das.search had no kill point, so a rehearsal of a set could never interrupt the search."
    with pytest.raises(Killed, match=r'search step 4/6'):
        _run_search(tmp_path, 'a.pt')
    assert (tmp_path/'a.pt').exists() and kill_once.exists()
    resumed, m1 = _run_search(tmp_path, 'a.pt')                # the marker exists: no second kill
    clean, m2 = _run_search(tmp_path, 'b.pt')
    assert resumed.skip == clean.skip and resumed.trajectory == clean.trajectory
    for (n, p), (_, q) in zip(das.trainable_parameters(m1).items(), das.trainable_parameters(m2).items()):
        torch.testing.assert_close(p, q, msg=n)


def _fit(tmp, name, epochs=2):
    m, batches = _search_setup()
    das.unpatch(m)
    torch.manual_seed(3)
    return das.fit(m, das.vqa_loss, lambda e: batches, epochs, state_path=tmp/name if name else ''), m


def test_fit_checkpoints_resumes_and_does_not_redo_a_finished_fit(tmp_path, kill_once):
    "Before: das.fit kept no checkpoint: the demo's trainings restarted from scratch after a kill."
    with pytest.raises(Killed, match=r'step 1/6'):
        _fit(tmp_path, 'fit.pt', epochs=2)
    h1, m1 = _fit(tmp_path, 'fit.pt', epochs=2)
    h2, m2 = _fit(tmp_path, '', epochs=2)
    assert h1 == pytest.approx(h2, rel=1e-6)
    torch.testing.assert_close(dict(m1.named_parameters())['vqa_classifier.0.weight'], dict(m2.named_parameters())['vqa_classifier.0.weight'])
    # finished: a rerun loads the final state and trains nothing
    h3, m3 = _fit(tmp_path, 'fit.pt', epochs=2)
    assert h3 == h1
    torch.testing.assert_close(dict(m3.named_parameters())['vqa_classifier.0.weight'], dict(m1.named_parameters())['vqa_classifier.0.weight'])
    with pytest.raises(ValueError, match='other settings'): _fit(tmp_path, 'fit.pt', epochs=3)


# ---------------------------------------------------------------------------------------------- stand-ins, real loaders
def test_meta_tokenizer_model_loads_with_its_vocabulary(tmp_path):
    "Before: transformers 5 built LlamaTokenizer(vocab_file=tokenizer.model) as an empty 3-token tokenizer (no protobuf)."
    texts = ['The answer is B. BECAUSE: a dog has fur.', 'Question: Which is a mammal? Options: (A) frog (B) dog Response:']
    seven = dl.write_meta_llama(tmp_path/'llama', texts * 20, layers=2)
    assert seven == tmp_path/'llama'/'7B' and (tmp_path/'llama'/'tokenizer.model').is_file()
    tok = dl.load_llama_tokenizer(seven)                        # tokenizer.model one level up, as Meta ships it
    assert len(tok) > 256 and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    ids = tok.encode('The answer is B.', add_special_tokens=False)
    assert ids and tok.decode(ids) == 'The answer is B.' and tok.encode('x')[0] == 1
    llm = dl.load_llama(seven)                                  # consolidated.00.pth + params.json through the real loader
    dl.check_vocab(tok, llm)
    assert llm.config.num_hidden_layers == 2 and llm.get_input_embeddings().weight.shape[0] == len(tok)
    import pickle; assert len(pickle.loads(pickle.dumps(tok))) == len(tok)


def test_vilt_standin_round_trip(tmp_path):
    texts = D.write_vilt_arrows(tmp_path/'arrows', 'vqav2', n_images=2)
    tok = D.write_bert_folder(tmp_path/'bert', texts)
    assert (tmp_path/'bert'/'vocab.txt').is_file() and (tmp_path/'bert'/'config.json').is_file()
    tok2 = models.load_tokenizer(tmp_path/'bert')
    assert len(tok2) == len(tok) and tok2(texts[0])['input_ids'][0] == tok2.cls_token_id
    assert tok2.unk_token_id not in tok2(texts[0])['input_ids']
    D.write_vilt_ckpt(tmp_path/'vilt.ckpt', len(tok))
    raw = torch.load(tmp_path/'vilt.ckpt', weights_only=False)
    assert 'transformer.blocks.0.attn.qkv.weight' in raw['state_dict'] and 'itm_score.fc.weight' in raw['state_dict']
    m, heads = D.load_vilt(tmp_path/'vilt.ckpt')
    assert m.config.vocab_size == len(tok) and 'itm_score.fc.weight' in heads
    back = D.vilt_to_official(m)['state_dict']
    for k, v in back.items(): torch.testing.assert_close(v, raw['state_dict'][k])


def test_meter_standin_round_trip(tmp_path):
    texts = D.write_nlvr2_json(tmp_path/'nlvr2', n_pairs=2)
    D.write_meter_standin(tmp_path/'meter.ckpt', tmp_path/'clip', tmp_path/'roberta', texts)
    assert json.loads((tmp_path/'clip'/'config.json').read_text())['model_type'] == 'clip'   # a whole CLIPModel folder
    m, heads = D.load_meter(tmp_path/'meter.ckpt', tmp_path/'clip', tmp_path/'roberta', image_size=64)   # 48 -> 64: resized
    assert len(m.cross_modal_text_layers) == 3 and 'itm_score.fc.weight' in heads
    tok = models.load_tokenizer(tmp_path/'roberta')
    t = tok(texts[:2], padding='max_length', max_length=50, truncation=True, return_tensors='pt')
    out = m.eval()(t['input_ids'], t['attention_mask'], torch.randn(2, 3, 64, 64))['cls_feats']
    assert out.shape == (2, 64) and torch.isfinite(out).all()


def test_clip_l14_standin_loads_as_vision_tower(tmp_path):
    from transformers import CLIPVisionModel
    dl.write_clip_folder(tmp_path/'clip')
    v = CLIPVisionModel.from_pretrained(tmp_path/'clip', local_files_only=True)
    assert v.config.image_size == 32 and dl.clip_cls_features(v, torch.randn(1, 3, 32, 32)).shape == (1, 6, 32)


# ---------------------------------------------------------------------------------------------- data scripts, upstream files
def test_scienceqa_upstream_files_through_get_scienceqa(tmp_path):
    dl.write_scienceqa_raw(tmp_path/'raw', {'train': 4, 'val': 3, 'test': 6})
    assert set(json.loads((tmp_path/'raw'/'pid_splits.json').read_text())) == {'train', 'val', 'test'}
    das.run_data_script('get_scienceqa.py', ['--src', tmp_path/'raw', '--root', tmp_path/'data'])
    test = data.read_jsonl(tmp_path/'data'/'scienceqa'/'test.jsonl')
    assert len(test) == 6
    from vlrepro import metrics
    cats = metrics.scienceqa_categories(test)
    assert all(cats[c].any() for c in ('NAT', 'SOC', 'LAN', 'TXT', 'IMG', 'NO', 'G1-6', 'G7-12'))   # every column defined
    ds = data.MCQADataset(tmp_path/'data'/'scienceqa', 'test')
    assert sum(bool(ds[i]['has_image']) for i in range(len(ds))) >= 1


@pytest.mark.parametrize('task', ['boolq', 'csqa', 'gsm8k'])
def test_language_upstream_jsonl_through_convert_script(tmp_path, task):
    dl.write_language_raw(tmp_path/'raw', task)
    das.run_data_script('convert_lavin_language.py', ['--task', task, '--src', tmp_path/'raw', '--root', tmp_path/'data'])
    rows, split = dl.read_language_split(task, tmp_path/'data'/task, 'validation' if task != 'gsm8k' else 'test')
    assert len(rows) == 6 and split in ('validation', 'test')
    r = rows[0]
    if task == 'gsm8k': assert r['answer'].isdigit() and '<<' in r['rationale']
    else: assert 0 <= r['answer'] < len(r['choices'])


def test_vilt_arrows_through_convert_script(tmp_path):
    D.write_vilt_arrows(tmp_path/'arrows', 'f30k', n_images=3)
    das.run_data_script('convert_vilt_arrow.py', ['--src', tmp_path/'arrows', '--task', 'f30k', '--root', tmp_path/'data'])
    ds = data.RetrievalDataset(tmp_path/'data'/'f30k_vilt', 'test')
    assert len(ds) == 3 and len(ds.image_captions[0]) == 5
    with pytest.raises(RuntimeError, match='failed'): das.run_data_script('convert_vilt_arrow.py', ['--task', 'f30k'])


# ---------------------------------------------------------------------------------------------- pipelines
def test_vl_grad_accum_counts_the_processes(tmp_path, monkeypatch):
    "Before: with nproc > 1 the launched training kept accumulation batch_size / per_gpu_batchsize: the global batch doubled."
    from vlrepro import train
    seen = {}
    class Stop(Exception): pass
    def fake_launch(task, cfg, nproc, launcher, task_args): seen.update(cfg=cfg, nproc=nproc); raise Stop
    monkeypatch.setattr(train, 'launch', fake_launch)
    p = yaml.safe_load((ROOT/'nbs'/'params'/'20_das.vilt_vqa.yaml').read_text())
    D.write_standins(p, tmp_path)
    with pytest.raises(Stop):
        D.run_full_scale(D.config('vilt', 'vqav2', str(tmp_path/p['data_root']), str(tmp_path/p['ckpt']), text_ckpt=str(tmp_path/p['text_ckpt']),
                         skip_list='[1]', per_gpu_batchsize=2, batch_size=8, nproc=2, image_size=64, device='cpu',
                         out_dir=str(tmp_path/'run'), max_steps=1))
    assert seen['nproc'] == 2 and seen['cfg'].grad_accum == 2 and seen['cfg'].batch_size == 2    # 2 x 2 x 2 = 8
    with pytest.raises(ValueError, match=r'multiple of per_gpu_batchsize=2 x 2'):
        D.run_full_scale(D.config('vilt', 'vqav2', str(tmp_path/p['data_root']), str(tmp_path/p['ckpt']), text_ckpt=str(tmp_path/p['text_ckpt']),
                         per_gpu_batchsize=2, batch_size=6, nproc=2, out_dir=str(tmp_path/'run2')))


def test_meter_vqa_fills_the_flops_row_with_whole_model_flops(tmp_path, monkeypatch):
    "Before: scale 'partial' (not a scale label), no status, no global batch, and the METER FLOPs row stayed empty."
    p = yaml.safe_load((ROOT/'nbs'/'params'/'20_das.meter_vqa.yaml').read_text())
    D.write_standins(p, tmp_path)
    kw = dict(vision_ckpt=str(tmp_path/p['vision_ckpt']), text_ckpt=str(tmp_path/p['text_ckpt']), skip_list='[0, 3, 4, 5]',
              per_gpu_batchsize=2, batch_size=4, image_size=64, device='cpu', max_steps=1, limit_eval=2, eval_split='test')
    r = D.run_full_scale(D.config('meter', 'vqav2', str(tmp_path/p['data_root']), str(tmp_path/p['ckpt']), out_dir=str(tmp_path/'run'), **kw))
    assert (r['scale'], r['status']) == ('real-data', 'complete')
    assert r['extra']['global_batch'] == dict(per_process=2, processes=1, grad_accum=2, global_=4, recipe=4)
    e = r['efficiency']
    assert 0 < e['model_flops_reduction'] < e['flops_reduction'] < 1     # the encoders are never skipped
    row = r['metrics']['METER DAS VQA2.0/flops_reduction']
    assert row == pytest.approx(100 * e['model_flops_reduction'])
    cmp = core.compare('das', {tuple(k.split('/', 1)): v for k, v in r['metrics'].items()}, r['scale'])
    assert [c['paper'] for c in cmp if (c['setting'], c['metric']) == ('METER DAS VQA2.0', 'flops_reduction')] == [11.97]
    monkeypatch.setenv('VLREPRO_REHEARSAL', '1')
    assert core.scale_label(True, full=False) == 'rehearsal'


def test_lavin_rows_in_a_rehearsal_are_the_7b_rows(monkeypatch):
    assert dl.setting_name('lavin', 6, 8, 64) == 'DAS6-8L64d'
    monkeypatch.setenv('VLREPRO_REHEARSAL', '1')
    assert dl.setting_name('lavin', 6, 8, 64) == 'DAS6-7B'


def test_required_inputs_name_the_data_script(tmp_path):
    with pytest.raises(FileNotFoundError, match='get_scienceqa.py'):
        core.require_inputs(dl.required_inputs(model='lavin', task='scienceqa', data_root=str(tmp_path/'sqa')))
    with pytest.raises(FileNotFoundError, match=r"split 'validation'.*convert_lavin_language.py --task csqa"):
        core.require_inputs(dl.required_inputs(model='llama', task='csqa', data_root=str(tmp_path/'c'), eval_split='validation'))


# ---------------------------------------------------------------------------------------------- the sets and their plans
@pytest.mark.parametrize('path', SETS, ids=[p.stem for p in SETS])
def test_sets_use_relative_paths_and_honest_batches(path):
    p = yaml.safe_load(path.read_text())
    for k in ('ckpt', 'vision_ckpt', 'text_ckpt', 'data_root'):
        v = p.get(k) or ''
        assert not Path(v).is_absolute(), (k, v)
        if v: assert v.startswith('ckpt/' if k != 'data_root' else 'data/'), (k, v)
    plan = plan_function('20_das', p)(p)   # the module that owns the set
    from vlrepro.rehearse import check_recipe_batch
    check_recipe_batch(plan['recipe_batch'])
    if p.get('model') in ('lavin', 'llama'):
        assert p['nproc'] == 2 and plan['nproc'] == 2 and plan['overrides']['nproc'] == 2
    assert not {'ckpt', 'vision_ckpt', 'text_ckpt', 'data_root', 'model', 'task', 'skip_num'} & set(plan['overrides'])


def test_a_set_with_the_wrong_batch_fails_the_recipe_check():
    from vlrepro.rehearse import check_recipe_batch
    p = yaml.safe_load((ROOT/'nbs'/'params'/'20_das.lavin_sqa.yaml').read_text())
    check_recipe_batch(dl.rehearsal({**p, 'nproc': 1})['recipe_batch'])        # 1 GPU x 8 accumulation keeps 32
    with pytest.raises(ValueError, match="recipe's is 32"): check_recipe_batch(dl.rehearsal({**p, 'batch_size': 64})['recipe_batch'])


def test_convert_llama_keeps_the_tokenizer_vocabulary(tmp_path):
    "Before: convert_llama.py saved LlamaTokenizer(vocab_file=tokenizer.model), which transformers 5 builds empty (3 ids)."
    texts = ['Question: how many dogs are there? Response: The answer is 3.'] * 20
    dl.write_meta_llama(tmp_path/'weights', texts, layers=2)
    das.run_data_script('convert_llama.py', ['--src', tmp_path/'weights', '--size', '7B', '--out', tmp_path/'hf', '--dtype', 'float32'])
    tok = dl.load_llama_tokenizer(tmp_path/'hf')
    assert len(tok) == len(dl.load_llama_tokenizer(tmp_path/'weights'/'7B')) > 256
    llm = dl.load_llama(tmp_path/'hf')
    dl.check_vocab(tok, llm)
    ids = torch.tensor([tok.encode('how many dogs')])
    torch.testing.assert_close(llm(ids).logits, dl.load_llama(tmp_path/'weights'/'7B')(ids).logits)
