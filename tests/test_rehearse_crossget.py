"""11_crossget's parameter sets: rehearsal plans, stand-ins in the official formats through the real loaders, CoOp/Flickr30k
data scripts on upstream-format files, and the bugs of issue 13 (each test here failed before its fix)."""
import ast, builtins, json, subprocess, symtable, sys, warnings
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip('open_clip')
from vlrepro import crossget as cg, crossget_clip as cgc, models
from vlrepro.core import paper_numbers
from vlrepro.rehearse import Plan, check_recipe_batch

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings('ignore::vlrepro.crossget.RClippedWarning')
REPO = Path(__file__).resolve().parents[1]
SETS = sorted((REPO/'nbs'/'params').glob('11_crossget.*.yaml'))


def script(path, *args, capsys=None):
    "Run a data_scripts/ command in-process the way its __main__ does (exit status 0 asserted); return its stdout."
    import importlib.util
    from vlrepro.data import script_main
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO/path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    assert script_main(mod.main, [str(a) for a in args]) == 0
    return capsys.readouterr().out if capsys else ''


def subprocess_script(*args):
    "Run a data_scripts/ command as a user would: its own process, the repository root; return (status, stdout, stderr)."
    r = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr


# ---- a notebook reads no name before a cell defines it (the NameError of 11_crossget, the #| gpu cell of 03_bench)

class _NoAnnotations(ast.NodeTransformer):
    "Annotations are never evaluated under `from __future__ import annotations`."
    def visit_arg(self, node): node.annotation = None; return node
    def visit_FunctionDef(self, node): node.returns = None; self.generic_visit(node); return node
    visit_AsyncFunctionDef = visit_FunctionDef
    def visit_AnnAssign(self, node):
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno) if node.value else ast.Pass()


def undefined_names(nb_path):
    "[(cell, name)]: names a code cell reads at its top level (run at once) that no cell up to it defines."
    nb = json.loads(Path(nb_path).read_text())
    seen, bad = set(dir(builtins)) | {'get_ipython', 'display'}, []
    for i, c in enumerate(nb['cells']):
        if c['cell_type'] != 'code': continue
        src = '\n'.join(l for l in ''.join(c['source']).splitlines() if not l.lstrip().startswith(('%', '!')))
        t = symtable.symtable(ast.unparse(ast.fix_missing_locations(_NoAnnotations().visit(ast.parse(src)))), f'cell{i}', 'exec')
        defined = {s.get_name() for s in t.get_symbols() if s.is_assigned() or s.is_imported()}
        bad += [(i, n) for n in sorted({s.get_name() for s in t.get_symbols() if s.is_referenced()} - seen - defined)]
        seen |= defined
    return bad


@pytest.mark.parametrize('nb', ['11_crossget', '03_bench'])
def test_no_name_read_before_defined(nb):
    # 11_crossget's results cell read `rv` (NameError after training); 03_bench's #| gpu cell called `benchmark` first
    assert undefined_names(REPO/'nbs'/f'{nb}.ipynb') == []


def test_gpu_cell_of_bench_is_a_noop_on_cpu():
    nb = json.loads((REPO/'nbs'/'03_bench.ipynb').read_text())
    gpu = [''.join(c['source']) for c in nb['cells'] if ''.join(c['source']).startswith('#| gpu')]
    assert len(gpu) == 1 and 'if torch.cuda.is_available():' in gpu[0]


# ---- results land in the paper's rows

def test_paper_setting_rows():
    have = {(n.setting, n.metric) for n in paper_numbers('crossget')}
    for (rv, rl), name in {(16, 0): 'CLIP CrossGET rv=16', (0, 6): 'CLIP CrossGET rl=6',
                           (16, 6): 'CLIP CrossGET rv=16, rl=6', (0, 0): 'CLIP'}.items():
        assert cg.paper_setting(rv, rl) == name
        assert all((name, k) in have for k in ['i2t_r1', 'i2t_r5', 'i2t_r10', 't2i_r1', 't2i_r5', 't2i_r10', 'gflops'])
    assert all(('CoOp CrossGET rv=8', f"acc_{d['column']}") in have for d in cgc.COOP_DATASETS.values())


# ---- plans of all 37 sets

