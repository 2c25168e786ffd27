import os
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
import pytest, torch
torch.set_num_threads(min(2, os.cpu_count() or 1))

def pytest_addoption(parser):
    parser.addoption('--run-long', action='store_true', help="also run the tests marked `long` (e.g. rehearse every parameter set: hours)")

def pytest_collection_modifyitems(config, items):
    long = not (config.getoption('--run-long') or os.environ.get('VLREPRO_RUN_LONG'))
    skip_long = pytest.mark.skip(reason='long: run with pytest --run-long (or VLREPRO_RUN_LONG=1)')
    skip_gpu = pytest.mark.skip(reason='needs CUDA')
    for it in items:
        if long and 'long' in it.keywords: it.add_marker(skip_long)
        if 'gpu' in it.keywords and not torch.cuda.is_available(): it.add_marker(skip_gpu)
