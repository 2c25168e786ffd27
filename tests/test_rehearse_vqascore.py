"VQAScore rehearsal (issue 13): stand-ins through the real loaders, the data scripts on upstream files, the plan, and the fixes."
import csv, json, subprocess, sys, zipfile
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from vlrepro import vqascore as V, vqascore_eval as E, models, core
from vlrepro.rehearse import check_recipe_batch, Plan
from vlrepro.run import load_param_set, find_nbs

REPO = Path(__file__).resolve().parents[1]
SETS = sorted((REPO/'nbs'/'params').glob('50_vqascore.*.yaml'))

def _script(name, *args):
    return subprocess.run([sys.executable, f'data_scripts/{name}', *map(str, args)], cwd=REPO, capture_output=True, text=True)

@pytest.fixture(scope='module')
def standins(tmp_path_factory):
    d = tmp_path_factory.mktemp('ckpt')
    flant5 = E.write_flant5_standin(d/'flan-t5-xl')
    tower = E.write_clip_standin(d/'clip-vit-large-patch14-336')
    released = E.write_clip_flant5_standin(d/'clip-flant5-xl', flant5, tower)
    proj = E.write_projector_standin(d/'clip-flant5-xl-stage-1'/'mm_projector.bin', flant5, tower)
    return dict(flant5=flant5, tower=tower, released=released, proj=proj)

# --- fixes: each test failed before its fix ---------------------------------------------------------------------

def test_preference_and_ranking_are_percent_once():
    "issue 14 item 6: metrics already return percentages; benchmark_scores multiplied them by 100 again (5000.0)."
    s = torch.tensor([[.7, .2], [.3, .3]]).view(2, 2, 1)
    assert E.benchmark_scores('preference', s, [{'preferred': 0}, {'preferred': 1}])['acc'] == 50.0
    r = E.benchmark_scores('ranking', torch.tensor([[.9, .1, .5], [.1, .9, .5]]).view(2, 3, 1),
                           [{'human': [3., 1., 2.]}, {'human': [3., 1., 2.]}])
    assert r['rank_acc'] == 50.0

def test_official_state_dict_with_embed_tokens_alias_loads(standins):
    "issue 14 item 12: the authors' state_dict() has a top-level `embed_tokens.weight` alias; the loader raised on it."
    sd = {}
    for f in sorted(standins['released'].glob('pytorch_model-*.bin')): sd.update(torch.load(f, weights_only=True))
    assert {'embed_tokens.weight', 'shared.weight', 'encoder.embed_tokens.weight', 'lm_head.weight',
            'mm_projector.0.weight'} <= set(sd)
    assert any(k.startswith('vision_tower.vision_tower.vision_model.') for k in sd)
    m = E.load_clip_flant5(standins['released'], standins['tower'])
    torch.testing.assert_close(m.t5.shared.weight, sd['shared.weight'].float())
    torch.testing.assert_close(m.mm_projector[2].weight, sd['mm_projector.2.weight'].float())
    # the tower comes from the checkpoint's own copy (transformers-4 `vision_model.` keys)
    k = next(k for k in sd if k.endswith('embeddings.patch_embedding.weight'))
    torch.testing.assert_close(m.vision_tower.state_dict()['embeddings.patch_embedding.weight'], sd[k].float())
    # a file holding only an alias of the shared embedding still loads
    proj, tw, t5sd = E.split_official_state({'embed_tokens.weight': sd['shared.weight'], 'mm_projector.0.bias': sd['mm_projector.0.bias']})
    assert set(t5sd) == {'shared.weight'} and set(proj) == {'0.bias'} and not tw

def test_score_folder_prompt_strings_and_retry_failed(tmp_path):
    "issue 16 item 5: a list of prompt strings failed (TypeError); failed rows counted as done and were never retried."
    tok = models.build_tokenizer('vqascore', V.world_corpus()); m = V.tiny_clip_flant5(len(tok), seed=0)
    for i in range(2): Image.fromarray(np.full((24, 40, 3), 40 * i, np.uint8)).save(tmp_path/f'{i}.png')
    (tmp_path/'2.png').write_bytes(b'broken')
    sc, log = V.Scorer(m, tok), []
    c = E.score_folder(sc, tmp_path, ['a red circle', 'a blue square', 'a green triangle'], tmp_path/'s.csv', log=log.append)
    assert c == dict(scored=2, skipped=1, resumed=0, retried=0)      # one prompt per image (3 prompts, 3 images)
    rows = list(csv.DictReader((tmp_path/'s.csv').open()))
    assert [(r['image'], r['prompt']) for r in rows] == [('0.png', 'a red circle'), ('1.png', 'a blue square'),
                                                         ('2.png', 'a green triangle')]
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path/'2.png')   # fixed: the rerun retries it
    c = E.score_folder(sc, tmp_path, ['a red circle', 'a blue square', 'a green triangle'], tmp_path/'s.csv', log=log.append)
    assert c == dict(scored=1, skipped=0, resumed=2, retried=1)
    rows = list(csv.DictReader((tmp_path/'s.csv').open()))
    assert len(rows) == 3 and all(r['score'] for r in rows)
    assert E.score_folder(sc, tmp_path, ['x', 'y'], tmp_path/'all.csv', log=log.append)['scored'] == 6   # every prompt x image
    with pytest.raises(ValueError, match="one prompt per image"): E.prompt_rows(['x', 'y'], tmp_path, 'zip')

