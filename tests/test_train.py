"Tests of vlrepro.train: the loop's pieces, exact resume (in process and after a real SIGKILL), torchrun and DeepSpeed."
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from torch import nn

from vlrepro.train import (TrainConfig, Trainer, demo_task, deepspeed_config, epoch_batches, launch, launch_command,
                           load_task, lr_multiplier, main, make_param_groups, write_deepspeed_config, ZERO2, ZERO3)

TASK = 'vlrepro.train:demo_task'
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'TOKENIZERS_PARALLELISM': 'false'}


def _weights(path):
    return torch.load(path, map_location='cpu')


def assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"weights differ in {diff}"


def _fit(out_dir, seed=0, task_args=None, **cfg):
    torch.manual_seed(seed)
    t = demo_task(**(task_args or {}))
    c = TrainConfig(out_dir=str(out_dir), progress=False, **cfg)
    return Trainer(t['model'], t['loss_fn'], t['train_data'], c, eval_fn=t['eval_fn']).fit()


# ---------------------------------------------------------------- pieces

def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="unknown TrainConfig field"): TrainConfig.from_dict({'lr': 1, 'batchsize': 2})
    with pytest.raises(ValueError, match="precision must be"): TrainConfig(precision='fp8')
    with pytest.raises(ValueError, match="backend must be"): TrainConfig(backend='horovod')


def test_param_groups_frozen_lr_mults_and_no_decay():
    m = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.Linear(3, 1))
    m[0].requires_grad_(False)
    gs = make_param_groups(m, lr=0.1, weight_decay=0.5, lr_mults={r'^2\.': 0.1})
    by = {g['group']: g for g in gs}
    assert set(by) == {'lr×1, wd=0', 'lr×0.1, wd=0.5', 'lr×0.1, wd=0'}
    assert by['lr×0.1, wd=0.5']['params'][0] is m[2].weight and by['lr×0.1, wd=0.5']['lr'] == pytest.approx(0.01)
    assert all(p.requires_grad for g in gs for p in g['params']) and sum(len(g['params']) for g in gs) == 4


def test_param_groups_from_a_dict_with_a_recipe_rule():
    "A {name: parameter} dict is grouped as given; `no_decay(name, p)` adds a recipe's own no-decay rule (ViLT: 'norm' names)."
    m = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
    named = dict(m.named_parameters())
    wd = lambda gs: {id(p): g['weight_decay'] for g in gs for p in g['params']}
    plain = wd(make_param_groups(named, lr=0.1, weight_decay=0.5))
    ruled = wd(make_param_groups(named, lr=0.1, weight_decay=0.5, no_decay=lambda n, p: n == '0.weight'))
    assert plain[id(m[0].weight)] == 0.5 and ruled[id(m[0].weight)] == 0.0
    assert all(d[id(p)] == 0.0 for d in (plain, ruled) for p in (m[0].bias, m[1].weight, m[1].bias)) and len(ruled) == 4

def test_schedule_shapes():
    assert lr_multiplier(0, 100, 10) == 0 and lr_multiplier(10, 100, 10) == 1
    assert lr_multiplier(100, 100, 10) == pytest.approx(0)
    assert lr_multiplier(55, 100, 10, 'linear') == pytest.approx(0.5)
    assert lr_multiplier(99, 100, 10, 'constant') == 1


def test_step_schedule_by_epoch(tmp_path):
    r = _fit(tmp_path, epochs=4, batch_size=8, schedule='step', milestones=[1, 3], decay_rate=0.5, lr=0.1,
             log_every=1, task_args=dict(n=16))
    lrs = [h['lr'] for h in r['history'] if h['kind'] == 'train']     # lr after each step = lr of the next step
    assert lrs == pytest.approx([0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025])


