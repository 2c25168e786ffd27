"""A real browser on a real JupyterLab: the notebook opens unmodified (on the `vlrepro` kernel), the CrossGET explorer runs and redraws.

JupyterLab is started here on 127.0.0.1 (random port, token) over a temporary copy of nbs/, so nothing in the
repository changes; Debian's chromium is driven headless by Playwright through its executable path (no browser
download). Screenshots go to $VLREPRO_ARTEFACTS or tests/_artefacts/.
"""
import json, os, platform, re, secrets, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = '/usr/bin/chromium'
ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync']
NB = '11_crossget.ipynb'

def _artefacts() -> Path:
    d = Path(os.environ.get('VLREPRO_ARTEFACTS') or ROOT / 'tests' / '_artefacts') / 'browser'
    d.mkdir(parents=True, exist_ok=True)
    return d

def _free_port() -> int:
    s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()
    return port

def explorer_cells(nb: dict) -> list[int]:
    """The cells the explorer needs: the definitions and imports above the parameters cell (`#| export` / `#| hide`), the
    parameters, setup and data cells, the `show_scene` cell and the explorer; the trainings, evaluations and
    benchmarks are skipped (the explorer then shows the untrained base model)."""
    src = [''.join(c['source']) for c in nb['cells']]
    code = [i for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code']
    params = next(i for i in code if 'parameters' in nb['cells'][i]['metadata'].get('tags', []))
    data = next(i for i in code if 'do_retrieval = ' in src[i])
    show = next(i for i in code if 'def show_scene' in src[i])
    explorer = next(i for i in code if 'widgets.interact(' in src[i])
    head = [i for i in code if i < params and (re.match(r'#\|\s*(export|exporti|hide)\b', src[i])
                                                or src[i].startswith(('from ', 'import ')))]   # and the pipeline's imports
    return head + [i for i in code if params <= i <= data] + [show, explorer]

def test_explorer_cells_found():
    "The selection holds the imports, the parameters cell first after the definitions, and ends with the explorer."
    nb = json.loads((ROOT / 'nbs' / NB).read_text())
    cells = explorer_cells(nb)
    src = lambda i: ''.join(nb['cells'][i]['source'])
    assert 'from vlrepro.core import' in src(cells[0])
    assert 'def show_scene' in src(cells[-2]) and 'widgets.interact(' in src(cells[-1])
    assert not any(re.search(r'= *train_retrieval\(', src(i)) for i in cells)   # no training in the browser test
    assert cells == sorted(cells)

@pytest.fixture
def lab(tmp_path):
    "JupyterLab on a temporary copy of nbs/: (url, token, folder)."
    if not Path(CHROMIUM).exists(): pytest.skip(f'{CHROMIUM} missing (apt-get install -y chromium)')
    pytest.importorskip('playwright', reason='playwright missing (pip install playwright; the system chromium is used)')
    nbs = tmp_path / 'nbs'
    shutil.copytree(ROOT / 'nbs', nbs, ignore=shutil.ignore_patterns('_runs', '_scratch_*', '.ipynb_checkpoints'))
    port, token = _free_port(), secrets.token_hex(16)
    news = tmp_path / 'settings' / '@jupyterlab' / 'apputils-extension' / 'notification.jupyterlab-settings'
    news.parent.mkdir(parents=True); news.write_text('{"fetchNews": "false"}')   # no news prompt over the screenshots
    from vlrepro.run import install_kernel
    install_kernel(prefix=tmp_path / 'prefix')          # `vlrepro kernel`, here into a folder of this test's own
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / 'cfg'), JUPYTER_RUNTIME_DIR=str(tmp_path / 'rt'),
               JUPYTER_PATH=str(tmp_path / 'prefix' / 'share' / 'jupyter'),
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
               OMP_NUM_THREADS='1', MPLBACKEND='module://matplotlib_inline.backend_inline')
    log = open(tmp_path / 'lab.log', 'w')
    proc = subprocess.Popen([sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--allow-root', '--ip=127.0.0.1',
                             f'--port={port}', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={nbs}',
                             f'--LabApp.user_settings_dir={tmp_path / "settings"}', f'--LabApp.workspaces_dir={tmp_path / "ws"}'],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=nbs)
    url = f'http://127.0.0.1:{port}'
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None: pytest.fail(f'jupyter lab exited ({proc.returncode}):\n{(tmp_path / "lab.log").read_text()[-3000:]}')
            try: urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=5); break
            except OSError: time.sleep(0.3)
            if time.time() - t0 > 90: pytest.fail('jupyter lab did not answer in 90 s')
        yield url, token, nbs
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait()
        log.close()

