import os
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
import pytest, torch
torch.set_num_threads(min(2, os.cpu_count() or 1))

def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available(): return
    skip = pytest.mark.skip(reason='needs CUDA')
    for it in items:
        if 'gpu' in it.keywords: it.add_marker(skip)
