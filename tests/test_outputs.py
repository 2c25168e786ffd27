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


def _nb(*sources, kernel=True):
    cells = [{'cell_type': 'code', 'metadata': {}, 'source': s, 'outputs': [], 'execution_count': None} for s in sources]
    meta = {'kernelspec': {'display_name': 'Python 3 (ipykernel)', 'language': 'python', 'name': 'python3'}} if kernel else {}
    return {'cells': cells, 'metadata': meta, 'nbformat': 4, 'nbformat_minor': 5}


def test_save_runs_a_fresh_copy_and_ends_as_nbdev_clean_writes(tmp_path):
    "An earlier run under nbs/_runs is not resumed (nor touched); the saved notebook is what nbdev_clean leaves."
    proj = tmp_path/'proj'; (proj/'nbs'/'_runs'/'x').mkdir(parents=True)
    (proj/'settings.ini').write_text((NBS.parent/'settings.ini').read_text())
    (proj/'nbs'/'_runs'/'x'/'ckpt').write_text('earlier')
    src = ("import pathlib\np = pathlib.Path('_runs/x'); print('resumed' if (p/'ckpt').exists() else 'fresh')\n"
           "p.mkdir(parents=True, exist_ok=True); (p/'ckpt').write_text('new')")
    f = proj/'nbs'/'01_x.ipynb'; f.write_text(json.dumps(_nb(src)))
    r = subprocess.run([sys.executable, '-m', 'vlrepro.outputs', 'save', str(f)], capture_output=True, text=True, cwd=proj/'nbs')
    assert r.returncode == 0, r.stderr
    nb = json.loads(f.read_text())
    assert ''.join(nb['cells'][0]['outputs'][0]['text']) == 'fresh\n'
    assert (proj/'nbs'/'_runs'/'x'/'ckpt').read_text() == 'earlier' and sorted(os.listdir(proj/'nbs'/'_runs')) == ['x']
    assert nb['metadata']['kernelspec']['display_name'] == 'python3'   # as nbdev_clean writes it
    saved = f.read_text()
    subprocess.run(['nbdev_clean', '--fname', str(f)], cwd=proj, check=True)
    assert f.read_text() == saved                                      # nbdev_clean has nothing left to change


def test_stamp_leaves_out_the_tooling_but_not_a_notebooks_own_module(tmp_path):
    lib = tmp_path/'lib'; lib.mkdir()
    for m in ('core', 'cli', 'run', 'rehearse', 'outputs'): (lib/f'{m}.py').write_text(f'# {m}\n')
    paper, own = tmp_path/'11_p.ipynb', tmp_path/'90_cli.ipynb'
    paper.write_text(json.dumps(_nb('#| default_exp p', 'x = 1'))); own.write_text(json.dumps(_nb('#| default_exp cli', 'x = 1')))
    before = {p: outputs.code_stamp(p, lib) for p in (paper, own)}
    (lib/'cli.py').write_text('# cli, changed\n')
    assert outputs.code_stamp(paper, lib) == before[paper]   # a paper notebook's outputs do not depend on the CLI
    assert outputs.code_stamp(own, lib) != before[own]       # 90_cli's own outputs do
    for m in ('run', 'rehearse', 'outputs'): (lib/f'{m}.py').write_text('# changed\n')
    assert outputs.code_stamp(paper, lib) == before[paper]
    (lib/'core.py').write_text('# core, changed\n')
    assert outputs.code_stamp(paper, lib) != before[paper]   # the workbench does