def test_plans_of_every_set():
    assert len(SETS) == 38
    have = {(n.setting, n.metric) for n in paper_numbers('crossget')}
    branches = {}
    for s in SETS:
        params = yaml.safe_load(s.read_text())
        plan = Plan.from_dict(cgc.rehearsal_clip(params), f' of {s.name}')
        branches.setdefault(plan.branch, []).append(s.name)
        assert not {'pretrained', 'init_checkpoint', 'data_root', 'dataset', 'coop_dataset', 'coop_init_prompt',
                    'preset', 'finetunes', 'out_dir'} & set(plan.overrides), s.name        # sizes only, never paths or branch
        released = s.stem.endswith('.released')   # evaluation of the authors' fine-tuned CLIP: the "CLIP" row, nothing trained
        assert all((r in have) for r in plan.rows) and plan.trains != released, s.name
        if plan.branch != 'cpu-demo':
            check_recipe_batch(plan.recipe_batch)                                    # the set's batch = its recipe's
            for k in ('pretrained', 'init_checkpoint', 'coop_init_prompt'):           # relative, under ckpt/
                assert not params.get(k) or params[k].startswith('ckpt/'), (s.name, k)
            assert params['data_root'] == 'data'
        if released:
            assert not params['finetunes'] and params['init_checkpoint'] and plan.nproc == 1 and plan.recipe_batch is None
            assert plan.metric == 'base (no reduction)/rmean' and {r[0] for r in plan.rows} == {'CLIP'}
        elif plan.branch == 'clip-retrieval':
            assert params['nproc'] == 8 and plan.nproc == 2 and plan.overrides['nproc'] == 2
            assert plan.recipe_batch == dict(per_process=64, processes=8, grad_accum=1, recipe=512)
        assert Plan.from_dict(cgc.rehearsal_clip(params, device='cuda')).overrides['precision'] == 'bf16'
    assert {b: len(v) for b, v in branches.items()} == {'clip-retrieval': 4, 'coop': 33, 'cpu-demo': 1}


def test_parameters_cell_marks_paths():
    from vlrepro.run import notebook_parameters, path_kind
    p = notebook_parameters(REPO/'nbs'/'11_crossget.ipynb')
    assert {k for k in p if path_kind(p[k]) == 'path'} == {'pretrained', 'init_checkpoint', 'data_root', 'coop_init_prompt'}
    assert {k for k in p if path_kind(p[k]) == 'data'} == {'dataset', 'coop_dataset'}
    assert not any('=' in q.help for q in p.values()) and p['nproc'].default == 1


# ---- stand-in checkpoints through the real loaders

@pytest.fixture(scope='module')
def openai_pt(tmp_path_factory):
    return cgc.write_openai_clip(tmp_path_factory.mktemp('ckpt')/'ViT-B-16.pt')


def test_openai_torchscript_standin_loads(openai_pt):
    import zipfile
    assert zipfile.is_zipfile(openai_pt) and models._is_torchscript(openai_pt)
    jit = torch.jit.load(str(openai_pt)).state_dict()
    assert {'input_resolution', 'context_length', 'vocab_size'} <= set(jit) and jit['visual.conv1.weight'].dtype == torch.float16
    m = models.create_open_clip(cg.REHEARSAL_CLIP, pretrained=str(openai_pt))
    for k, v in m.state_dict().items(): torch.testing.assert_close(v, jit[k].to(v.dtype))
    assert models.open_clip_tokenizer(cg.REHEARSAL_CLIP)(['a dog']).shape == (1, 77)   # CLIP's BPE, as ViT-B-16


