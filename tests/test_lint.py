"Lint what the tests cannot reach: names used before they are defined and dead assignments, in the library and in each notebook's code cells taken in order."
import json, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
RULES = 'F821,F822,F823,F841'   # undefined names (incl. annotations), undefined __all__ names, local used before
                                 # assignment, a local assigned and never used
ruff = shutil.which('ruff') or pytest.skip('ruff is in the dev extra: pip install -e ".[dev]"', allow_module_level=True)

def _check(*paths):
    p = subprocess.run([ruff, 'check', '--no-cache', '--select', RULES, '--config', 'builtins = ["display", "get_ipython"]',
                        '--output-format', 'concise', *map(str, paths)], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr

def notebook_as_script(nb:Path)->str:
    "A notebook's code cells in order, one script (shell and magic lines blanked), each cell marked with its index."
    cells = json.loads(nb.read_text())['cells']
    out = []
    for i, c in enumerate(cells):
        if c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        src = '\n'.join('pass  # magic' if l.lstrip().startswith(('%', '!')) else l for l in src.splitlines())
        out.append(f"# %% {nb.name} cell {i}\n{src}\n")
    return '\n'.join(out)

def test_library_lints_clean():
    rc, out = _check(ROOT/'vlrepro')
    assert rc == 0, out

@pytest.mark.parametrize('nb', sorted((ROOT/'nbs').glob('[0-9]*.ipynb')) + [ROOT/'nbs'/'index.ipynb'], ids=lambda p: p.stem)
def test_notebook_lints_clean(nb, tmp_path):
    script = tmp_path/f"{nb.stem}.py"
    script.write_text(notebook_as_script(nb))
    rc, out = _check(script)
    assert rc == 0, f"{nb.name} (cells concatenated in order; the line's cell is the '# %%' marker above it):\n{out}"

def test_lint_catches_a_name_used_before_it_is_defined(tmp_path):
    "The failure this guards against: a results cell naming a variable no earlier cell defines."
    nb = {'cells': [{'cell_type': 'code', 'source': "name = {'crossget': f'CLIP CrossGET rv={rv}'}"},
                    {'cell_type': 'code', 'source': 'rv = 16'}]}
    (tmp_path/'x.ipynb').write_text(json.dumps(nb))
    (tmp_path/'x.py').write_text(notebook_as_script(tmp_path/'x.ipynb'))
    rc, out = _check(tmp_path/'x.py')
    assert rc == 1 and "Undefined name `rv`" in out

def test_tests_import_the_project_plainly():
    # pytest.importorskip on the project's own modules would turn a broken import into a skip
    bad = [f"{f.name}:{i}" for f in sorted(Path(__file__).parent.glob('test_*.py')) if f.name != Path(__file__).name
           for i, l in enumerate(f.read_text().splitlines(), 1) if "importorskip('vlrepro" in l]
    assert not bad, f"use plain imports of vlrepro modules in tests: {bad}"
