"Papermill smoke runs: every paper notebook runs top to bottom with its defaults and writes a results.json."
import json, os
from pathlib import Path
import pytest
from vlrepro import run as R
from vlrepro.core import read_results

NBS = Path(__file__).resolve().parents[1]/'nbs'
PAPER_NBS = sorted(p.stem for p in NBS.glob('[1-5][0-9]_*.ipynb') if R._has_parameters(p))

def test_every_paper_has_a_runnable_notebook():
    have = {s.split('_', 1)[1].split('_')[0] for s in PAPER_NBS}
    missing = set(R.PAPERS) - have
    assert not missing, f"paper notebooks without a parameters cell: {missing}"

@pytest.mark.parametrize('stem', PAPER_NBS)
def test_papermill_defaults_write_results(stem, tmp_path, monkeypatch):
    monkeypatch.setenv('VLREPRO_NBS', str(NBS))
    rd = R.run_notebook(stem, out=tmp_path/stem, progress=False)
    rec = read_results(rd)
    assert rec['paper'] in R.PAPERS and rec['scale'] == 'tiny-synthetic'
    assert rec['metrics'], 'a default run must measure something'
    assert all(isinstance(v, (int, float, str, bool, type(None), list, dict)) for v in rec['metrics'].values())
    assert (rd/f'{stem}.ipynb').exists()
    assert R.report([rd])  # the report can read it
