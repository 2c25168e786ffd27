"LAPS parameter sets on tiny stand-ins: plans, stand-ins through the real loaders, data scripts, resume, partial, scale, lr groups."
import argparse, json, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from vlrepro import laps, laps_retrieval, rehearse as H, run as R
from vlrepro.core import scale_label
from vlrepro.laps import LAPSModel

ROOT = Path(__file__).resolve().parents[1]
SETS = sorted((ROOT/'nbs'/'params').glob('30_laps.*.yaml'))
REAL = [s for s in SETS if R.load_param_set(s).get('data_root')]
torch.set_num_threads(1)


def tiny(embed=32, ratios=(0.5, 0.4), seed=0):
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel
    torch.manual_seed(seed)
    v = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64), add_pooling_layer=False)
    t = BertModel(BertConfig(vocab_size=40, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=40), add_pooling_layer=False)
    return laps.patch(LAPSModel(v, t, embed_size=embed), *ratios).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (3, 7), generator=g); ids[:, 0] = 2; ids[1, 4:] = 0
    return torch.randn(3, 3, 32, 32, generator=g), ids


# ---------------------------------------------------------------- issue 14 item 5: one lr contract
def test_param_groups_keep_the_backbone_rate_in_the_trainer():
    "laps.param_groups feeds Trainer(param_groups=...) directly: the backbones keep 0.1x (before: every group got the base lr)."
    from vlrepro.train import Trainer
    m = tiny()
    data = [dict(x=torch.zeros(1))] * 4
    tr = Trainer(m, lambda model, b: next(model.parameters()).sum() * 0, data, dict(lr=2e-4, batch_size=2, epochs=1, progress=False),
                 param_groups=lambda mm: laps.param_groups(mm, 2e-4, 0.1))
    lrs = {g['name']: g['lr'] for g in tr.optimizer.param_groups}
    assert lrs == pytest.approx({'vision': 2e-5, 'text': 2e-5, 'img_proj': 2e-4, 'txt_proj': 2e-4, 'laps_head': 2e-4})
    groups = laps.param_groups(m, 2e-4, 0.1)   # the same list drives a plain torch optimizer
    opt = torch.optim.AdamW(groups, lr=1.0)
    assert [g['lr'] for g in opt.param_groups] == pytest.approx([2e-5, 2e-5, 2e-4, 2e-4, 2e-4])
    assert not hasattr(laps, '_groups_fn')     # no private way round it any more


# ---------------------------------------------------------------- issue 14 item 12: the authors' checkpoint
def official_layout(m:LAPSModel)->dict:
    "A state dict under the released VSEModel names, written by hand from our model (not with laps_retrieval.authors_state_dict)."
    ren = {'vision.': 'img_enc.visual_encoder.', 'img_proj.': 'img_enc.vision_proj.', 'text.': 'txt_enc.bert.',
           'txt_proj.': 'txt_enc.fc.', 'laps_head.aggregation.': 'cross_net.aggr_net.'}
    out = {}
    for k, v in m.state_dict().items():
        pre = next(p for p in ren if k.startswith(p)); out[ren[pre] + k[len(pre):]] = v.clone()
    out['img_enc.visual_encoder.pooler.dense.weight'] = torch.randn(64, 64)   # the released encoders keep their poolers
    out['txt_enc.bert.pooler.dense.bias'] = torch.randn(64)
    return out