def _kernel_idle(url, token, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        sessions = json.loads(urllib.request.urlopen(f'{url}/api/sessions?token={token}', timeout=5).read())
        if sessions and all(s['kernel']['execution_state'] == 'idle' for s in sessions): return
        time.sleep(0.5)
    raise AssertionError(f'the kernel was not idle within {timeout} s')

@pytest.mark.slow   # about 2.5 minutes on 2 busy CPU cores: JupyterLab, chromium and the explorer's 28 cells
def test_explorer_in_browser(lab):
    "Opens unmodified; the explorer's cells run without an error; moving a slider redraws the figure."
    from playwright.sync_api import sync_playwright
    url, token, nbs = lab
    art = _artefacts()
    nb = json.loads((nbs / NB).read_text())
    cells = explorer_cells(nb)
    info = nb['metadata']['language_info']
    if info['version'] != platform.python_version():   # the kernel reports its Python's version, JupyterLab writes it:
        info['version'] = platform.python_version()     # a notebook saved on another Python is modified by that alone
        (nbs / NB).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    t0 = time.time()
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(str(nbs.parent / 'chrome'), executable_path=CHROMIUM, headless=True,
                                                        args=ARGS, viewport=dict(width=1400, height=1000))
        try:
            page = browser.new_page()
            page.goto(f'{url}/lab/tree/{NB}?token={token}')
            page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=90_000)
            _kernel_idle(url, token)
            page.wait_for_timeout(3000)   # the kernel info arrives, JupyterLab writes its metadata (if it differs)
            tab = page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current')
            page.screenshot(path=str(art / '1_opened.png'))
            # the notebook names the kernel `vlrepro`, whose display name is its name (as nbdev_clean writes it), and
            # carries the language_info this Python's kernel reports: JupyterLab has nothing to rewrite
            assert 'jp-mod-dirty' not in (tab.get_attribute('class') or ''), 'the notebook is marked modified on open'

            def run(i):
                cell = page.locator('.jp-Notebook .jp-Cell').nth(i)
                cell.scroll_into_view_if_needed()
                cell.locator('.jp-InputPrompt').first.click()
                page.keyboard.press('Control+Enter')
                page.wait_for_function(
                    "([i]) => { const c = document.querySelectorAll('.jp-Notebook .jp-Cell')[i];"
                    " return /\\[\\d+\\]/.test(c.querySelector('.jp-InputPrompt').textContent); }", arg=[i], timeout=120_000)
                return cell
            for i in cells: explorer = run(i)
            out = explorer.locator('.jp-Cell-outputWrapper')
            slider = explorer.locator('.widget-slider').first
            slider.wait_for(timeout=60_000)
            explorer.scroll_into_view_if_needed()
            static = explorer.locator('.jp-OutputArea-output img').first
            static.wait_for(timeout=30_000)
            before_src = static.get_attribute('src')
            before = out.screenshot(path=str(art / '2_explorer_first_state.png'))
            t_move = time.time()
            slider.locator('.noUi-handle, .slider-handle, [role=slider]').first.focus()
            page.keyboard.press('ArrowRight')                                      # scene 0 -> 1
            drawn = explorer.locator('.jupyter-widgets .jp-OutputArea-output img')
            drawn.first.wait_for(timeout=60_000)
            redraw_s = time.time() - t_move
            page.wait_for_timeout(500)
            after = out.screenshot(path=str(art / '3_explorer_moved.png'))
            assert drawn.first.get_attribute('src') != before_src, 'the redrawn figure is the first state'
            assert after != before, 'the output area looks the same after moving the slider'

            page.keyboard.press('Control+s'); page.wait_for_timeout(2000)    # the temporary copy: its outputs to check
            page.screenshot(path=str(art / '4_saved.png'), full_page=True)
        finally:
            browser.close()
    saved = json.loads((nbs / NB).read_text())
    errors = [(i, o.get('ename'), o.get('evalue')) for i, c in enumerate(saved['cells']) for o in c.get('outputs', [])
              if o.get('output_type') == 'error']
    assert not errors, f'cells show errors: {errors}'
    assert all(saved['cells'][i].get('execution_count') for i in cells)
    # the page nbconvert makes of the run notebook shows the explorer as a picture (no kernel, no widget state needed)
    from nbconvert import HTMLExporter
    import nbformat
    nb = nbformat.reads(json.dumps(saved), as_version=4)
    nb.cells = [nb.cells[cells[-1]]]
    html, _ = HTMLExporter(template_name='lab').from_notebook_node(nb)
    assert re.search(r'<img [^>]*src="data:image/png;base64,', html), "nbconvert's page of the explorer shows no picture"
    print(f'browser test: {len(cells)} cells run, redraw {redraw_s:.1f} s, {time.time() - t0:.0f} s in the browser')
