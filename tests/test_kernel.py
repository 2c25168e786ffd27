"""The notebooks' kernel: every committed notebook names `vlrepro`, whose display name is its name, so nbdev_clean and
JupyterLab write the same metadata (a notebook opens unmodified; tests/test_browser.py checks that in a browser)."""
import json, os, subprocess, sys
from pathlib import Path

import pytest

from vlrepro.run import KERNEL, install_kernel, kernel_for

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'nbs').glob('*.ipynb'))


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_names_the_vlrepro_kernel(path):
    spec = json.loads(path.read_text())['metadata'].get('kernelspec')
    assert spec == {'display_name': KERNEL, 'language': 'python', 'name': KERNEL}, \
        f'{path.name}: kernelspec {spec}; set it to the `{KERNEL}` kernel (name = display name, as nbdev_clean writes it)'


def test_install_kernel_writes_a_spec_whose_display_name_is_its_name(tmp_path):
    folder = install_kernel(prefix=tmp_path)
    assert folder == tmp_path / 'share' / 'jupyter' / 'kernels' / KERNEL
    spec = json.loads((folder / 'kernel.json').read_text())
    assert spec['display_name'] == KERNEL and spec['language'] == 'python'
    assert spec['argv'][0] == sys.executable and 'ipykernel_launcher' in spec['argv']   # this environment's Python
    nb = tmp_path / 'x.ipynb'
    nb.write_text(json.dumps({'cells': [], 'metadata': {'kernelspec': {'name': KERNEL}}, 'nbformat': 4, 'nbformat_minor': 5}))
    src = ("import sys; from jupyter_client.kernelspec import KernelSpecManager; from vlrepro.run import kernel_for; "
           "print(kernel_for(sys.argv[1]), KernelSpecManager().find_kernel_specs().get(sys.argv[2]))")
    def run(jupyter_path):   # a fresh process: jupyter_client reads JUPYTER_PATH when it looks for kernels
        env = {k: v for k, v in os.environ.items() if k not in ('JUPYTER_PATH', 'JUPYTER_DATA_DIR')}
        env.update(JUPYTER_PATH=str(jupyter_path), JUPYTER_DATA_DIR=str(tmp_path / 'nodata'))
        return subprocess.run([sys.executable, '-c', src, str(nb), KERNEL], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert run(tmp_path / 'share' / 'jupyter') == f'{KERNEL} {folder}'   # found where it was installed


def test_kernel_for_falls_back_to_python3_when_the_named_kernel_is_missing(tmp_path):
    nb = tmp_path / 'x.ipynb'
    nb.write_text(json.dumps({'cells': [], 'metadata': {'kernelspec': {'name': 'no-such-kernel'}}, 'nbformat': 4, 'nbformat_minor': 5}))
    assert kernel_for(nb) == 'python3'
    nb.write_text(json.dumps({'cells': [], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
    assert kernel_for(nb) == 'python3'
