"`vlrepro rehearse`: the mechanics on a toy notebook, every set's plan, and the rehearsals themselves."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from vlrepro import cli as C, rehearse as H, run as R

ROOT = Path(__file__).resolve().parents[1]
SETS = sorted((ROOT/'nbs'/'params').glob('*.yaml'))

# A toy "paper" notebook whose full branch trains with the workbench Trainer (checkpointing into the run folder when
# `ckpt` is on), reads a [path] input, and writes a results record with a paper row.
TOY_PARAMS = ("steps: int = 2   # optimizer steps\n"
              "ckpt: bool = True   # keep a checkpoint in the run folder\n"
              "init: str = ''   # [path] a file the run reads (make: touch it)\n"
              "nproc: int = 1   # processes\n"
              "out_dir: str = '_runs/toy'   # results.json goes here\n")
TOY_BODY = """\
import pathlib, torch
from vlrepro import core, train
assert not init or pathlib.Path(init).is_absolute()
core.register_paper_numbers('toy', [core.PaperNumber('toy', 'Table 1', 'base', 'loss', 0.1)])
core.seed_everything(0)
t = train.demo_task()
cfg = train.TrainConfig(out_dir=str(pathlib.Path(out_dir)/'train') if ckpt else '', max_steps=steps, batch_size=8,
                        progress=False)
res = train.Trainer(t['model'], t['loss_fn'], t['train_data'], cfg).fit()
comp = core.compare('toy', {('base', 'loss'): res['loss']}, scale=core.scale_label(True))
core.write_results(out_dir, 'toy', {'steps': steps}, {'loss': res['loss'], 'train_seconds': res['seconds']},
                   scale=core.scale_label(True), comparison=comp, status='complete' if res['finished'] else 'partial',
                   extra=dict(global_batch=res['global_batch']))
"""