def test_sgd_with_constant_warmup_resumes(tmp_path):
    kw = dict(epochs=3, batch_size=8, optimizer='sgd', lr=0.05, momentum=0.9, weight_decay=5e-4, warmup_epochs=1,
              warmup_lr=1e-5, log_every=1, save_every=2, task_args=dict(n=16))
    r = _fit(tmp_path / 'a', **kw)
    lrs = [h['lr'] for h in r['history'] if h['kind'] == 'train']    # lr after each step (= the next step's)
    assert lrs[0] == pytest.approx(1e-5) and lrs[1] == pytest.approx(0.05) and lrs[-1] == pytest.approx(0, abs=1e-12)
    _fit(tmp_path / 'b', stop_step=3, **kw); _fit(tmp_path / 'b', **kw)
    assert_same_weights(tmp_path / 'a' / 'model.pt', tmp_path / 'b' / 'model.pt')
    ck = torch.load(tmp_path / 'a' / 'checkpoint.pt', weights_only=False)
    assert 'momentum_buffer' in next(iter(ck['optimizer']['state'].values()))


def test_loss_fn_gets_step_info_across_resume(tmp_path):
    seen = []
    def loss3(model, batch, info):
        seen.append((info.step, info.epoch, info.step_in_epoch, info.steps_per_epoch, info.total_steps))
        return nn.functional.mse_loss(model(batch['x']).squeeze(-1), batch['y'])
    def run(**kw):
        torch.manual_seed(0); t = demo_task(n=16)
        Trainer(t['model'], loss3, t['train_data'], TrainConfig(out_dir=str(tmp_path), epochs=3, batch_size=8,
                progress=False, **kw)).fit()
    run(stop_step=3); run()
    assert seen == [(s, s // 2, s % 2, 2, 6) for s in range(6)]


def test_sharding_is_a_deterministic_partition():
    for n, ws in [(10, 2), (11, 3), (5, 4)]:
        shards = [sum(epoch_batches(n, 2, 1, seed=3, rank=r, world_size=ws), []) for r in range(ws)]
        assert len({len(s) for s in shards}) == 1                       # equal shares (padded)
        assert set(sum(shards, [])) == set(range(n))                      # everything seen
        assert shards == [sum(epoch_batches(n, 2, 1, seed=3, rank=r, world_size=ws), []) for r in range(ws)]


def test_only_trainable_parameters_change(tmp_path):
    torch.manual_seed(0)
    t = demo_task(n=16)
    t['model'][0].requires_grad_(False)
    frozen = t['model'][0].weight.clone(); other = t['model'][4].weight.clone()
    tr = Trainer(t['model'], t['loss_fn'], t['train_data'], TrainConfig(epochs=2, batch_size=4, progress=False))
    assert all(p.requires_grad for g in tr.optimizer.param_groups for p in g['params'])
    tr.fit()
    assert torch.equal(t['model'][0].weight, frozen) and not torch.equal(t['model'][4].weight, other)


def test_grad_accumulation_matches_a_bigger_batch():
    def run(bs, ga):
        torch.manual_seed(0)
        t = demo_task(n=16, dropout=0.0)
        Trainer(t['model'], t['loss_fn'], t['train_data'], TrainConfig(batch_size=bs, grad_accum=ga, shuffle=False,
                max_steps=2, lr=1e-2, schedule='constant', progress=False)).fit()
        return t['model'].state_dict()
    a, b = run(8, 1), run(4, 2)
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_clipping_logs_the_norm_before_clipping(tmp_path):
    r = _fit(tmp_path, epochs=1, batch_size=8, clip_grad=1e-3, log_every=1)
    assert all(h['grad_norm'] > 1e-3 for h in r['history'] if h['kind'] == 'train')


def test_log_eval_checkpoint_files(tmp_path):
    r = _fit(tmp_path, epochs=4, batch_size=8, log_every=4, eval_every=8, save_every=8)
    assert r['finished'] and r['step'] == 32 and {'val_mse'} <= set(r['eval'])
    log = [json.loads(l) for l in (tmp_path / 'log.jsonl').read_text().splitlines()]
    assert [x['step'] for x in log if x['kind'] == 'eval'] == [8, 16, 24, 32]
    assert [x['step'] for x in log if x['kind'] == 'train'] == list(range(4, 33, 4))
    assert {'loss', 'mae', 'lr', 'grad_norm', 'epoch'} <= set(log[0])
    ck = torch.load(tmp_path / 'checkpoint.pt', weights_only=False)
    assert {'model', 'optimizer', 'scheduler', 'scaler', 'trainer', 'rng'} <= set(ck) and ck['trainer']['step'] == 32
    assert not list(tmp_path.glob('*.tmp*'))     # atomic saves leave no temporaries


@pytest.mark.parametrize('num_workers,grad_accum', [(0, 1), (2, 3)])
def test_exact_resume_in_process(tmp_path, num_workers, grad_accum):
    kw = dict(max_steps=14, batch_size=4, grad_accum=grad_accum, lr=1e-2, warmup_ratio=0.2, weight_decay=0.01,
              clip_grad=0.5, save_every=3, num_workers=num_workers, task_args=dict(n=40))
    _fit(tmp_path / 'a', **kw)
    part = _fit(tmp_path / 'b', stop_step=5, **kw)
    assert not part['finished'] and part['step'] == 5
    torch.rand(7); import random; random.random()                    # the resumed process's RNG differs
    res = _fit(tmp_path / 'b', seed=99, **kw)                         # and so does its fresh init
    assert res['finished']
    assert_same_weights(tmp_path / 'a' / 'model.pt', tmp_path / 'b' / 'model.pt')
    la = [json.loads(l) for l in (tmp_path / 'a' / 'log.jsonl').read_text().splitlines()]
    lb = [json.loads(l) for l in (tmp_path / 'b' / 'log.jsonl').read_text().splitlines()]
    strip = lambda log: [{k: v for k, v in r.items() if k != 'seconds'} for r in log]
    assert strip(la) == strip(lb)                                     # the log reads like one run


def test_resume_with_a_different_run_is_refused(tmp_path):
    _fit(tmp_path, max_steps=4, batch_size=4, stop_step=2, task_args=dict(n=16))
    with pytest.raises(ValueError, match='resume with the same'):
        _fit(tmp_path, max_steps=6, batch_size=4, task_args=dict(n=16))


def test_resume_accepts_checkpoints_older_than_new_config_fields(tmp_path):
    _fit(tmp_path, max_steps=4, batch_size=4, stop_step=2, log_every=1, task_args=dict(n=16))
    ck = torch.load(tmp_path / 'checkpoint.pt', weights_only=False)
    for k in ('optimizer', 'momentum', 'warmup_lr'): del ck['trainer']['config'][k]   # as if written before they existed
    torch.save(ck, tmp_path / 'checkpoint.pt')
    r = _fit(tmp_path, max_steps=4, batch_size=4, log_every=2, task_args=dict(n=16))   # log_every may change
    assert r['finished'] and r['step'] == 4
    ck['trainer']['config']['momentum'] = 0.5; torch.save(ck, tmp_path / 'checkpoint.pt')
    with pytest.raises(ValueError, match="momentum"):
        _fit(tmp_path, max_steps=4, batch_size=4, task_args=dict(n=16))


def test_save_trainable_only(tmp_path):
    torch.manual_seed(0)
    t = demo_task(n=16)
    t['model'][0].requires_grad_(False)
    Trainer(t['model'], t['loss_fn'], t['train_data'], TrainConfig(out_dir=str(tmp_path), max_steps=2, batch_size=4,
            save_trainable_only=True, stop_step=1, progress=False)).fit()
    ck = torch.load(tmp_path / 'checkpoint.pt', weights_only=False)
    assert '0.weight' not in ck['model'] and '4.weight' in ck['model']
    t2 = demo_task(n=16); t2['model'][0].requires_grad_(False)
    tr = Trainer(t2['model'], t2['loss_fn'], t2['train_data'], TrainConfig(out_dir=str(tmp_path), max_steps=2,
                 batch_size=4, save_trainable_only=True, progress=False))
    assert tr.step == 1


def test_bad_inputs():
    t = demo_task(n=8)
    with pytest.raises(TypeError, match="pass the DataLoader's dataset"):
        Trainer(t['model'], t['loss_fn'], torch.utils.data.DataLoader(t['train_data']))
    with pytest.raises(ValueError, match='fewer than grad_accum'):
        Trainer(t['model'], t['loss_fn'], t['train_data'], TrainConfig(batch_size=4, grad_accum=4))
    with pytest.raises(TypeError, match='scalar tensor'):
        Trainer(t['model'], lambda m, b: m(b['x']), t['train_data'], TrainConfig(batch_size=4, progress=False)).fit()
    with pytest.raises(ValueError, match='package.module:function'): load_task('nope')
    with pytest.raises(ValueError, match='no task'): main([])
    with pytest.raises(FileNotFoundError, match='not found'): main(['--task', TASK, '--config', 'missing.json'])


@pytest.mark.parametrize('backend', ['ddp', 'deepspeed'])
def test_one_process_group_in_process(tmp_path, backend, monkeypatch):
    "backend='ddp'/'deepspeed' without a launcher: a one-process group (as in a notebook); resume still exact."
    if backend == 'deepspeed': pytest.importorskip('deepspeed'); monkeypatch.setenv('DS_ACCELERATOR', 'cpu')
    kw = dict(max_steps=6, batch_size=4, backend=backend, save_every=2, task_args=dict(n=16))
    r = _fit(tmp_path / 'a', **kw)
    assert r['finished'] and (tmp_path / 'a' / 'model.pt').exists()
    _fit(tmp_path / 'b', stop_step=3, **kw); _fit(tmp_path / 'b', seed=5, **kw)
    assert_same_weights(tmp_path / 'a' / 'model.pt', tmp_path / 'b' / 'model.pt')


def test_deepspeed_frozen_params_trainable_only_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip('deepspeed'); monkeypatch.setenv('DS_ACCELERATOR', 'cpu')
    def run(d, **kw):
        torch.manual_seed(0); t = demo_task(n=16); t['model'][0].requires_grad_(False)
        return Trainer(t['model'], t['loss_fn'], t['train_data'], TrainConfig(out_dir=str(d), max_steps=6, batch_size=4,
                       backend='deepspeed', save_trainable_only=True, save_every=2, progress=False, **kw)).fit()
    run(tmp_path / 'a'); run(tmp_path / 'b', stop_step=3); run(tmp_path / 'b')
    assert_same_weights(tmp_path / 'a' / 'model.pt', tmp_path / 'b' / 'model.pt')
    assert torch.equal(_weights(tmp_path / 'a' / 'model.pt')['0.weight'], (torch.manual_seed(0), demo_task(n=16))[1]['model'][0].weight)


def test_deepspeed_configs(tmp_path):
    for z, stage in [(ZERO2, 2), (ZERO3, 3)]:
        assert z['zero_optimization']['stage'] == stage and z['bf16']['enabled'] == 'auto'
        assert z['train_micro_batch_size_per_gpu'] == 'auto' and z['zero_optimization']['overlap_comm'] is True
    d = deepspeed_config(TrainConfig(batch_size=2, grad_accum=3, precision='fp16', clip_grad=1.0), world_size=4)
    assert (d['train_batch_size'], d['fp16']['enabled'], d['bf16']['enabled'], d['gradient_clipping']) == (24, True, False, 1.0)
    assert 'auto' not in json.dumps(d)
    p = write_deepspeed_config(tmp_path / 'zero3.json', 3, TrainConfig(batch_size=2))
    assert json.loads(p.read_text())['train_micro_batch_size_per_gpu'] == 2
    with pytest.raises(FileNotFoundError, match='not found'): deepspeed_config(TrainConfig(deepspeed_config='missing.json'))


_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')]

@pytest.mark.parametrize('precision,device', [('bf16', 'cpu'), ('fp16', 'cpu'),
                                              pytest.param('bf16', 'cuda', marks=_GPU), pytest.param('fp16', 'cuda', marks=_GPU)])
def test_mixed_precision_trains_and_resumes(tmp_path, precision, device):
    kw = dict(max_steps=8, batch_size=4, precision=precision, device=device, save_every=3, task_args=dict(n=32))
    r = _fit(tmp_path / 'a', **kw)
    assert r['finished'] and r['loss'] == r['loss']
    _fit(tmp_path / 'b', stop_step=4, **kw); _fit(tmp_path / 'b', **kw)
    assert_same_weights(tmp_path / 'a' / 'model.pt', tmp_path / 'b' / 'model.pt')
    if precision == 'fp16': assert torch.load(tmp_path / 'a' / 'checkpoint.pt', weights_only=False)['scaler']['scale'] > 0


# ---------------------------------------------------------------- real processes

def _cli(out_dir, stop_step=0, delay=0.0, **cfg):
    c = dict(out_dir=str(out_dir), max_steps=30, batch_size=4, lr=1e-2, warmup_steps=3, save_every=4, log_every=5,
             progress=False, stop_step=stop_step, **cfg)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / 'cfg.json').write_text(json.dumps(c))
    return [sys.executable, '-m', 'vlrepro.train', '--task', TASK, '--config', str(Path(out_dir) / 'cfg.json'),
            '--task-args', json.dumps(dict(n=40, delay=delay))]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    ref, cut = tmp_path / 'ref', tmp_path / 'cut'
    subprocess.run(_cli(ref), env=ENV, check=True, timeout=300)
    p = subprocess.Popen(_cli(cut, delay=0.02), env=ENV)
    t0 = time.time()
    while not (cut / 'checkpoint.pt').exists():
        assert p.poll() is None, 'the run ended before its first checkpoint'
        assert time.time() - t0 < 120, 'no checkpoint appeared'
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL and not (cut / 'model.pt').exists()
    st = torch.load(cut / 'checkpoint.pt', weights_only=False)['trainer']
    assert 0 < st['step'] < 30 and 0 < st['epoch_step'] < 10          # killed in the middle of an epoch
    subprocess.run(_cli(cut, delay=0.0), env=ENV, check=True, timeout=300)   # same command, resumes
    assert_same_weights(ref / 'model.pt', cut / 'model.pt')
    ca = torch.load(ref / 'checkpoint.pt', weights_only=False); cb = torch.load(cut / 'checkpoint.pt', weights_only=False)
    for a, b in zip(ca['optimizer']['state'].values(), cb['optimizer']['state'].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchrun_two_processes_resume_exactly(tmp_path):
    cfg = dict(max_steps=9, batch_size=4, grad_accum=2, lr=1e-2, save_every=2, progress=False)
    full = launch(TASK, dict(cfg, out_dir=str(tmp_path / 'full')), nproc=2, launcher='torchrun',
                  task_args=dict(n=48), env=ENV, timeout=300, quiet=True)
    assert full['finished'] and full['step'] == 9
    part = launch(TASK, dict(cfg, out_dir=str(tmp_path / 'cut'), stop_step=4), nproc=2, launcher='torchrun',
                  task_args=dict(n=48), env=ENV, timeout=300, quiet=True)
    assert not part['finished'] and part['step'] == 4 and part['epoch'] == 1      # 3 steps per epoch: mid-epoch
    ck = torch.load(tmp_path / 'cut' / 'checkpoint.pt', weights_only=False)
    assert len(ck['rng']) == 2 and not torch.equal(ck['rng'][0]['rng']['torch'], ck['rng'][1]['rng']['torch'])
    launch(TASK, dict(cfg, out_dir=str(tmp_path / 'cut')), nproc=2, launcher='torchrun', task_args=dict(n=48),
           env=ENV, timeout=300, quiet=True)
    assert_same_weights(tmp_path / 'full' / 'model.pt', tmp_path / 'cut' / 'model.pt')
    log = [json.loads(l) for l in (tmp_path / 'full' / 'log.jsonl').read_text().splitlines()]
    assert log[-1]['kind'] == 'eval' and log[-1]['step'] == 9


def test_deepspeed_zero2_two_processes_resume_exactly(tmp_path):
    "ZeRO-2 on 2 CPU processes (gloo): the `deepspeed` launcher, killed-and-resumed == uninterrupted."
    pytest.importorskip('deepspeed')
    cfg = dict(max_steps=6, batch_size=4, grad_accum=2, lr=1e-2, clip_grad=1.0, save_every=2, progress=False,
               backend='deepspeed', zero_stage=2, weight_decay=0.01)
    kw = dict(nproc=2, task_args=dict(n=48), env=ENV, timeout=600, quiet=True)
    # the reference runs the same DeepSpeed backend under torchrun (cheaper to start; launchers only set env vars)
    full = launch(TASK, dict(cfg, out_dir=str(tmp_path / 'full')), launcher='torchrun', **kw)
    assert full['finished'] and full['step'] == 6 and (tmp_path / 'full' / 'checkpoint.ds').is_dir()
    part = launch(TASK, dict(cfg, out_dir=str(tmp_path / 'cut'), stop_step=4), launcher='deepspeed', **kw)
    assert part['step'] == 4 and part['epoch'] == 1 and not part['finished']
    launch(TASK, dict(cfg, out_dir=str(tmp_path / 'cut')), launcher='deepspeed', **kw)
    assert_same_weights(tmp_path / 'full' / 'model.pt', tmp_path / 'cut' / 'model.pt')


def test_deepspeed_zero3_two_processes(tmp_path):
    pytest.importorskip('deepspeed')
    cfg = dict(out_dir=str(tmp_path), epochs=2, batch_size=4, lr=1e-2, backend='deepspeed', zero_stage=3, progress=False,
               log_every=1)
    r = launch(TASK, cfg, nproc=2, launcher='torchrun', task_args=dict(n=32), env=ENV, timeout=600, quiet=True)
    assert r['finished'] and r['step'] == 8
    w = _weights(tmp_path / 'model.pt')
    assert w['0.weight'].shape == (32, 8) and w['4.weight'].shape == (1, 32)    # gathered, not partitioned


def test_import_is_light():
    code = "import sys, vlrepro.train; assert 'deepspeed' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, '-c', code], env=ENV, check=True, timeout=120)


def test_eval_values_are_logged_as_json(tmp_path):
    torch.manual_seed(0); t = demo_task(n=16)
    ev = lambda m: {'a': torch.tensor(0.5), 'per_class': torch.tensor([1.0, 2.0]), 'n': 3, 'name': 'x'}
    r = Trainer(t['model'], t['loss_fn'], t['train_data'], TrainConfig(out_dir=str(tmp_path), epochs=1, batch_size=8,
                progress=False), eval_fn=ev).fit()
    assert r['eval'] == {'a': 0.5, 'per_class': [1.0, 2.0], 'n': 3, 'name': 'x'}
    assert json.loads((tmp_path / 'log.jsonl').read_text().splitlines()[-1])['per_class'] == [1.0, 2.0]


def test_callbacks_see_every_record(tmp_path):
    got = []
    torch.manual_seed(0); t = demo_task(n=16)
    Trainer(t['model'], t['loss_fn'], t['train_data'], TrainConfig(epochs=2, batch_size=4, log_every=2, progress=False),
            eval_fn=t['eval_fn'], callbacks=[lambda tr, rec: got.append((rec['kind'], rec['step'], tr.step))]).fit()
    assert got == [('train', 2, 2), ('train', 4, 4), ('train', 6, 6), ('train', 8, 8), ('eval', 8, 8)]


def test_launch_command_shapes():
    c = launch_command(TASK, 'c.json', 2, 'deepspeed', task_args={'n': 8}, port=1234)
    assert c[1:4] == ['-m', 'deepspeed.launcher.runner', '--num_gpus'] and '--module' in c and c[-1] == 'backend=deepspeed'
    assert launch_command(TASK, 'c.json', launcher='python')[1:3] == ['-m', 'vlrepro.train']


def test_cosine_epoch_schedule_is_set_once_per_epoch(tmp_path):
    "CrossGET's CLIP retrieval recipe: the cosine learning rate changes at epoch starts only, lr_e = ½·lr·(1 + cos(π e / E))."
    import json, math
    from vlrepro.train import Trainer, TrainConfig, demo_task
    from vlrepro.crossget_clip import retrieval_config
    assert retrieval_config(epochs=12).schedule == 'cosine_epoch' and retrieval_config(steps=50).schedule == 'cosine'
    t = demo_task(n=32)
    cfg = TrainConfig(out_dir=str(tmp_path / 'run'), epochs=3, batch_size=8, lr=1e-3, schedule='cosine_epoch', progress=False,
                      log_every=1, drop_last=True)
    Trainer(t['model'], t['loss_fn'], t['train_data'], cfg).fit()
    lrs = {}   # the log's lr is read after step s: the rate of the next step, which belongs to epoch s // 4 (4 steps an epoch)
    for r in map(json.loads, (tmp_path / 'run' / 'log.jsonl').read_text().splitlines()):
        if r.get('kind') == 'train': lrs.setdefault(r['step'] // 4, set()).add(round(r['lr'], 12))
    want = {e: round(1e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, e / 3))), 12) for e in range(4)}   # 1e-3, 7.5e-4, 2.5e-4, 0
    assert lrs == {e: {want[e]} for e in range(4)}, lrs


