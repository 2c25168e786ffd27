"Saved outputs: every committed notebook carries the outputs of its default run, made by the code as it is now."
import json, os, subprocess, sys
from pathlib import Path
from vlrepro import outputs
from vlrepro.run import find_nbs

NBS = find_nbs(Path(__file__).parent)

def test_saved_outputs_were_made_by_the_current_code():
    stale = outputs.stale_notebooks(NBS)
    assert not stale, ("saved outputs older than the code (run `vlrepro outputs` and commit the notebooks):\n" +
                       '\n'.join(f'  {n}: {why}' for n, why in stale))

def test_every_paper_notebook_shows_a_figure_or_table_without_running():
    for p in [NBS/f'{n}.ipynb' for n in ('11_crossget', '12_crossget_llava', '20_das', '30_laps', '40_ademvl', '50_vqascore')]:
        outs = [o for c in json.loads(p.read_text())['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]
        kinds = {k for o in outs for k in o.get('data', {})}
        assert kinds & {'image/png', 'text/html'}, f"{p.name} has no saved figure or table"

def test_check_command_fails_on_a_stale_notebook(tmp_path):
    nb = {'cells': [{'cell_type': 'code', 'metadata': {}, 'source': 'x = 1', 'outputs': [], 'execution_count': None}],
          'metadata': {outputs.STAMP_KEY: {'outputs_code': '0' * 64}}, 'nbformat': 4, 'nbformat_minor': 5}
    (tmp_path/'settings.ini').write_text('[DEFAULT]\n'); (tmp_path/'nbs').mkdir()
    (tmp_path/'nbs'/'01_x.ipynb').write_text(json.dumps(nb))
    r = subprocess.run([sys.executable, '-m', 'vlrepro.cli', 'outputs', '--check'], capture_output=True, text=True,
                       env={**os.environ, 'VLREPRO_NBS': str(tmp_path/'nbs')}, cwd=tmp_path)
    assert r.returncode == 1 and '01_x.ipynb: outputs made by other code' in r.stdout and 'vlrepro outputs' in r.stderr, r
