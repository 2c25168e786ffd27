"The `vlrepro` CLI: parameter checking, papermill runs, failure handling and the report."
import json, os, subprocess, sys
from pathlib import Path
import pytest
from vlrepro import cli as C, run as R
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
    p = subprocess.run([sys.executable, '-m', 'vlrepro.cli', 'run', 'bad', '--out', str(out), '-q'],
                       capture_output=True, text=True, env={**__import__('os').environ, 'VLREPRO_NBS': str(nbs)})
    assert p.returncode == 1, p.stderr
    assert 'boom in cell' in p.stderr and (out/'98_bad.ipynb').exists()
    executed = json.loads((out/'98_bad.ipynb').read_text())
    assert any(o.get('ename') == 'RuntimeError' for c in executed['cells'] for o in c.get('outputs', []))

def test_cli_list_and_exit_codes(nbs, capsys):
    assert C.main(['list']) == 0
    out = capsys.readouterr().out
    assert '99_toy' in out and 'epochs: int = 1  # passes over the data' in out and 'params/99_toy.big.yaml' in out
    assert C.main(['run', 'toy', '-p', 'nope', '1']) == 2
    assert "unknown parameter 'nope'" in capsys.readouterr().err

def test_report_table_and_plots(tmp_path):
    register_paper_numbers('demo', [PaperNumber('demo', 'T1', 'base', 'R@1', 80.0), PaperNumber('demo', 'T1', 'base', 'R@5', 95.0),
                                    PaperNumber('demo', 'T1', 'base', 'gflops', 4.0, 'GFLOPs')])
    write_results(tmp_path/'runA', 'demo', {}, {'R@1': 30.0}, comparison=compare('demo', {('base', 'R@1'): 30.0}),
                  extra={'tradeoff': [dict(method='m', setting='s', metric='R@1', value=30.0, gflops=1.0, throughput=5.0)]})
    summary = R.report([tmp_path], out=tmp_path/'rep')
    md = (tmp_path/'rep'/'report.md').read_text()
    assert '| base | R@1 | % | 80 | 30 (tiny-synthetic, runA) |  |' in md     # no difference at toy scale
    assert '| base | R@5 | % | 95 |  |  |' in md                             # a paper number this run did not measure
    assert md.count('| base | R@1 |') == 1
    names = sorted(p.name for p in (tmp_path/'rep').iterdir())
    assert names == ['demo_r-1_vs_gflops.png', 'report.html', 'report.md']
    assert summary.splitlines()[0].startswith('demo: claims holding 0 of 0; 1 result(s)')

def test_report_marks_partial_runs(tmp_path):
    write_results(tmp_path/'stopped', 'demo', {}, {'acc': 1.0}, status='partial')
    assert 'stopped (partial)' in R.report([tmp_path])
def test_train_and_bench_pass_options_through(tmp_path, capsys):
    cfg = tmp_path/'cfg.json'
    cfg.write_text(json.dumps({'out_dir': str(tmp_path/'t'), 'epochs': 1, 'batch_size': 8, 'progress': False}))
    assert C.main(['train', '--task', 'vlrepro.train:demo_task', '--config', str(cfg)]) == 0
    assert (tmp_path/'t'/'model.pt').exists()
    assert C.main(['bench', 'nope', '--texts', '2']) == 2 and "unknown paper 'nope'" in capsys.readouterr().err

def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, '-m', 'vlrepro.cli', *args], capture_output=True, text=True,
                          env={**__import__('os').environ, **(env or {})}, **kw)