def test_authors_checkpoint_round_trip(tmp_path):
    src = tiny(seed=1)
    sd = official_layout(src)
    assert {'cross_net.aggr_net.weight.0.weight', 'cross_net.aggr_net.weight.3.bias', 'cross_net.aggr_net.scale'} <= set(sd)
    mine = laps_retrieval.authors_state_dict(src)                                    # our writer uses the same names
    assert set(mine) == {k for k in sd if '.pooler.' not in k} and all(torch.equal(mine[k], sd[k]) for k in mine)
    opt = argparse.Namespace(sparse_ratio=0.5, aggr_ratio=0.4, embed_size=32, vit_type='vit', data_path='/authors/machine')
    torch.save({'model': sd, 'opt': opt, 'epoch': 17, 'best_rsum': 512.3, 'Eiters': 99}, tmp_path/'model_best.pth')
    dst = tiny(seed=2)
    px, ids = batch()
    assert not torch.allclose(dst(px, ids), src(px, ids))
    info = laps_retrieval.load_authors_checkpoint(dst, tmp_path/'model_best.pth')
    torch.testing.assert_close(dst(px, ids), src(px, ids))
    assert info['epoch'] == 17 and info['best_rsum'] == 512.3 and len(info['skipped']) == 2
    ddp = {'module.' + k: v for k, v in sd.items()}                         # saved from a DDP wrapper
    laps_retrieval.load_authors_checkpoint(d2 := tiny(seed=3), {'model': ddp}); torch.testing.assert_close(d2(px, ids), src(px, ids))
    with pytest.raises(ValueError, match='trained with sparse_ratio 0.5'):
        laps_retrieval.load_authors_checkpoint(tiny(ratios=(0.8, 0.6)), tmp_path/'model_best.pth')
    with pytest.raises(ValueError, match='does not fit'):
        laps_retrieval.load_authors_checkpoint(tiny(ratios=(0.8, 0.6)), {'model': sd})
    with pytest.raises(ValueError, match='patch the model first'):
        laps_retrieval.load_authors_checkpoint(laps.unpatch(tiny()), {'model': sd})


# ---------------------------------------------------------------- sets: paths, plans
def test_sets_paths_are_relative_to_one_root_and_marked():
    "Before: '../data', '../checkpoints/...' resolved against nbs/, and dataset f30k matched no data script."
    nbp = R.notebook_parameters(ROOT/'nbs'/'30_laps.ipynb')
    for k in ('data_root', 'vision_model', 'text_model', 'init_checkpoint'):
        assert R.path_kind(nbp[k]) == 'path', k
        assert '=' not in nbp[k].help
    for s in REAL:
        p = R.load_param_set(s)
        assert p['data_root'] == 'data' and p['vision_model'].startswith('ckpt/') and p['text_model'] == 'ckpt/bert-base-uncased', s.name
        assert p['dataset'] in laps_retrieval.DATA_SCRIPTS, s.name
        got = R.resolve_paths(R.check_parameters(p, nbp), nbp, '/some/root')
        assert got['data_root'] == '/some/root/data' and got['vision_model'].startswith('/some/root/ckpt/')


@pytest.mark.parametrize('s', SETS, ids=[s.stem for s in SETS])
def test_plans(s):
    p = R.load_param_set(s)
    plan = H.Plan.from_dict(laps_retrieval.rehearsal(p), s.name)
    H.check_recipe_batch(plan.recipe_batch)
    shrink = {'dense_epochs', 'num_epochs', 'batch_size', 'train_images', 'test_images', 'eff_images', 'threads', 'img_res',
              'embed_size', 'shard_size', 'num_workers', 'device', 'amp', 'nproc'}
    assert set(plan.overrides) <= shrink and plan.metric == 'laps/rsum' and plan.nproc == 1
    if s.stem.endswith('.released'):   # evaluation of the authors' model_best.pth: nothing trained, nothing to kill
        assert not plan.trains and p['num_epochs'] == p['dense_epochs'] == 0 and not p['baseline']
        assert p['init_checkpoint'].startswith('ckpt/laps/') and p['init_checkpoint'].endswith('model_best.pth')
    else: assert plan.trains
    rows = {(r.setting, r.metric) for r in laps.PAPER_NUMBERS}
    assert plan.rows and set(plan.rows) <= rows
    if p.get('coco_folds'): assert {r[0] for r in plan.rows} == {'MSCOCO-5K ' + ('ViT' if p['vit_type'] == 'vit' else 'Swin'),
                                                              'MSCOCO-1K ' + ('ViT' if p['vit_type'] == 'vit' else 'Swin')}
    assert laps_retrieval.rehearsal(p, device='cuda')['overrides'] | {'device': 'cpu', 'amp': False} == plan.overrides


def test_plan_refuses_a_folder_no_data_script_writes(tmp_path):
    p = R.load_param_set(REAL[0]) | {'dataset': 'f30k'}
    with pytest.raises(ValueError, match='get_flickr30k.py writes flickr30k/'): laps_retrieval.rehearsal(p, tmp_path)