def test_authors_checkpoint_is_unwrapped_and_converted(openai_pt, tmp_path):
    base = models.create_open_clip(cg.REHEARSAL_CLIP, pretrained=str(openai_pt))
    f = cgc.write_authors_checkpoint(tmp_path/'checkpoint_best.pth', base.state_dict())
    raw = torch.load(f, weights_only=True)
    assert set(raw) == {'model', 'optimizer', 'config', 'epoch'} and raw['model']['visual.transformer.cross_image'].shape == (1, 2, 32)
    with pytest.raises(Exception): base.load_state_dict(raw)                    # what the notebook did before
    m = cgc.load_init_checkpoint(models.create_open_clip(cg.REHEARSAL_CLIP), f)
    for k, v in m.state_dict().items(): torch.testing.assert_close(v, raw['model'][k].float())
    # trained cross tokens go to a patched model's crossget_ parameters; an un-patched model drops them with a warning
    raw['model']['visual.transformer.cross_image'] = torch.randn(1, 2, 32)
    raw['model']['transformer.cross_text'] = torch.randn(1, 2, 32)
    torch.save(raw, tmp_path/'trained.pth')
    p = cgc.load_init_checkpoint(cg.patch(models.create_open_clip(cg.REHEARSAL_CLIP), rv=16, rl=6), tmp_path/'trained.pth')
    torch.testing.assert_close(p.visual.crossget_cross_image.data, raw['model']['visual.transformer.cross_image'][0])
    torch.testing.assert_close(p.crossget_cross_text.data, raw['model']['transformer.cross_text'][0])
    with pytest.warns(UserWarning, match='cross tokens'):
        cgc.load_init_checkpoint(models.create_open_clip(cg.REHEARSAL_CLIP), tmp_path/'trained.pth')
    torch.save(base.state_dict(), tmp_path/'plain.pt')                          # a plain state_dict still loads
    cgc.load_init_checkpoint(models.create_open_clip(cg.REHEARSAL_CLIP), tmp_path/'plain.pt')
    with pytest.raises(ValueError, match='does not fit'):
        cgc.load_init_checkpoint(models.create_open_clip(cg.REHEARSAL_CLIP),
                                _save(tmp_path/'bad.pt', {k: v for k, v in base.state_dict().items() if 'ln_final' not in k}))


def _save(path, obj):
    torch.save(obj, path); return path


def test_train_task_reads_the_standins(openai_pt, tmp_path):
    base = models.create_open_clip(cg.REHEARSAL_CLIP, pretrained=str(openai_pt))
    ck = cgc.write_authors_checkpoint(tmp_path/'ft.pth', base.state_dict())
    script('data_scripts/get_flickr30k.py', '--src', cgc.write_karpathy_flickr(tmp_path/'raw'), '--root', tmp_path/'data')
    t = cgc.train_task(model=cg.REHEARSAL_CLIP, pretrained=str(openai_pt), init_checkpoint=str(ck),
                      data_root=str(tmp_path/'data'), rv=16, rl=6, view='all')
    assert len(t['train_data']) == 20 and cg.is_patched(t['model'])                  # 4 images x 5 captions
    batch = t['collate_fn']([t['train_data'][i] for i in range(4)])
    loss, parts = t['loss_fn'](t['model'], batch)
    assert torch.isfinite(loss) and set(parts) == {'itc', 'cross'}


# ---- data scripts on small upstream-format files

@pytest.mark.parametrize('name', ['dtd', 'imagenet', 'fgvc_aircraft', 'stanford_cars'])
def test_get_coop(tmp_path, name, capsys):
    src = tmp_path/'coop_data'
    cgc.write_coop_dataset(src, name)
    out = script('data_scripts/get_coop.py', '--src', src, '--root', tmp_path/'data', '--datasets', name, '--dry-run', capsys=capsys)
    assert 'dry run' in out and not (tmp_path/'data').exists()
    if name == 'dtd':                                                             # once as a user runs it
        assert subprocess_script('data_scripts/get_coop.py', '--src', src, '--root', tmp_path/'data')[0] == 0
    else: script('data_scripts/get_coop.py', '--src', src, '--root', tmp_path/'data')   # every dataset found under --src
    d = tmp_path/'data'/'coop'/name
    from vlrepro.data import read_jsonl
    rows = {s: read_jsonl(d/f'{s}.jsonl', ('image', 'label', 'classname')) for s in ('train', 'test')}
    assert len(rows['train']) == 6 and len(rows['test']) == 3
    assert sorted({(r['label'], r['classname']) for r in rows['train']}) == sorted({(r['label'], r['classname']) for r in rows['test']})
    assert all((d/'images'/r['image']).is_file() for r in rows['train'] + rows['test'])
    if name == 'fgvc_aircraft': assert {r['classname'] for r in rows['test']} == {'707-320', 'F/A-18', 'Falcon 2000'}
    if name == 'imagenet': assert rows['test'][0]['image'].startswith('val/n0')   # ImageNet's val is CoOp's test
    ds = cgc.LabelledImages([d/'images'/r['image'] for r in rows['test']], [r['label'] for r in rows['test']],
                           cgc.retrieval_transform(32))
    assert ds[0]['image'].shape == (3, 32, 32) and ds[0]['label'].item() == rows['test'][0]['label']


