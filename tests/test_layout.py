"""The library's layering, read from the exported modules themselves.

Each module is exported by one notebook, and the notebook's number is the module's layer: the workbench (00-09), the
methods and their reproduction pipelines (10-59), the tooling that knows every paper (80-99). A module may import only
from layers at or below its own, statically or through `importlib` ("vlrepro.x" / "vlrepro.x:name" strings), and its
imports sit at the top of the module: only packages that are heavy to import or optional may load inside a function.
"""
import ast, re
from pathlib import Path
import pytest

LIB = Path(__file__).resolve().parents[1]/'vlrepro'

# imported inside functions on purpose: heavy to import (seconds) or in an optional extra
LAZY = {'transformers', 'open_clip', 'deepspeed', 'pycocoevalcap', 'sentencepiece', 'tokenizers', 'pyarrow', 'papermill',
        'nbdev', 'execnb', 'nbclient', 'nbconvert', 'nbformat', 'jupyter_client', 'ipykernel', 'playwright', 'seaborn',
        'matplotlib', 'pandas', 'safetensors', 'torchvision', 'ipywidgets', 'IPython', 'datasets'}
# the command line answers `--help` without importing torch: there, torch and the torch-importing modules load lazily
CLI = {'cli'}


def _layer(path:Path)->int|None:
    m = re.search(r'^# %% \.\./nbs/(\d+)_', path.read_text(), re.M)
    return int(m.group(1)) if m else None

MODULES = {p.stem: _layer(p) for p in sorted(LIB.glob('*.py')) if _layer(p) is not None}


def _vlrepro_deps(tree:ast.AST)->set[str]:
    deps = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            mod = n.module or ''
            if n.level: deps |= {mod.split('.')[0]} if mod else {a.name for a in n.names}
            elif mod == 'vlrepro': deps |= {a.name for a in n.names}
            elif mod.startswith('vlrepro.'): deps.add(mod.split('.')[1])
        elif isinstance(n, ast.Import): deps |= {a.name.split('.')[1] for a in n.names if a.name.startswith('vlrepro.')}
        elif isinstance(n, ast.Constant) and isinstance(n.value, str):
            m = re.fullmatch(r'vlrepro\.(\w+)(:\w+)?', n.value)
            if m: deps.add(m.group(1))
    return deps & set(MODULES)


@pytest.mark.parametrize('mod', sorted(MODULES))
def test_no_module_imports_one_above_it(mod):
    up = sorted(d for d in _vlrepro_deps(ast.parse((LIB/f'{mod}.py').read_text())) if MODULES[d] > MODULES[mod])
    assert not up, (f"vlrepro.{mod} (notebook {MODULES[mod]:02d}) imports modules of a higher layer: "
                    + ', '.join(f'{d} ({MODULES[d]:02d})' for d in up) + ". Move the code that needs them up a layer.")


def _inner_imports(tree:ast.AST)->list[tuple[int, str]]:
    out = []
    for f in ast.walk(tree):
        if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)): continue
        for n in ast.walk(f):
            if isinstance(n, ast.Import): out += [(n.lineno, a.name) for a in n.names]
            elif isinstance(n, ast.ImportFrom): out.append((n.lineno, 'vlrepro' if n.level else (n.module or '')))
    return sorted(set(out))


@pytest.mark.parametrize('mod', sorted(MODULES))
def test_imports_at_the_top(mod):
    allowed = LAZY | ({'torch', 'vlrepro'} if mod in CLI else set())
    bad = [f'line {l}: {name}' for l, name in _inner_imports(ast.parse((LIB/f'{mod}.py').read_text()))
           if name.split('.')[0] not in allowed]
    assert not bad, f"vlrepro.{mod}: light modules imported inside functions (import them at the top): {bad}"


def test_the_checks_see_a_violation(tmp_path):
    "Both rules on a made-up module: a lazy import of a light module, and an importlib string naming a higher layer."
    src = "import importlib\ndef f():\n    import json\n    return importlib.import_module('vlrepro.vqascore')\n"
    tree = ast.parse(src)
    assert _inner_imports(tree) == [(3, 'json')]
    assert _vlrepro_deps(tree) == {'vqascore'}