# ---------------------------------------------------------------- data scripts on Karpathy-format files
@pytest.mark.parametrize('dataset,script,n', [('flickr30k', 'get_flickr30k.py', dict(train=3, val=1, test=2)),
                                              ('coco', 'get_coco.py', dict(train=2, restval=1, val=1, test=5))])
def test_sets_read_what_the_data_scripts_write(tmp_path, dataset, script, n):
    from vlrepro import data
    words = laps_retrieval._write_karpathy(dataset, tmp_path/'raw', n)
    assert 'grass' in words
    raw = json.loads((tmp_path/'raw'/f'dataset_{dataset}.json').read_text())
    assert {'filename', 'imgid', 'split', 'sentences'} <= set(raw['images'][0]) and raw['images'][0]['sentences'][0]['raw']
    r = subprocess.run([sys.executable, f'data_scripts/{script}', '--src', str(tmp_path/'raw'), '--root', str(tmp_path/'data')],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sets = [R.load_param_set(s) for s in REAL if R.load_param_set(s)['dataset'] == dataset]
    assert sets
    for p in sets:                                                       # the folder every set of this dataset reads
        tr = data.RetrievalDataset(tmp_path/p['data_root']/p['dataset'], 'train')
        te = data.RetrievalDataset(tmp_path/p['data_root']/p['dataset'], 'test')
        assert len(tr) == n['train'] + n.get('restval', 0) and len(te) == n['test'] and len(te.captions) == 5 * n['test']
        assert tr[0]['image'] is not None


# ---------------------------------------------------------------- stand-ins through the real loaders
@pytest.mark.parametrize('vit_type', ['vit', 'swin'])
def test_standins_load_through_the_notebooks_loaders(tmp_path, vit_type):
    import transformers
    s = next(s for s in REAL if R.load_param_set(s)['vit_type'] == vit_type)
    p = R.load_param_set(s)
    plan = laps_retrieval.rehearsal(p, tmp_path)
    vdir, tdir = tmp_path/p['vision_model'], tmp_path/p['text_model']
    arch = {'vit': 'ViTModel', 'swin': 'SwinForImageClassification'}[vit_type]   # the released checkpoints' classes
    assert json.loads((vdir/'config.json').read_text())['architectures'] == [arch]
    assert json.loads((tdir/'config.json').read_text())['architectures'] == ['BertForMaskedLM']
    assert (tdir/'vocab.txt').exists() and (tmp_path/p['data_root']/p['dataset']/'MANIFEST.json').exists()
    tok = laps.build_tokenizer(str(tdir), [])
    assert isinstance(tok, transformers.PreTrainedTokenizerBase) and tok.pad_token_id == 0
    ids, _ = laps_retrieval.tokenize(tok, ['A red dog on the grass.', 'a cat'], 64)
    assert ids[0, 0] == tok.cls_token_id and (ids[0] == tok.unk_token_id).sum() == 0
    v, t = laps.build_encoders(str(vdir), str(tdir))
    m = laps.patch(LAPSModel(v, t, plan['overrides']['embed_size']), p['sparse_ratio'], p['aggr_ratio']).eval()
    assert (m.has_cls, type(m.img_proj).__name__) == (vit_type == 'vit', 'Linear')
    S = m(torch.randn(2, 3, plan['overrides']['img_res'], plan['overrides']['img_res']), ids)
    assert S.shape == (2, 2) and torch.isfinite(S).all()
    want = transformers.AutoModel.from_pretrained(str(tdir), local_files_only=True).embeddings.word_embeddings.weight
    torch.testing.assert_close(t.embeddings.word_embeddings.weight, want)   # BertForMaskedLM's bert.* weights reached BertModel


# ---------------------------------------------------------------- scale
def test_tiny_real_run_is_never_full(monkeypatch):
    "Before: any run on real data was labelled 'full' (a tiny f30k_vit run included)."
    monkeypatch.delenv('VLREPRO_REHEARSAL', raising=False)
    gaps = laps_retrieval.paper_scale_gaps(tiny(), 'flickr30k', 4, 5, 16, 1, img_res=32)
    assert len(gaps) == 6 and scale_label(True, full=not gaps) == 'real-data'
    monkeypatch.setenv('VLREPRO_REHEARSAL', '1')
    assert scale_label(True, full=not gaps) == 'rehearsal'


# ---------------------------------------------------------------- the notebook: stop, rerun, resume
def test_stopped_run_is_partial_and_a_rerun_resumes(tmp_path, monkeypatch):
    """The f30k_vit set on stand-ins (outside a rehearsal): `-p stop_epoch 1` writes status 'partial'; rerunning into the
    same run folder resumes from that checkpoint (before: out/laps was deleted and training restarted from step 0);
    neither run is labelled 'full'."""
    monkeypatch.delenv('VLREPRO_REHEARSAL', raising=False); monkeypatch.delenv('VLREPRO_REHEARSE_KILL', raising=False)
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    s = ROOT/'nbs'/'params'/'30_laps.f30k_vit.yaml'
    ov = laps_retrieval.rehearsal(R.load_param_set(s), tmp_path/'root')['overrides'] | dict(num_epochs=2, efficiency=False, num_workers=0)
    out = tmp_path/'run'
    R.run_notebook('30_laps', ov | {'stop_epoch': 1}, s, out=out, progress=False, root=tmp_path/'root')
    rec = json.loads((out/'results.json').read_text())
    assert rec['status'] == 'partial' and rec['scale'] == 'real-data'
    log1 = (out/'laps'/'log.jsonl').read_text().splitlines()
    ck = torch.load(out/'laps'/'checkpoint.pt', map_location='cpu', weights_only=False)['trainer']
    assert ck['step'] == 2 and ck['total_steps'] == 4 and (out/'laps'/'model_best.pt').exists()
    R.run_notebook('30_laps', ov, s, out=out, progress=False, root=tmp_path/'root')
    rec = json.loads((out/'results.json').read_text())
    assert rec['status'] == 'complete' and rec['scale'] == 'real-data' and rec['extra']['scale_gaps']
    log2 = (out/'laps'/'log.jsonl').read_text().splitlines()
    assert log2[:len(log1)] == log1 and json.loads(log2[-1])['step'] == 4      # continued, not restarted
    executed = (out/'30_laps.ipynb').read_text()
    assert 'resumed from' in executed and 'at step 2/4' in executed


def test_resume_with_caption_augmentation_is_exact(tmp_path):
    "Stopped after epoch 1 and resumed = uninterrupted, with size_augment on (before: the augmentation RNG restarted on resume)."
    from vlrepro import data, models
    ds = data.RetrievalDataset(data.generate('tiles', 8, seed=0, split='train'), transform=data.image_transform(mean=(.5,) * 3, std=(.5,) * 3))
    tok = models.build_tokenizer('laps', ds.captions)
    def fresh():
        v, t = laps.build_encoders('laps-vit', 'laps-bert', vocab_size=len(tok), seed=0)
        torch.manual_seed(0); return laps.patch(LAPSModel(v, t, 32))
    rec = laps_retrieval.Recipe(batch_size=20, learning_rate=5e-4, backbone_lr_mult=1.0, vse_mean_warmup_epochs=1000, size_augment=True,
                      progress=False, lr_schedules=[])
    kw = dict(epochs=2)
    a = fresh(); torch.manual_seed(1); laps_retrieval.train_laps(a, ds.caption_view('all'), tok, rec, str(tmp_path/'a'), **kw)
    b = fresh(); torch.manual_seed(1)
    r1 = laps_retrieval.train_laps(b, ds.caption_view('all'), tok, rec, str(tmp_path/'b'), stop_epoch=1, **kw)
    assert not r1['finished'] and r1['step'] == 2
    b = fresh(); torch.manual_seed(7)                                   # a new process: other RNG state, fresh collate
    r2 = laps_retrieval.train_laps(b, ds.caption_view('all'), tok, rec, str(tmp_path/'b'), **kw)
    assert r2['finished'] and r2['step'] == 4
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()): torch.testing.assert_close(x, y, msg=k)