def test_score_benchmark_resumes(tmp_path):
    "Winoground scoring appends per-item rows; a rerun scores only what is missing (and a line cut by a kill again)."
    calls = []
    def scorer(images, texts): calls.append(texts); return torch.tensor([[1., 0.], [0., 1.]]) * len(calls)
    items = [dict(id=str(i), images=['a', 'b'], texts=[f't{i}', f'u{i}']) for i in range(3)]
    first = E.score_benchmark(scorer, items[:2], tmp_path/'s.jsonl')
    with open(tmp_path/'s.jsonl', 'a') as f: f.write('{"id": "2", "tex')            # killed mid-line
    again = E.score_benchmark(scorer, items, tmp_path/'s.jsonl')
    assert len(calls) == 3 and torch.equal(again[:2], first)

def test_full_inputs_name_missing_parameters():
    with pytest.raises(ValueError, match='needs base_model'):
        E.full_inputs(1, data_root='data', vision_tower_path='t', data_json='j', image_folder='i')
    need = E.full_inputs(0, data_root='data', model_path='m', tokenizer_path='t', vision_tower_path='v')
    assert need['winoground'][0].endswith('winoground/test.jsonl') and 'get_winoground.py' in need['winoground'][1]
    with pytest.raises(FileNotFoundError, match='get_winoground.py'): core.require_inputs(need)

# --- stand-ins through the project's real loaders ------------------------------------------------------------------

def test_flant5_standin_round_trip(standins):
    import transformers
    p = standins['flant5']
    assert {'spiece.model', 'tokenizer.json', 'tokenizer_config.json', 'config.json'} <= {f.name for f in p.iterdir()}
    assert len(list(p.glob('model-*-of-*.safetensors'))) == 2
    tok = models.load_tokenizer(p)
    assert tok('').input_ids == [1] and tok.pad_token_id == 0 and tok.unk_token_id == 2 and tok('Yes').input_ids[-1] == 1
    assert V.tokenizer_image_token('<image>', tok) == [1, V.IMAGE_TOKEN_INDEX, 1]
    assert len(tok) > 100 and '<extra_id_0>' in tok.get_vocab()                     # sentinel ids as FlanT5 has
    t5 = models.load_hf('t5', p)
    assert t5.config.vocab_size > len(tok) and t5.lm_head.weight.data_ptr() != t5.shared.weight.data_ptr()
    spm = transformers.AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    assert spm('a red circle').input_ids == tok('a red circle').input_ids

def test_clip_standin_round_trip(standins):
    tower = models.load_hf('clip_vision', standins['tower'])
    assert json.loads((standins['tower']/'config.json').read_text())['model_type'] == 'clip'   # a whole CLIPModel folder
    assert (standins['tower']/'preprocessor_config.json').exists()
    clip = models.load_hf('clip', standins['tower'])
    torch.testing.assert_close(tower.state_dict()['embeddings.patch_embedding.weight'],
                               clip.vision_model.embeddings.patch_embedding.weight)

def test_released_standin_scores_and_train_task_loads(standins, tmp_path):
    tok = models.load_tokenizer(standins['flant5'])
    m = E.load_clip_flant5(standins['released'], standins['tower'])
    cfg = json.loads((standins['released']/'config.json').read_text())
    assert cfg['model_type'] == 'clip_t5' and cfg['mm_vision_tower'] == 'openai/clip-vit-large-patch14-336'
    s = V.Scorer(m, tok)([np.zeros((30, 40, 3), np.uint8)], ['a red circle left of a blue square'])
    assert s.shape == (1, 1) and 0 < float(s) <= 1
    with pytest.raises(FileNotFoundError, match='vision_tower_path'): E.load_clip_flant5(standins['released'])
    m2 = V.tiny_clip_flant5(seed=1, vision_tower=m.vision_tower, vocab_size=m.t5.config.vocab_size)
    E.load_projector(m2, standins['proj'])
    assert torch.equal(m2.mm_projector[0].weight, torch.load(standins['proj'], weights_only=True)['mm_projector.0.weight'].float())