def toy_nb(path:Path, body=TOY_BODY):
    cells = [{'id': 'p0', 'cell_type': 'code', 'metadata': {'tags': ['parameters']}, 'execution_count': None,
              'outputs': [], 'source': TOY_PARAMS},
             {'id': 'b0', 'cell_type': 'code', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': body}]
    nb = {'cells': cells, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}},
          'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb)); return path

@pytest.fixture
def toy(tmp_path, monkeypatch):
    d = tmp_path/'nbs'; (d/'params').mkdir(parents=True)
    toy_nb(d/'99_toy.ipynb')
    (d/'params'/'99_toy.full.yaml').write_text("steps: 4\ninit: ckpt/init.pt\n")
    (d/'params'/'99_toy.nockpt.yaml').write_text("steps: 4\nckpt: false\n")
    monkeypatch.setenv('VLREPRO_NBS', str(d))
    def plan(params, root=None, device='cpu'):
        if root is not None and params.get('init'):
            (root/params['init']).parent.mkdir(parents=True, exist_ok=True); (root/params['init']).write_text('x')
        return dict(overrides={'steps': 3}, branch='toy', metric='loss', rows=[('base', 'loss')],
                    recipe_batch=dict(per_process=8, processes=1, grad_accum=1, recipe=8))
    monkeypatch.setattr(H, 'plan_function', lambda stem, params: plan)
    return d

def test_rehearse_set_kills_resumes_and_matches_uninterrupted(toy, tmp_path):
    out = tmp_path/'reh'
    r = H.rehearse_set(toy/'params'/'99_toy.full.yaml', out, compare=True)
    assert r['killed'].endswith('train step 1/3') and r['resumed'] and r['compared']
    assert r['rows'] == [['base', 'loss']] and r['global_batch'] == 8 and r['overrides'] == {'steps': 3}
    rec = json.loads((out/'99_toy.full'/'run'/'results.json').read_text())
    clean = json.loads((out/'99_toy.full'/'clean'/'results.json').read_text())
    assert rec['scale'] == 'rehearsal' and rec['status'] == 'complete' and rec['metrics']['loss'] == clean['metrics']['loss']
    assert rec['params']['steps'] == 3
    # the killed run's checkpoint was resumed, not restarted: the log has one record per step, in order
    log = [json.loads(l) for l in (out/'99_toy.full'/'run'/'train'/'log.jsonl').read_text().splitlines()]
    assert [l['step'] for l in log] == [3]
    assert 'killed at train step 1/3, resumed, = uninterrupted' in H.summary_line(r)
    # rerun into the same folder: done earlier, nothing redone or deleted
    again = H.rehearse_set(toy/'params'/'99_toy.full.yaml', out, compare=True)
    assert again['earlier'] and (out/'99_toy.full'/'run'/'train'/'checkpoint.pt').exists()

def test_rehearsal_fails_when_training_keeps_no_checkpoint(toy, tmp_path):
    with pytest.raises(H.RehearsalFailed, match="reached no kill point"):
        H.rehearse_set(toy/'params'/'99_toy.nockpt.yaml', tmp_path/'reh')

def test_missing_input_is_named_before_the_kernel_starts(toy, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"init = .*ckpt/init.pt' does not exist; make it with: a file the run reads"):
        R.run_notebook('99_toy', param_file=toy/'params'/'99_toy.full.yaml', out=tmp_path/'run', root=tmp_path, progress=False)
    assert not (tmp_path/'run').exists()

def test_cli_lines_and_closing_count(toy, tmp_path, capsys):
    assert C.main(['rehearse', 'toy', '--out', str(tmp_path/'reh'), '--compare', 'none']) == 1   # nockpt fails
    out = capsys.readouterr().out.splitlines()
    assert any(l.startswith('ok  99_toy.full') and 'loss=' in l and '1 rows (base)' in l for l in out), out
    assert any(l.startswith('FAIL 99_toy.nockpt') and 'no kill point' in l for l in out), out
    assert out[-1] == '1/2 parameter sets rehearsed'

# --- the real parameter sets --------------------------------------------------------------------------------------

@pytest.mark.parametrize('path', SETS, ids=[p.stem for p in SETS])
def test_every_set_has_a_plan_that_only_shrinks(path):
    "Each set's plan (asked without writing anything) names its branch, overrides real parameters and no path."
    plan = H.make_plan(path)
    assert plan.branch and plan.metric and plan.nproc >= 1
    H.check_recipe_batch(plan.recipe_batch)          # the set's batch x processes x accumulation = the recipe's
    params = R.notebook_parameters(R.resolve_notebook(H.set_notebook(path), ROOT/'nbs'))
    R.check_parameters(plan.overrides, params, f" (rehearsal overrides of {path.name})")
    assert not [k for k in plan.overrides if R.path_kind(params[k])], "a rehearsal must not move a path"
    if plan.nproc > 1: assert plan.overrides.get('nproc') == plan.nproc

def _rehearse(tmp_path, *args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'VLREPRO_NBS': str(ROOT/'nbs')}
    p = subprocess.run([sys.executable, '-m', 'vlrepro.cli', 'rehearse', *args, '--out', str(tmp_path/'reh'), '--jobs', '2'],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    return p, p.stdout.strip().splitlines()

def test_rehearse_one_set_per_branch(tmp_path):
    # CI: launched, killed, resumed, reported; the comparison with an uninterrupted run (a third notebook run per set)
    # is left to `--all` (the long test below) to keep CI near its time budget
    p, lines = _rehearse(tmp_path, '--one-per-branch', '--compare', 'none')
    n = len(H.select_sets([], all_sets=True, one_per_branch=True))
    assert p.returncode == 0, '\n'.join(l for l in lines if not l.startswith('ok '))[-8000:] + p.stderr[-2000:]
    assert lines[-1] == f"{n}/{n} parameter sets rehearsed"
    ok = [l for l in lines if l.startswith('ok ')]
    assert len(ok) == n and all(', resumed' in l or 'no training to kill' in l for l in ok), '\n'.join(ok)
    n_eval = sum(not H.make_plan(s).trains for s in H.select_sets([], all_sets=True, one_per_branch=True))
    assert sum(', resumed' in l for l in ok) >= n - n_eval   # every branch trains except the evaluation-only ones

def test_one_per_branch_prefers_a_set_that_trains():
    "Bug: the first set by name was kept, so 30_laps.f30k_vit.released (evaluation only) replaced f30k_vit in CI: no kill/resume."
    plans = {s: H.make_plan(s) for s in SETS}
    ci = H.select_sets([], all_sets=True, one_per_branch=True)
    assert len({(H.set_notebook(s), p.branch) for s, p in plans.items()}) == len(ci)
    for s in ci:
        if not plans[s].trains:
            assert not any(p.trains for t, p in plans.items()
                           if p.branch == plans[s].branch and H.set_notebook(t) == H.set_notebook(s)), s.name
    assert {'30_laps.f30k_vit.yaml', '30_laps.f30k_swin.yaml', '40_ademvl.sqa_7b.released.yaml'} <= {s.name for s in ci}

@pytest.mark.slow
@pytest.mark.long
def test_rehearse_all(tmp_path):
    p, lines = _rehearse(tmp_path, '--all')
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert lines[-1] == f"{len(SETS)}/{len(SETS)} parameter sets rehearsed"


def test_a_child_failure_keeps_its_message_and_names_its_log(tmp_path):
    "Bug (CI): only a FAIL line's first line reached the test, cut at 4000 characters, and the child's output was lost."
    log = tmp_path / '11_crossget.x.log'
    log.write_text("rehearsing 1 parameter set(s) into /r\n    11_crossget.x: overrides epochs=1\n"
                   "FAIL 11_crossget.x: the rerun after the kill failed: training job failed (exit 1)\n"
                   "terminate called without an active exception\n0/1 parameter sets rehearsed\n")
    assert H._outcome(log, 1).splitlines() == [
        "FAIL 11_crossget.x: the rerun after the kill failed: training job failed (exit 1)",
        "terminate called without an active exception", f"     (the whole output: {log})"]
    log.write_text("Traceback (most recent call last):\nMemoryError\n")       # died before printing its outcome
    assert H._outcome(log, -9).splitlines()[0] == "FAIL 11_crossget.x: the rehearsal process exited -9"
    log.write_text("ok  11_crossget.x  clip  1 proc\n1/1 parameter sets rehearsed\n")
    assert H._outcome(log, 0) == "ok  11_crossget.x  clip  1 proc"