CRASHY = '''
import atexit, os, signal
from vlrepro.train import demo_task
def task(**kw):   # the process aborts at interpreter exit, after the run is done (as gloo's teardown once did in CI)
    atexit.register(lambda: os.kill(os.getpid(), signal.SIGABRT))
    return demo_task(**kw)
def broken(**kw): raise RuntimeError('the task could not build its data')
'''

def test_a_crash_while_shutting_down_keeps_a_finished_run(tmp_path, capsys):
    "Bug (CI): a torchrun worker aborted in C++ teardown after training had finished and saved; the notebook failed."
    (tmp_path / 'crashy.py').write_text(CRASHY)
    env = {**ENV, 'PYTHONPATH': f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cfg = dict(max_steps=2, batch_size=4, save_every=1, progress=False)
    r = launch('crashy:task', dict(cfg, out_dir=str(tmp_path / 'one')), launcher='python', task_args=dict(n=16),
               env=env, timeout=300, quiet=True)
    assert r['finished'] and r['step'] == 2 and (tmp_path / 'one' / 'model.pt').exists()
    assert 'a process exited -6 while shutting down; its results are kept' in capsys.readouterr().out
    # workers of a multi-process job end without C++ teardown: the same task exits 0 under torchrun
    r = launch('crashy:task', dict(cfg, out_dir=str(tmp_path / 'two')), nproc=2, launcher='torchrun',
               task_args=dict(n=16), env=env, timeout=300, quiet=True)
    assert r['finished'] and 'shutting down' not in capsys.readouterr().out
    # a job that dies before its summary is still a failure, with the job's own error in the message
    with pytest.raises(RuntimeError, match=r"(?s)training job failed \(exit 1\).*could not build its data"):
        launch('crashy:broken', dict(cfg, out_dir=str(tmp_path / 'bad')), launcher='python', env=env, timeout=300, quiet=True)


def test_deepspeed_shared_memory_buffers_are_removed(tmp_path, monkeypatch):
    "Bug: every multi-process DeepSpeed run on CPU left 2 x 69 MB in /dev/shm (17 GB after a day of tests on this machine)."
    import mmap
    import vlrepro.train as T
    monkeypatch.setattr(T, 'SHM', tmp_path)
    names = [f'deepspeed_allreduce_buffer_0_127.0.0.1_{p}_{r}' for p in (1234, 5678, 9012) for r in (0, 1)]
    for n in names: (tmp_path / n).write_bytes(b'\0' * 4096)
    (tmp_path / 'other_program_buffer').write_bytes(b'x')
    assert T.remove_shm_buffers(1234) == names[:2]                  # one job's, by its port
    with open(tmp_path / names[4], 'r+b') as f, mmap.mmap(f.fileno(), 4096):   # a live job's buffer, mapped
        assert sorted(T.remove_shm_buffers()) == names[2:4] + names[5:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [names[4], 'other_program_buffer']


def test_a_deepspeed_job_leaves_no_buffer(tmp_path, monkeypatch):
    pytest.importorskip('deepspeed')
    import vlrepro.train as T
    port = T._free_port()
    monkeypatch.setattr(T, '_free_port', lambda: port)      # the job's buffers carry its port in their names
    seen = []
    real = T.remove_shm_buffers
    monkeypatch.setattr(T, 'remove_shm_buffers', lambda p=None: seen.extend(real(p)) or seen)
    cfg = dict(out_dir=str(tmp_path), max_steps=2, batch_size=4, backend='deepspeed', zero_stage=2, progress=False)
    assert launch(TASK, cfg, nproc=2, launcher='deepspeed', task_args=dict(n=16), env=ENV, timeout=600, quiet=True)['finished']
    assert sorted(seen) == [f'deepspeed_allreduce_buffer_0_127.0.0.1_{port}_{r}' for r in (0, 1)]   # made, then removed
    assert not list(Path('/dev/shm').glob(f'deepspeed_allreduce_buffer_*_{port}_*'))
