"ADEM-VL rehearsal: stand-ins in the official layouts through the real loaders, the LaVIN/ScienceQA data scripts, the plans, resume."
import json, math, os, subprocess, sys
from pathlib import Path
import pytest, torch
from vlrepro import ademvl, ademvl_sqa, core, data, run as R

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SETS = sorted((ROOT / 'nbs' / 'params').glob('40_ademvl.*.yaml'))
FULL = [s for s in SETS if R.load_param_set(s).get('data_root')]


def _script(name, *args):
    return subprocess.run([sys.executable, str(ROOT / 'data_scripts' / name), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})


# ---------------------------------------------------------------- stand-ins through the real loaders
def test_meta_tokenizer_model_encodes(tmp_path):
    "Bug: transformers 5's LlamaTokenizer(vocab_file=...) ignored Meta's tokenizer.model (3 ids, every text -> [])."
    import sentencepiece as spm
    texts = ['Context: N/A\nQuestion: Which word is a color?\nOptions: (A) red (B) dog\nResponse:The answer is A.', 'Image: N/A']
    ademvl_sqa.write_meta_llama(tmp_path / 'w', texts * 10)
    tok = ademvl_sqa.load_llama_tokenizer(tmp_path / 'w', 'meta')
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / 'w' / 'tokenizer.model'))
    assert len(tok) == sp.get_piece_size() > 3 and (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    enc = ademvl_sqa.encoder_of(tok)
    assert enc(texts[0]) == sp.encode(texts[0]) and len(enc('Image: ')) > 0   # upstream: sp_model.encode(s), no BOS/EOS
    assert tok.decode([1] + enc('The answer is A.') + [2], skip_special_tokens=True) == 'The answer is A.'
    # saved into a HF folder (convert_llama.py) it reads back the same
    tok.save_pretrained(tmp_path / 'hf')
    assert ademvl_sqa.encoder_of(ademvl_sqa.load_llama_tokenizer(tmp_path / 'hf', 'hf'))(texts[0]) == sp.encode(texts[0])


def test_meta_llama_standin_roundtrip(tmp_path):
    "Meta's layout (fp16 consolidated.00.pth with rope.freqs, params.json with vocab -1) -> load_llama = the model it came from."
    from transformers import LlamaForCausalLM
    ademvl_sqa.write_meta_llama(tmp_path / 'w', ['a b c d e f g'] * 20, seed=3)
    sd = torch.load(tmp_path / 'w' / '7B' / 'consolidated.00.pth', weights_only=True)
    params = json.loads((tmp_path / 'w' / '7B' / 'params.json').read_text())
    assert 'rope.freqs' in sd and sd['layers.0.attention.wq.weight'].dtype == torch.float16 and params['vocab_size'] == -1
    n_vocab = sd['tok_embeddings.weight'].shape[0]
    with torch.random.fork_rng():
        torch.manual_seed(3)
        ref = LlamaForCausalLM(ademvl_sqa.llama_config_from_params(params, n_vocab)).eval()
    ref.load_state_dict({k: v.half().float() for k, v in ref.state_dict().items()})
    back = ademvl_sqa.load_llama(tmp_path / 'w', 'meta', '7B', dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 7, 3]])
    with torch.no_grad(): torch.testing.assert_close(back(ids).logits, ref(ids).logits)


