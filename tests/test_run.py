"The `vlrepro` CLI: parameter checking, papermill runs, failure handling and the report."
import json, subprocess, sys
from pathlib import Path
import pytest
from vlrepro import run as R
from vlrepro.core import write_results, register_paper_numbers, PaperNumber, compare

TOY_PARAMS = ("epochs: int = 1   # passes over the data\nlr: float = 0.001   # learning rate\n"
              "name: str = 'tiny'   # model preset\nout_dir: str = '_runs/toy'   # results.json goes here\n")
TOY_BODY = ("import json, pathlib\npathlib.Path(out_dir).mkdir(parents=True, exist_ok=True)\n"
            "json.dump({'paper':'demo','params':{'epochs':epochs,'lr':lr},'metrics':{'acc':0.5*epochs}},"
            " open(pathlib.Path(out_dir)/'results.json','w'))")

def toy_nb(path: Path, body=TOY_BODY):
    cells = [{'id': 'p0', 'cell_type': 'code', 'metadata': {'tags': ['parameters']}, 'execution_count': None, 'outputs': [],
              'source': TOY_PARAMS},
             {'id': 'b0', 'cell_type': 'code', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': body}]
    nb = {'cells': cells, 'metadata': {'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}},
          'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb)); return path

@pytest.fixture
def nbs(tmp_path, monkeypatch):
    d = tmp_path/'nbs'; d.mkdir(); (d/'params').mkdir()
    toy_nb(d/'99_toy.ipynb'); toy_nb(d/'98_bad.ipynb', body="raise RuntimeError('boom in cell')")
    (d/'params'/'99_toy.big.yaml').write_text("epochs: 6\nlr: 0.01\n")
    (d/'params'/'99_toy.typo.yaml').write_text("epoch: 6\n")
    monkeypatch.setenv('VLREPRO_NBS', str(d))
    return d

def test_resolve_by_stem_module_and_errors(nbs):
    assert R.resolve_notebook('99_toy') == nbs/'99_toy.ipynb'
    assert R.resolve_notebook('toy') == nbs/'99_toy.ipynb'
    with pytest.raises(FileNotFoundError, match="runnable notebooks: 98_bad, 99_toy"):
        R.resolve_notebook('lapz')

def test_run_with_param_set_and_override(nbs, tmp_path):
    rd = R.run_notebook('toy', {'lr': '0.5'}, nbs/'params'/'99_toy.big.yaml', out=tmp_path/'r', progress=False)
    rec = json.loads((rd/'results.json').read_text())
    assert rec['params'] == {'epochs': 6, 'lr': 0.5} and rec['metrics'] == {'acc': 3.0}
    assert (rd/'99_toy.ipynb').exists()

def test_unknown_and_mistyped_parameters_fail_before_running(nbs, tmp_path):
    with pytest.raises(ValueError, match=r"unknown parameter 'epoch' in .*typo.yaml.*\n.*epochs: int = 1"):
        R.run_notebook('toy', param_file=nbs/'params'/'99_toy.typo.yaml', out=tmp_path/'a', progress=False)
    with pytest.raises(ValueError, match="parameter 'epochs' given with -p must be int, got 'two'"):
        R.run_notebook('toy', {'epochs': 'two'}, out=tmp_path/'b', progress=False)
    assert not (tmp_path/'a'/'99_toy.ipynb').exists() and not (tmp_path/'b').exists()

def test_failing_cell_keeps_executed_notebook_and_exits_nonzero(nbs, tmp_path):
    out = tmp_path/'fail'
    p = subprocess.run([sys.executable, '-m', 'vlrepro.run', 'run', 'bad', '--out', str(out), '-q'],
                       capture_output=True, text=True, env={**__import__('os').environ, 'VLREPRO_NBS': str(nbs)})
    assert p.returncode == 1, p.stderr
    assert 'boom in cell' in p.stderr and (out/'98_bad.ipynb').exists()
    executed = json.loads((out/'98_bad.ipynb').read_text())
    assert any(o.get('ename') == 'RuntimeError' for c in executed['cells'] for o in c.get('outputs', []))

def test_cli_list_and_exit_codes(nbs, capsys):
    assert R.main(['list']) == 0
    out = capsys.readouterr().out
    assert '99_toy' in out and 'epochs: int = 1  # passes over the data' in out and 'params/99_toy.big.yaml' in out
    assert R.main(['run', 'toy', '-p', 'nope', '1']) == 2
    assert "unknown parameter 'nope'" in capsys.readouterr().err

def test_report_table_and_plots(tmp_path):
    register_paper_numbers('demo', [PaperNumber('demo', 'T1', 'base', 'R@1', 80.0), PaperNumber('demo', 'T1', 'base', 'R@5', 95.0)])
    write_results(tmp_path/'runA', 'demo', {}, {'R@1': 30.0}, comparison=compare('demo', {('base', 'R@1'): 30.0}),
                  extra={'tradeoff': [dict(method='m', setting='s', metric='R@1', value=30.0, gflops=1.0, throughput=5.0)]})
    md = R.report([tmp_path], out=tmp_path/'rep')
    assert '| demo | runA | base | R@1 | 80 | 30 | -50 | tiny-synthetic |' in md
    assert '| demo | runA | base | R@5 | 95 |  |  |  |' in md  # a paper number this run did not measure
    names = sorted(p.name for p in (tmp_path/'rep').iterdir())
    assert names == ['demo_R_1_vs_gflops.png', 'demo_R_1_vs_throughput.png', 'report.html', 'report.md']

def test_train_and_bench_pass_options_through(tmp_path, capsys):
    cfg = tmp_path/'cfg.json'
    cfg.write_text(json.dumps({'out_dir': str(tmp_path/'t'), 'epochs': 1, 'batch_size': 8, 'progress': False}))
    assert R.main(['train', '--task', 'vlrepro.train:demo_task', '--config', str(cfg)]) == 0
    assert (tmp_path/'t'/'model.pt').exists()
    assert R.main(['bench', 'nope', '--texts', '2']) == 2 and "unknown paper 'nope'" in capsys.readouterr().err