def test_cli_rough_edges(nbs, tmp_path, capsys):
    assert C.main(['list', 'toy']) == 0 and capsys.readouterr().out.startswith('99_toy')
    assert C.main(['run', 'tyo']) == 2 and "did you mean 'toy'?" in capsys.readouterr().err
    assert C.main(['run', 'toy', '-p', 'epoch', '2']) == 2 and "(did you mean 'epochs'?)" in capsys.readouterr().err
    (nbs/'params'/'98_bad.other.yaml').write_text("epochs: 2\n")
    assert C.main(['run', 'toy', '--params', str(nbs/'params'/'98_bad.other.yaml')]) == 2
    assert 'is a parameter set of 98_bad, not of 99_toy: run `vlrepro run 98_bad --params' in capsys.readouterr().err
    (nbs/'params'/'99_toy.cpu-demo.yaml').write_text("epochs: 2\n")
    assert C.main(['run', 'toy', '-p', 'preset', 'cpu-demo']) == 2
    assert "'cpu-demo' is one of its parameter sets: use --params nbs/params/99_toy.cpu-demo.yaml" in capsys.readouterr().err
    (tmp_path/'afile').write_text('x')
    assert C.main(['run', 'toy', '--out', str(tmp_path/'afile')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'is a file; give a folder' in err
    assert C.main(['report', str(tmp_path/'runs'), '--out', str(tmp_path/'afile')]) == 2
    assert C.main(['bench', 'lapz']) == 2 and "did you mean 'laps'?" in capsys.readouterr().err
    assert C.main(['run', 'toy', '--dry-run', '-p', 'epochs', '3']) == 0 and 'epochs = 3' in capsys.readouterr().out

def test_cli_is_light_and_every_argument_has_help():
    p = _cli('--help')
    assert p.returncode == 0
    code = "import sys, vlrepro.cli as c; c.parser(); print('torch' in sys.modules, 'papermill' in sys.modules)"
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout.split() == ['False', 'False']
    for name, sp in C.parser()._subparsers._group_actions[0].choices.items():
        for a in sp._actions:
            if a.dest != 'help': assert a.help, f"vlrepro {name}: argument {a.dest} has no help text"

def test_closed_pipe_gives_one_line(nbs):
    import os
    p = subprocess.Popen([sys.executable, '-m', 'vlrepro.cli', 'list'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, 'VLREPRO_NBS': str(nbs)}, text=True)
    p.stdout.readline(); p.stdout.close()   # `vlrepro list | head -1`
    err = p.stderr.read(); p.wait()
    assert 'Traceback' not in err and err.count('\n') <= 1, err

def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    import os, signal, time
    d = tmp_path/'nbs'; d.mkdir()
    toy_nb(d/'99_toy.ipynb', body="import pathlib, time\npathlib.Path('kernel-up').touch()\ntime.sleep(60)")   # runs in nbs/
    p = subprocess.Popen([sys.executable, '-m', 'vlrepro.cli', 'run', 'toy', '--out', str(tmp_path/'r'), '-q'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, 'VLREPRO_NBS': str(d)})
    for _ in range(240):   # wait until the kernel runs the sleeping cell (papermill saves outputs only between cells)
        time.sleep(0.25)
        if (d/'kernel-up').exists(): break
    assert (d/'kernel-up').exists() and p.poll() is None, p.communicate()
    time.sleep(1); p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert 'interrupted; partial notebook at' in err and 'rerun the same command' in err and 'Traceback' not in err, err

def test_readme_examples_are_valid(capsys):
    "Every `vlrepro ...` command in the README parses, and every `vlrepro run` example passes its checks (--dry-run)."
    import re, shlex
    readme = (Path(__file__).resolve().parents[1]/'README.md').read_text()
    cmds = {c.strip() for c in re.findall(r'`(vlrepro [^`]+)`', readme) if '<' not in c and '...' not in c}
    cmds |= {l.split('#')[0].strip() for l in readme.splitlines() if l.strip().startswith('vlrepro ')}
    assert cmds
    for c in sorted(cmds):
        argv = shlex.split(c)[1:]
        if argv[0] == 'run':
            rc = C.main(argv + ['--dry-run'])
            err = capsys.readouterr().err
            assert rc == 0 or 'missing inputs' in err, (c, err)   # a full-scale example may name data this machine lacks
        elif argv[0] in ('train', 'bench'): continue            # their options belong to the entry point
        else: C.parser().parse_args(argv)

def test_reproduce_runs_two_at_once_with_progress(tmp_path):
    "Two notebooks run side by side; a long cell is never silent for longer than the heartbeat; then a report."
    import os
    d = tmp_path/'nbs'; d.mkdir()
    body = TOY_BODY + "\nimport time\ntime.sleep(4)"
    toy_nb(d/'97_one.ipynb', body=body); toy_nb(d/'99_two.ipynb', body=body)
    p = _cli('reproduce', '--out', str(tmp_path/'rep'), env={'VLREPRO_NBS': str(d), 'VLREPRO_HEARTBEAT_S': '1'})
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    starts = [i for i, l in enumerate(lines) if l.endswith('started')]
    dones = [i for i, l in enumerate(lines) if ' done in ' in l]
    assert len(starts) == 2 and max(starts) < min(dones), lines          # both started before either finished
    assert any(l.startswith('[97_one] cell ') for l in lines), lines      # heartbeat: which cell is running
    assert (tmp_path/'rep'/'report'/'report.html').exists() and 'report:' in p.stdout

def test_bench_for_every_paper(tmp_path, capsys):
    "`vlrepro bench PAPER` exists for all five papers; the cheap ones run through the CLI and write their table."
    import importlib, json
    assert all(hasattr(importlib.import_module(f'vlrepro.{p}'), 'bench_main') for p in C.PAPERS), C.PAPERS
    assert C.main(['bench', 'ademvl', '--flops-only', '--out', str(tmp_path/'a.json')]) == 0
    rows = json.loads((tmp_path/'a.json').read_text())['rows']
    assert [r['variant'] for r in rows] == ['text only', 'ADEM (embedded)', 'input-space (prepend)']
    assert C.main(['bench', 'laps', '--images', '2', '--captions', '3', '--embed', '16', '--repeats', '1',
                   '--out', str(tmp_path/'l.json')]) == 0
    rows = json.loads((tmp_path/'l.json').read_text())['rows']
    assert rows[0]['tokens'] == 197 and [r['tokens'] for r in rows[1:]] == [laps_tokens(r) for r in (0.7, 0.5, 0.3)]
    assert 'LAPS alignment' in capsys.readouterr().out

def laps_tokens(r):
    from vlrepro.laps import num_final_tokens
    return num_final_tokens(196, r, 0.4, True)

def test_bench_all_on_cpu_writes_records_and_report(tmp_path):
    # `vlrepro bench all` at its reduced CPU sizes: every paper's table, one results record each, claims, a report
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    p = subprocess.run([sys.executable, '-m', 'vlrepro.cli', 'bench', 'all', '--out', str(tmp_path/'b')],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for paper in C.PAPERS:
        rec = json.loads((tmp_path/'b'/f'bench-{paper}'/'results.json').read_text())
        assert rec['paper'] == paper and rec['scale'] == 'architecture-reduced' and rec['claims'], rec
        assert rec['extra']['command'].startswith(f'vlrepro bench {paper} ') and rec['efficiency']
        assert f"[bench-{paper}] " in p.stdout
    rep = (tmp_path/'b'/'report'/'report.md').read_text()
    assert rep.count('| bench-') >= 5 and 'architecture-reduced' in rep
    assert '| bench-das | k=4/latency_reduction |' in rep    # efficiency figures listed per run

def test_report_claims_and_tradeoff_per_paper(tmp_path):
    # two papers: 'pa' registers GFLOPs (metric 'GFLOPs', in MFLOPs) beside its accuracies, 'pb' has no GFLOPs at all
    register_paper_numbers('pa', [PaperNumber('pa', 'T', 'base', 'acc', 80.0), PaperNumber('pa', 'T', 'base', 'GFLOPs', 4000.0, 'MFLOPs'),
                                  PaperNumber('pa', 'T', 'fast', 'acc', 78.0), PaperNumber('pa', 'T', 'fast', 'GFLOPs', 2000.0, 'MFLOPs'),
                                  PaperNumber('pa', 'T', 'fast', 'latency', 3.0, 's')])
    register_paper_numbers('pb', [PaperNumber('pb', 'T', 'base', 'Avg', 90.0)])
    write_results(tmp_path/'runA', 'pa', {}, {'acc': 30.0},
                  extra=dict(claims=[dict(claim='fast within 3 points of base', measured='29.0 vs 30.0', holds=True),
                                     dict(claim='fast beats base', measured='29.0 vs 30.0', holds=False)],
                             tradeoff=[dict(method='base', setting='s0', metric='acc', value=30.0, gflops=0.02),
                                       dict(method='fast', setting='s1', metric='acc', value=29.0, gflops=0.01)]))
    write_results(tmp_path/'runB', 'pb', {}, {'Avg': 0.5},
                  extra=dict(claims=[dict(claim='fusion learns the picture', measured='+12 points', holds=True)],
                             tradeoff=[dict(method='m', setting='s', metric='Avg', value=0.5, gflops=0.1, unit='fraction'),
                                       dict(method='n', setting='s', metric='Avg', value=0.4, gflops=0.2, unit='fraction')]))
    pa = R.tradeoff_points(R._records([tmp_path]), 'pa')
    assert sorted((p['source'], p['gflops'], p['value']) for p in pa) == [('base', 0.02, 30.0), ('fast', 0.01, 29.0),
                                                                        ('paper', 2.0, 78.0), ('paper', 4.0, 80.0)]
    pb = R.tradeoff_points(R._records([tmp_path]), 'pb')
    assert [(p['source'], p['unit'], p['value']) for p in pb] == [('m', '%', 50.0), ('n', '%', 40.0)]
    summary = R.report([tmp_path], out=tmp_path/'rep')
    md = (tmp_path/'rep'/'report.md').read_text()
    assert md.count('### Claims checked') == 2
    assert '| fast within 3 points of base | 29.0 vs 30.0 | holds | runA | tiny-synthetic |' in md
    assert '| fast beats base | 29.0 vs 30.0 | does not hold | runA | tiny-synthetic |' in md
    assert '| fusion learns the picture | +12 points | holds | runB | tiny-synthetic |' in md
    figs = sorted(p.name for p in (tmp_path/'rep').glob('*.png'))
    assert figs == ['pa_acc_vs_gflops.png', 'pb_avg_vs_gflops.png'], figs
    assert '![pa_acc_vs_gflops](pa_acc_vs_gflops.png)' in md and '![pb_avg_vs_gflops](pb_avg_vs_gflops.png)' in md
    lines = summary.splitlines()
    assert lines[0].startswith('pa: claims holding 1 of 2;') and lines[0].endswith('1 figure(s)'), lines
    assert lines[1].startswith('pb: claims holding 1 of 1;') and lines[1].endswith('1 figure(s)'), lines

def test_tradeoff_figure_needs_a_run_point(tmp_path):
    register_paper_numbers('pc', [PaperNumber('pc', 'T', 'base', 'acc', 80.0), PaperNumber('pc', 'T', 'base', 'gflops', 4.0, 'GFLOPs')])
    write_results(tmp_path/'r', 'pc', {}, {'acc': 1.0})
    assert R.report([tmp_path], out=tmp_path/'rep').splitlines()[0].endswith('0 figure(s)')
    assert not list((tmp_path/'rep').glob('*.png'))

def test_report_draws_benchmark_points_for_a_paper_without_costs(tmp_path):
    "VQAScore has no GFLOPs axis: its runs record per-benchmark points (the paper's and theirs), drawn as one figure."
    pts = [dict(source='paper', setting='CLIP-FlanT5-XXL', metric='winoground_group', value=46.0, unit='%', scale='paper'),
           dict(source='this run', setting='tiny VQAScore', metric='winoground_group', value=0.0, unit='%', scale='tiny-synthetic')]
    write_results(tmp_path/'run', 'pv', {}, {'x': 1.0}, extra=dict(benchmark_points=pts))
    summary = R.report([tmp_path], out=tmp_path/'rep')
    assert summary.splitlines()[0].endswith('1 figure(s)')
    assert '![pv_benchmarks](pv_benchmarks.png)' in (tmp_path/'rep'/'report.md').read_text()
    assert (tmp_path/'rep'/'pv_benchmarks.png').stat().st_size > 1000