def test_stage2_export_loads_as_released(standins, tmp_path):
    "A stage-2 training's model.pt becomes a released-style folder that load_clip_flant5 reads back."
    m = E.load_clip_flant5(standins['released'], standins['tower'])
    torch.save(m.state_dict(), tmp_path/'model.pt')
    out = E.export_trained(tmp_path/'model.pt', standins['flant5'], tmp_path/'clip-flant5')
    m2 = E.load_clip_flant5(out, standins['tower'])
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()): torch.testing.assert_close(a, b, msg=k)

# --- data scripts on upstream-format files ----------------------------------------------------------------------

def test_get_winoground_from_zip_and_folder(tmp_path):
    raw = E.write_winoground_raw(tmp_path/'raw', n=2)
    assert _script('get_winoground.py', '--src', raw, '--root', tmp_path/'d', '--dry-run').returncode == 0
    r = _script('get_winoground.py', '--src', raw, '--root', tmp_path/'d')
    assert r.returncode == 0, r.stderr
    items = E.read_winoground(tmp_path/'d'/'winoground')
    assert len(items) == 2 and items[0]['texts'] == [E.STANDIN_CAPTIONS[0], E.STANDIN_CAPTIONS[1]]
    assert all(p.is_file() for it in items for p in it['images']) and items[0]['images'][0].name == 'ex_0_img_0.png'
    assert json.loads((tmp_path/'d'/'winoground'/'MANIFEST.json').read_text())['counts'] == {'test': 2}
    with zipfile.ZipFile(raw/'data'/'images.zip') as z: z.extractall(tmp_path/'unz')   # an unpacked images/ folder
    (tmp_path/'unz'/'examples.jsonl').write_text((raw/'data'/'examples.jsonl').read_text())
    assert _script('get_winoground.py', '--src', tmp_path/'unz', '--root', tmp_path/'d2').returncode == 0
    assert (tmp_path/'d2'/'winoground'/'images').is_symlink() and len(E.read_winoground(tmp_path/'d2'/'winoground')) == 2
    (tmp_path/'bad').mkdir(); (tmp_path/'bad'/'examples.jsonl').write_text('{"id": 0}\n')
    r = _script('get_winoground.py', '--src', tmp_path/'bad', '--root', tmp_path/'d3')
    assert r.returncode == 2 and 'examples.jsonl:1: missing' in r.stderr

def test_llava_stage_data_through_get_llava(tmp_path):
    "LLaVA-Pretrain and the 665K mix, converted by get_llava.py, are what the stage datasets read."
    raw = E.write_llava_pretrain_raw(tmp_path/'LLaVA-Pretrain', n=3)
    r = _script('get_llava.py', '--src', raw, '--json', 'blip_laion_cc_sbu_558k.json', '--images', raw/'images',
                '--name', 'llava_pretrain', '--root', tmp_path/'data')
    assert r.returncode == 0, r.stderr
    ds = E.LlavaT5Dataset(tmp_path/'data'/'llava_pretrain'/'train.jsonl', tmp_path/'data'/'llava_pretrain'/'images', 1, image_size=32)
    it = ds[0]
    assert len(ds) == 3 and it['encoder'].startswith('<image>') and tuple(it['pixels'].shape) == (3, 32, 32)
    raw = E.write_llava_mix_raw(tmp_path/'llava')
    r = _script('get_llava.py', '--src', raw, '--json', 'llava_v1_5_mix665k.json', '--name', 'llava_mix665k', '--root', tmp_path/'data')
    assert r.returncode == 0, r.stderr
    ds = E.LlavaT5Dataset(tmp_path/'data'/'llava_mix665k'/'train.jsonl', tmp_path/'data'/'llava_mix665k'/'images', 2, image_size=32)
    assert len(ds) == 8                                    # 7 records, one with two turns
    text_only = [ds[i] for i in range(len(ds)) if not ds[i]['has_image']]   # the ShareGPT sample, with the official zero dummy
    assert len(text_only) == 1 and text_only[0]['pixels'].abs().sum() == 0 and '<image>' not in text_only[0]['encoder']