def test_openai_clip_archive_with_text_tower(tmp_path):
    "Bug: a whole OpenAI CLIP (text tower keys transformer.* beside visual.transformer.*) failed to load: the towers collided."
    p = ademvl_sqa.write_openai_clip(tmp_path / 'clip' / 'ViT-L-14.pt')
    arch = torch.jit.load(str(p), map_location='cpu')
    sd = arch.state_dict()
    assert 'visual.conv1.weight' in sd and 'transformer.resblocks.0.attn.in_proj_weight' in sd and 'token_embedding.weight' in sd
    m = ademvl_sqa.load_clip_vision(p, dtype=torch.float32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(pixel_values=x).pooler_output @ sd['visual.proj'], arch.encode_image(x), rtol=1e-5, atol=1e-5)
    pytest.importorskip('open_clip')   # the archive's module tree is OpenAI's: open_clip loads it and agrees
    from open_clip.model import CLIP, CLIPVisionCfg, CLIPTextCfg
    ref = CLIP(embed_dim=32, quick_gelu=True, vision_cfg=CLIPVisionCfg(layers=3, width=64, head_width=64, patch_size=4, image_size=32),
               text_cfg=CLIPTextCfg(context_length=16, vocab_size=64, width=32, heads=1, layers=1)).eval()
    ref.load_state_dict(sd, strict=False)
    assert set(ref.state_dict()) - {'attn_mask'} <= set(sd)
    with torch.no_grad(): torch.testing.assert_close(ref.encode_image(x), arch.encode_image(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- data scripts on small upstream-format files
def test_get_lavin_instruct_script(tmp_path):
    "Bug: LaVIN's all_data.json was refused ('expected a JSON list of conversations'); now converted, texts verbatim."
    src = tmp_path / 'lavin'
    ademvl_sqa.write_lavin_instructions_upstream(src, n=4)
    assert _script('get_lavin_instruct.py', '--src', src, '--root', tmp_path / 'data', '--dry-run').returncode == 0
    assert not (tmp_path / 'data').exists()
    p = _script('get_lavin_instruct.py', '--src', src, '--root', tmp_path / 'data')
    assert p.returncode == 0 and 'lavin_instruct (train 4)' in p.stdout, p.stderr
    ds = data.InstructionDataset(tmp_path / 'data' / 'lavin_instruct', 'train')
    raw = json.loads((src / 'all_data.json').read_text())['all']
    assert [ademvl_sqa.instruction_example(r) for r in ds.rows] == [(it['instruction'], it['answer']) for it in raw]
    assert [r['image'] for r in ds.rows] == ['cocoimages/train/COCO_train2014_000000000200.jpg',  # as upstream's loader opens them
                                             'cocoimages/train/COCO_train2014_000000000201.jpg', 'images/train/902/image.png', None]
    assert ds[0]['image'].shape[0] == 3 and ds[3]['image'] is None   # the Alpaca item has no image
    # LLaVA's list format is pointed at get_llava.py; a missing key or field is named
    (tmp_path / 'l').mkdir(); (tmp_path / 'l' / 'all_data.json').write_text('[{"id": 1, "conversations": []}]')
    p = _script('get_lavin_instruct.py', '--src', tmp_path / 'l', '--root', tmp_path / 'x')
    assert p.returncode == 2 and 'get_llava.py' in p.stderr
    (tmp_path / 'l' / 'all_data.json').write_text('{"all": [{"qid": 1, "answer": "a", "image": null}]}')
    assert "lacks ['instruction']" in _script('get_lavin_instruct.py', '--src', tmp_path / 'l', '--root', tmp_path / 'x').stderr
    with pytest.raises(ValueError, match="'train'"): ademvl_sqa.convert_lavin_instructions(src, tmp_path / 'y', key='train')


def test_get_scienceqa_captions_reach_the_eval_prompt(tmp_path):
    "ScienceQA's release files + LaVIN's captions.json -> get_scienceqa.py -> rows with captions -> QCM-A prompt with the caption."
    src = tmp_path / 'sqa'
    ademvl_sqa.write_scienceqa_upstream(src)
    p = _script('get_scienceqa.py', '--src', src, '--root', tmp_path / 'data')
    assert p.returncode == 0, p.stderr
    te = data.MCQADataset(tmp_path / 'data' / 'scienceqa', 'test')
    caps = ademvl_sqa.read_sqa_captions(src / 'captions.json')
    r = next(r for r in te.rows if r['image'])
    assert r['caption'] == caps[r['id']] and r['caption']
    assert data.sqa_prompt(r, 'QCM-A', use_caption=True)[0].startswith(f"Question: {r['question']}\nContext: {r['caption']}")
    assert {r['subject'] for r in te.rows} == {'natural science', 'social science', 'language science'}


def test_captions_required_when_the_prompt_uses_them(tmp_path):
    "Bug: eval_use_caption with rows converted without captions.json silently used empty captions."
    with pytest.raises(ValueError, match='--captions'): ademvl_sqa.check_captions([{'id': '1', 'question': 'q'}], True)
    ademvl_sqa.check_captions([{'id': '1'}], False); ademvl_sqa.check_captions([{'id': '1', 'caption': ''}], True)
    (tmp_path / 'c.json').write_text('{"captions": {"1": "A dog."}}')
    assert ademvl_sqa._merge_captions([{'id': '1'}, {'id': '2'}], tmp_path / 'c.json') == [{'id': '1', 'caption': 'A dog.'},
                                                                                      {'id': '2', 'caption': ''}]
    (tmp_path / 'bad.json').write_text('[1, 2]')
    with pytest.raises(ValueError, match='captions.json'): ademvl_sqa.read_sqa_captions(tmp_path / 'bad.json')


# ---------------------------------------------------------------- plans and parameter sets
@pytest.mark.parametrize('path', SETS, ids=[p.stem for p in SETS])
def test_plan_of_each_set(path):
    params = R.load_param_set(path)
    plan = ademvl_sqa.rehearsal(params)
    assert set(plan['overrides']) <= set(R.notebook_parameters(ROOT / 'nbs' / '40_ademvl.ipynb'))
    registry = {(n.setting, n.metric) for n in core.paper_numbers('ademvl')}
    assert plan['rows'] and set(map(tuple, plan['rows'])) <= registry
    if params.get('released_ckpt'):   # evaluation of the authors' checkpoint: one process, nothing trained or killed
        assert not plan['trains'] and plan['nproc'] == 1 and plan['overrides']['nproc'] == 0
        assert plan['branch'].endswith('-released') and not os.path.isabs(params['released_ckpt'])
    elif params.get('data_root'):   # the recipe: 8 GPUs x 2 x 2 accumulation = 32, launched with torchrun; rehearsed on 2
        rb = plan['recipe_batch']
        assert rb['per_process'] * rb['processes'] * rb['grad_accum'] == rb['recipe'] == 32 and rb['processes'] == 8
        assert params['launcher'] == 'torchrun' and plan['nproc'] == plan['overrides']['nproc'] == 2
        assert not any(os.path.isabs(str(params.get(k, ''))) for k in ('data_root', 'llama_dir', 'clip_path', 'mme_root'))
    else:   # bug: the set's `preset: cpu-demo` overwrote the rehearsal's steps (a preset beats -p); the set now lists its values
        assert 'preset' not in params and params['steps_c'] == 1000 and plan['branch'] == 'cpu-demo'


def test_path_parameters_resolve_against_one_root(tmp_path):
    "Bug: '../data/...' in the sets resolved against nbs/; now [path] values resolve against the root and [data] ones against data_root."
    valid = R.notebook_parameters(ROOT / 'nbs' / '40_ademvl.ipynb')
    kinds = {k: R.path_kind(p) for k, p in valid.items() if R.path_kind(p)}
    assert kinds == {'data_root': 'path', 'llama_dir': 'path', 'clip_path': 'path', 'caption_file': 'data', 'mme_root': 'data',
                     'released_ckpt': 'path'}
    assert not any('=' in valid[k].help for k in kinds)   # papermill's parser breaks on '='
    params = R.load_param_set(ROOT / 'nbs' / 'params' / '40_ademvl.instruction_7b.yaml')
    got = R.resolve_paths(R.check_parameters(params, valid), valid, tmp_path)
    assert got['llama_dir'] == str(tmp_path / 'ckpt' / 'llama') and got['clip_path'] == str(tmp_path / 'ckpt' / 'clip' / 'ViT-L-14.pt')
    assert got['mme_root'] == str(tmp_path / 'data' / 'MME_Benchmark_release_version')
    with pytest.raises(FileNotFoundError, match=r"llama_dir = .* does not exist; make it with: Meta weights/ folder"):
        R.run_notebook('40_ademvl', param_file=ROOT / 'nbs' / 'params' / '40_ademvl.sqa_7b.yaml', out=tmp_path / 'run',
                       root=tmp_path, progress=False)


@pytest.mark.parametrize('path', FULL, ids=[p.stem for p in FULL])
def test_standins_are_every_input_the_set_names(path, tmp_path):
    "With a root, the plan writes every [path]/[data] input at the set's own paths and the dataset files the task reads."
    params = R.load_param_set(path)
    ademvl_sqa.rehearsal(params, tmp_path)
    valid = R.notebook_parameters(ROOT / 'nbs' / '40_ademvl.ipynb')
    given = R.resolve_paths(R.check_parameters(params, valid), valid, tmp_path)
    core.require_inputs(R._input_checks(given, valid))
    p = given
    core.require_inputs(ademvl_sqa.full_scale_inputs(p['task'], p['data_root'], p.get('dataset', ''), p.get('eval_split', ''),
                                                  p['llama_dir'], p['llama_format'], p['llm']))
    tok = ademvl_sqa.load_llama_tokenizer(p['llama_dir'], p['llama_format'])
    assert ademvl_sqa.load_llama(p['llama_dir'], p['llama_format'], p['llm'], dtype=torch.float32).get_input_embeddings().weight.shape[0] == len(tok)
    assert ademvl_sqa.load_clip_vision(p['clip_path'], dtype=torch.float32).config.image_size == 32


def test_hf_layouts_of_the_standins(tmp_path):
    "A set pointing at HF folders (llama_format hf, a CLIP folder) gets HF stand-ins, made as convert_llama.py makes them."
    params = dict(R.load_param_set(ROOT / 'nbs' / 'params' / '40_ademvl.coco_7b.yaml'), llama_format='hf', llama_dir='ckpt/llama-7b-hf',
                  clip_path='ckpt/clip-vit-large-patch14')
    ademvl_sqa.rehearsal(params, tmp_path)
    assert (tmp_path / 'ckpt' / 'llama-7b-hf' / 'config.json').exists() and (tmp_path / 'ckpt' / 'llama-7b-hf' / 'tokenizer.model').exists()
    llm = ademvl_sqa.load_llama(tmp_path / 'ckpt' / 'llama-7b-hf', 'hf', dtype=torch.float32)
    assert len(ademvl_sqa.load_llama_tokenizer(tmp_path / 'ckpt' / 'llama-7b-hf', 'hf')) == llm.config.vocab_size
    assert ademvl_sqa.load_clip_vision(tmp_path / 'ckpt' / 'clip-vit-large-patch14', dtype=torch.float32).config.hidden_size == 64
    with pytest.raises(ValueError, match='absolute'): ademvl_sqa.rehearsal(dict(params, llama_dir='/abs/llama'), tmp_path / 'z')


# ---------------------------------------------------------------- resume, partial, global batch, scale
def test_full_scale_stop_resume_and_partial(tmp_path):
    "stop_step ends training early (finished False: the notebook writes status 'partial'); the rerun resumes, = uninterrupted."
    params = R.load_param_set(ROOT / 'nbs' / 'params' / '40_ademvl.sqa_7b.yaml')
    ademvl_sqa.rehearsal(params, tmp_path / 'root')
    r = tmp_path / 'root'
    kw = dict(task='sqa', data_root=str(r / 'data'), dataset='scienceqa', llama_dir=str(r / 'ckpt' / 'llama'), llama_format='meta',
              clip_path=str(r / 'ckpt' / 'clip' / 'ViT-L-14.pt'), epochs=1, warmup_epochs=0.2, batch_size=1, accum_iter=2, max_steps=3,
              hidden_proj=16, down_sample_num=(64, 16), device='cpu', limit_train=8, limit_eval=4, eval_batch_size=2)
    a = ademvl_sqa.run_full_scale(ademvl_sqa.full_config(out_dir=str(tmp_path / 'a'), stop_step=1, **kw))
    assert not a['finished'] and a['train']['step'] == 1 and (tmp_path / 'a' / 'train' / 'checkpoint.pt').exists()
    assert a['global_batch'] == dict(per_process=1, processes=1, grad_accum=2, global_=2, recipe=32)
    b = ademvl_sqa.run_full_scale(ademvl_sqa.full_config(out_dir=str(tmp_path / 'a'), **kw))   # the same folder: resumes at step 1
    assert b['finished'] and b['train']['step'] == 3
    log = [json.loads(l)['step'] for l in (tmp_path / 'a' / 'train' / 'log.jsonl').read_text().splitlines()]
    assert log == sorted(set(log)) and log[-1] == 3
    c = ademvl_sqa.run_full_scale(ademvl_sqa.full_config(out_dir=str(tmp_path / 'c'), **kw))   # uninterrupted
    assert b['metrics'] == c['metrics'] and math.isclose(b['train']['loss'], c['train']['loss'], rel_tol=1e-6)
    assert b['extra']['model_dims'] == dict(llm_dim=64, clip_dim=64)
    assert ademvl_sqa.full_scale_label(64, 64, False) == 'tiny-synthetic' and ademvl_sqa.full_scale_label(4096, 1024, True) == 'real-data'
    assert ademvl_sqa.full_scale_label(4096, 1024, False) == 'full'


def test_launched_training_is_not_redone(tmp_path, monkeypatch):
    "A rerun after a finished launched (torchrun) training loads its final weights instead of launching again."
    from vlrepro import train
    cfg = train.TrainConfig(out_dir=str(tmp_path / 'train'), max_steps=2)
    d = tmp_path / 'train'; d.mkdir()
    assert ademvl_sqa._launched_before(cfg, d) is None
    core.atomic_write_json(d / 'train_config.json', cfg.to_dict()); core.atomic_write_json(d / 'summary.json', {'finished': True, 'step': 2})
    torch.save({}, d / 'model.pt')
    assert ademvl_sqa._launched_before(cfg, d)['step'] == 2
    assert ademvl_sqa._launched_before(train.TrainConfig(out_dir=str(d), max_steps=3), d) is None   # another config: train again
