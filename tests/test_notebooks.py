"Papermill smoke runs: every paper notebook runs top to bottom with its defaults and writes a results.json."
import json, os
from pathlib import Path
import pytest
from vlrepro import cli as C, run as R
from vlrepro.core import read_results

NBS = Path(__file__).resolve().parents[1]/'nbs'
ALL_PAPER_NBS = sorted(p.stem for p in NBS.glob('[1-5][0-9]_*.ipynb') if R._has_parameters(p))
# These notebooks have their own papermill smoke test with paper-specific checks (and smaller parameters); running
# them here again would only double CI time.
OWN_SMOKE_TEST = {'20_das': 'test_das.py::test_notebook_papermill_smoke', '30_laps': 'test_laps.py::test_papermill_smoke',
                  '40_ademvl': 'test_ademvl.py::test_notebook_smoke_run'}
# These run under papermill in CI's rehearsal (test_rehearse.py::test_rehearse_one_set_per_branch rehearses their
# cpu-demo set: the same notebook, killed, resumed, compared and its results.json checked), at a smaller scale.
REHEARSED = {'11_crossget': '11_crossget.cpu-demo.yaml', '50_vqascore': '50_vqascore.cpu-demo.yaml'}
PAPER_NBS = [s for s in ALL_PAPER_NBS if s not in OWN_SMOKE_TEST and s not in REHEARSED]

def test_every_paper_has_a_runnable_notebook():
    have = {s.split('_', 1)[1].split('_')[0] for s in ALL_PAPER_NBS}
    missing = set(C.PAPERS) - have
    assert not missing, f"paper notebooks without a parameters cell: {missing}"

@pytest.mark.parametrize('stem', PAPER_NBS)
def test_papermill_defaults_write_results(stem, tmp_path, monkeypatch):
    monkeypatch.setenv('VLREPRO_NBS', str(NBS))
    rd = R.run_notebook(stem, out=tmp_path/stem, progress=False)
    rec = read_results(rd)
    assert rec['paper'] in C.PAPERS and rec['scale'] == 'tiny-synthetic'
    assert rec['metrics'], 'a default run must measure something'
    assert all(isinstance(v, (int, float, str, bool, type(None), list, dict)) for v in rec['metrics'].values())
    assert (rd/f'{stem}.ipynb').exists()
    assert R.report([rd])  # the report can read it

def test_own_smoke_tests_exist():
    for stem, where in OWN_SMOKE_TEST.items():
        f, fn = where.split('::')
        assert f'def {fn}(' in (Path(__file__).parent/f).read_text(), f"{stem}: {where} is gone; run it here instead"

def test_rehearsed_notebooks_are_in_the_ci_rehearsal():
    from vlrepro import rehearse as H
    ci = {p.name for p in H.select_sets([], all_sets=True, one_per_branch=True)}
    for stem, s in REHEARSED.items():
        assert s in ci and H.make_plan(NBS/'params'/s, None, 'cpu').branch == 'cpu-demo', f"{stem}: {s} is not rehearsed in CI; run it here instead"

@pytest.mark.parametrize('stem', ALL_PAPER_NBS)
def test_every_parameter_line_is_seen_by_papermill(stem):
    "A parameters-cell line papermill cannot parse (e.g. an '=' in its comment) silently vanishes from `vlrepro run -p`."
    nb = json.loads((NBS/f'{stem}.ipynb').read_text())
    cell = next(c for c in nb['cells'] if 'parameters' in c.get('metadata', {}).get('tags', []))
    names = [l.split(':')[0].split('=')[0].strip() for l in ''.join(cell['source']).splitlines() if l[:1].isalpha()]
    seen = R.notebook_parameters(NBS/f'{stem}.ipynb')
    assert [n for n in names if n not in seen] == []
