"Smoke tests of vlrepro.viz: each helper draws on the Agg backend and validates its input."
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from vlrepro import bench, viz


def teardown_function(_): plt.close('all')


def test_tradeoff():
    rows = [dict(method='a', gflops=1.0, acc=50, r=0), dict(method='a', gflops=0.5, acc=40, r=8), dict(method='b', gflops=0.7, acc=45, r=4)]
    ax = viz.plot_tradeoff(rows, 'gflops', 'acc', annotate='r', title='t')
    assert ax.get_title() == 't' and len(ax.texts) == 3
    n = len(plt.get_fignums())
    with pytest.raises(ValueError, match='not in the data'):
        viz.plot_tradeoff(rows, 'tput', 'acc')
    assert len(plt.get_fignums()) == n  # no empty figure left behind


def test_benchmark_plot():
    df = bench.benchmark({'a': lambda: None, 'b': lambda: None}, warmup=0, repeats=3)
    assert len(viz.plot_benchmark(df).patches) == 2
    assert 'samples' in viz.plot_benchmark(df, throughput=True).get_xlabel()
    with pytest.raises(ValueError, match='bench.benchmark'):
        viz.plot_benchmark(pd.DataFrame({'name': ['a']}))


def test_flops_and_tokens_plots():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    fc = bench.count_flops(mlp, torch.randn(3, 4))
    ax = viz.plot_flops_by_module(fc, depth=2, convention='flops')
    assert len(ax.patches) == 2
    with pytest.raises(ValueError, match='convention'):
        viz.plot_flops_by_module(fc, convention='gflops')
    with pytest.raises(ValueError, match='depth'):
        viz.plot_flops_by_module(fc, depth=5)
    assert len(viz.plot_tokens({'r=0': [5, 5], 'r=2': [5, 3]}).lines) == 2