# --- the plan ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', SETS, ids=lambda p: p.stem)
def test_plan_of_every_set(path):
    params = load_param_set(path, '50_vqascore')
    plan = Plan.from_dict(E.rehearsal(params), f' of {path.name}')
    allowed = {'clip_steps', 'stage1_steps', 'stage2_steps', 'n_train', 'n_test', 'batch_size', 'bench_texts',
               'per_device_batch', 'nproc', 'device', 'precision'}
    assert set(plan.overrides) <= allowed
    for k, v in params.items():   # every path of the set is relative to the one root
        if k in ('model_path', 'tokenizer_path', 'vision_tower_path', 'base_model', 'pretrain_mm_mlp_adapter', 'data_root',
                 'data_json', 'image_folder'):
            assert not Path(v).is_absolute(), (k, v)
    if params.get('train_stage'):
        assert plan.nproc == 2 and plan.overrides['nproc'] == 2 and params['nproc'] == 8
        assert check_recipe_batch(plan.recipe_batch).endswith(f"(recipe {256 if params['train_stage'] == 1 else 96})")
    elif params.get('preset') == 'full':
        assert not plan.trains and plan.rows == [(plan.metric.split('/')[0], 'winoground_group')]
    else: assert plan.branch == 'cpu-demo' and plan.trains

# --- stage 2 under ZeRO-3: every process must make the same module calls -----------------------------------------

def test_splice_embeds_once_per_batch():
    "A ZeRO-3 deadlock (rehearsal of xl-stage2): the embedding was called once per text chunk, so a process holding a text-only row made fewer parameter gathers than one holding an image row."
    emb = torch.nn.Embedding(10, 4); calls = []
    emb.register_forward_hook(lambda *a: calls.append(1))
    for ids in (torch.tensor([[3, 4, 1]]), torch.tensor([[5, -200, 6, -200, 1]])):
        calls.clear(); V.splice_image_features(ids, torch.randn(2, 3, 4), emb); assert len(calls) == 1

def test_text_only_sample_runs_tower_and_projector(standins, tmp_path):
    "Text-only samples carry the official zero dummy image: the tower and projector run and the projector gets a gradient."
    raw = E.write_llava_mix_raw(tmp_path/'llava')
    assert _script('get_llava.py', '--src', raw, '--json', 'llava_v1_5_mix665k.json', '--name', 'mix', '--root', tmp_path/'data').returncode == 0
    task = E.train_task(2, str(standins['flant5']), str(standins['tower']), str(tmp_path/'data'/'mix'/'train.jsonl'),
                        str(tmp_path/'data'/'mix'/'images'), str(standins['proj']), gradient_checkpointing=False)
    ds = task['train_data']; i = next(i for i in range(len(ds)) if not ds[i]['has_image'])
    model, calls = task['model'], []
    model.mm_projector.register_forward_hook(lambda *a: calls.append('projector'))
    model.vision_tower.register_forward_hook(lambda *a: calls.append('tower'))
    batch = task['collate_fn']([ds[i]])
    model.train(); task['loss_fn'](model, batch).backward()
    assert calls == ['tower', 'projector'] and model.mm_projector[0].weight.grad is not None

def test_group_by_modality_order_and_sharding(standins, tmp_path, monkeypatch):
    lens = [5, -3, 7, 2, 9, 4, 6, -1, 8, 3, -2, 1]
    order = E.modality_grouped_order(lens, batch=2, world=2, seed=0)
    assert sorted(order) == list(range(12)) and order == E.modality_grouped_order(lens, 2, 2, seed=0)
    assert all(lens[i] > 0 for i in order[:8]) and order[8:] == sorted(order[8:])
    sh = E.shard_order(order, batch=2, processes=2)
    assert sh[0::2][:4] == order[0:2] + order[4:6] and sh[1::2][:4] == order[2:4] + order[6:8]
    raw = E.write_llava_mix_raw(tmp_path/'llava')
    _script('get_llava.py', '--src', raw, '--json', 'llava_v1_5_mix665k.json', '--name', 'mix', '--root', tmp_path/'data')
    monkeypatch.setenv('WORLD_SIZE', '2')
    task = E.train_task(2, str(standins['flant5']), str(standins['tower']), str(tmp_path/'data'/'mix'/'train.jsonl'),
                        str(tmp_path/'data'/'mix'/'images'), str(standins['proj']), group_by_modality_length=True,
                        per_device_batch=1, grad_accum=2)
    assert isinstance(task['train_data'], E.Reordered) and sorted(task['train_data'].order) == list(range(8))