def test_get_coop_errors(tmp_path, capsys):
    src = tmp_path/'coop_data'; cgc.write_coop_dataset(src, 'dtd')
    split = src/'dtd'/'split_zhou_DescribableTextures.json'
    d = json.loads(split.read_text()); d['test'][0][2] = 'another name'; split.write_text(json.dumps(d))
    from vlrepro.data import script_main
    import importlib.util
    spec = importlib.util.spec_from_file_location('get_coop', REPO/'data_scripts'/'get_coop.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    assert script_main(mod.main, ['--src', str(src), '--root', str(tmp_path)]) == 2
    assert 'label 0 is both' in capsys.readouterr().err
    (tmp_path/'empty').mkdir()
    assert script_main(mod.main, ['--src', str(tmp_path/'empty'), '--root', str(tmp_path)]) == 2
    assert 'no CoOp dataset' in capsys.readouterr().err
    assert script_main(mod.main, ['--src', str(src), '--root', str(tmp_path), '--download']) == 2


def test_extract_coop_context(tmp_path):
    run = tmp_path/'output'/'dtd'/'CoOp'/'vit_b16_16shots'/'nctx16_cscFalse_ctpend'/'seed1'
    f = cgc.write_coop_prompt_learner(run, n_ctx=16, width=32, n_cls=3, epoch=200)
    ctx = torch.load(f, weights_only=True)['state_dict']['ctx']
    for src in (run, f):                                                          # the run folder or the file itself
        if src == run: assert subprocess_script('data_scripts/extract_coop_context.py', '--src', src, '--out', tmp_path/'ctx.pt')[0] == 0
        else: script('data_scripts/extract_coop_context.py', '--src', src, '--out', tmp_path/'ctx.pt')
        out = torch.load(tmp_path/'ctx.pt', weights_only=True)
        assert out.shape == (16, 32) and out.dtype == torch.float32 and torch.equal(out, ctx.float())
    torch.testing.assert_close(cgc.read_coop_context(f), ctx.float())                 # the notebook reads either file
    torch.save({'state_dict': {'ctx': torch.zeros(3, 16, 32)}}, tmp_path/'csc.pth')
    with pytest.raises(ValueError, match='class-specific'): cgc.read_coop_context(tmp_path/'csc.pth')


def test_get_flickr30k_on_the_karpathy_standin(tmp_path, capsys):
    out = script('data_scripts/get_flickr30k.py', '--src', cgc.write_karpathy_flickr(tmp_path/'raw'), '--root', tmp_path/'data',
                 capsys=capsys)
    assert 'train 4' in out and 'test 3' in out
    from vlrepro.data import RetrievalDataset
    ds = RetrievalDataset(tmp_path/'data'/'flickr30k', 'test', transform=cgc.retrieval_transform(32))
    assert len(ds.captions) == 15 and ds[0]['image'].shape == (3, 32, 32)


# ---- end to end: the full branch of a set, killed mid-training and resumed (slow: 3 notebook runs, torchrun)

@pytest.mark.slow
@pytest.mark.long          # the one-per-branch CI rehearsal covers both branches; this adds rv16+rl6 and a compare
@pytest.mark.parametrize('name', ['clip-flickr-rv16-rl6', 'coop-dtd-rv8'])
def test_rehearse_set(tmp_path, name):
    from vlrepro.rehearse import rehearse_set
    r = rehearse_set(REPO/'nbs'/'params'/f'11_crossget.{name}.yaml', tmp_path, compare=True)
    plan = cgc.rehearsal_clip(yaml.safe_load((REPO/'nbs'/'params'/f'11_crossget.{name}.yaml').read_text()))
    assert r['resumed'] and {tuple(x) for x in plan['rows']} <= {tuple(x) for x in r['rows']}
    rec = json.loads((tmp_path/f'11_crossget.{name}'/'run'/'results.json').read_text())
    assert rec['status'] == 'complete' and rec['scale'] == 'rehearsal'
    assert all(g['global_'] == g['per_process'] * g['processes'] for g in rec['extra']['global_batch'].values())
