"`vlrepro site` on a copy of the project's notebooks: a page per notebook, working links, the saved figures shown."
import json, re, shutil, subprocess, sys, time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

def _copy(tmp_path, names=None):
    nbs = tmp_path / 'nbs'
    if names is None:
        shutil.copytree(ROOT / 'nbs', nbs, ignore=shutil.ignore_patterns('_runs', '_scratch_*', '.ipynb_checkpoints'))
    else:
        nbs.mkdir()
        for n in names: shutil.copy(ROOT / 'nbs' / f'{n}.ipynb', nbs)
    return nbs

@pytest.mark.slow
def test_site_of_three_notebooks(tmp_path):
    "CI's check (about 30 s): the same assertions on a small copy; the whole site is the long test below."
    _check_site(tmp_path, _copy(tmp_path, ['00_core', '07_viz', '09_outputs']))

@pytest.mark.long    # nbconvert takes 3-4 minutes for all notebooks on 2 busy cores
def test_site_of_the_notebooks(tmp_path):
    _check_site(tmp_path, _copy(tmp_path))

def _check_site(tmp_path, nbs):
    shutil.copy(ROOT / 'settings.ini', tmp_path)
    t0 = time.time()
    r = subprocess.run([sys.executable, '-m', 'vlrepro.cli', 'site', '--out', str(tmp_path / 'site')], cwd=nbs,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    print(f'site built in {time.time() - t0:.0f} s')
    site = tmp_path / 'site'
    pages = sorted(f.stem for f in nbs.glob('*.ipynb') if not f.name.startswith('_'))
    assert sorted(f.stem for f in site.glob('*.html')) == sorted(pages + ['contents'])
    contents = (site / 'contents.html').read_text()
    order = re.findall(r'<li><a href="([^"]+)\.html"', contents)
    assert order[1:] == sorted(order[1:]) and sorted(order) == pages and (order[0] == 'index' or 'index' not in pages)
    for page in [order[0], 'contents', order[1]]:        # every relative link of these pages resolves
        html = (site / f'{page}.html').read_text()
        for href in re.findall(r'href="([^"#]+)', html):
            if re.match(r'[a-z]+:', href) or href.startswith('/'): continue
            assert (site / href).exists(), f'{page}.html links to {href}, which the site lacks'
    assert f'href="{order[1]}.html"' in (site / f'{order[0]}.html').read_text()   # the nav bar to the next page
    # a notebook committed with a figure shows it
    with_png = [f.stem for f in sorted(nbs.glob('*.ipynb'))
                if any('image/png' in o.get('data', {}) for c in json.loads(f.read_text())['cells'] for o in c.get('outputs', []))]
    assert with_png, 'no committed notebook has a saved figure'
    for stem in with_png:
        assert re.search(r'<img [^>]*src="data:image/png;base64,', (site / f'{stem}.html').read_text()), stem
