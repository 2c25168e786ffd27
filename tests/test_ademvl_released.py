"""Loading the authors' ADEM-VL adapter checkpoints (official layout and key names) into a patched model."""
import argparse
import sys
from pathlib import Path

import pytest
import torch

from vlrepro import ademvl, ademvl_sqa

sys.path.insert(0, str(Path(__file__).parent))
from test_ademvl import patched  # noqa: E402

torch.set_num_threads(1)


def _official(llm, ddp=False):
    "ADEM-VL's checkpoint-<epoch>.pth of a patched model, with the official names written out independently of the loader."
    out = {}
    for n, p in llm.named_parameters():
        if not p.requires_grad: continue
        if n.startswith('ademvl.vision_tower.'):
            q = n.split('.'); i = q[q.index('layers') + 1]
            k = f'backbone.visual.transformer.resblocks.{i}.adapter_mlp.{q[-2]}.weight'
        else: k = n[len('ademvl.'):]
        out[('module.' if ddp else '') + k] = torch.randn_like(p)
    args = argparse.Namespace(alpha=0.1, beta=0.01, drop_ratio=0.1, down_sample_num=[64, 16], adapter_dim=12, hidden_proj=128,
                              no_cls=False, max_seq_len=512)
    return {'model': out, 'optimizer': {}, 'epoch': 19, 'scaler': None, 'args': args}


@pytest.mark.parametrize('ddp', [False, True])
def test_released_round_trip(ddp):
    src, _ = patched()
    ck = _official(src, ddp)
    keys = {k.removeprefix('module.') for k in ck['model']}
    assert {'adapter_emb1', 'adapter_emb2', 'adapter_proj.fc2.bias', 'adapter_proj_cls.fc1.weight',
            'backbone.visual.transformer.resblocks.1.adapter_mlp.fc2.weight'} <= keys
    llm, _ = patched(seed=1)
    rep = ademvl_sqa.load_released(llm, ck)
    assert rep['options'] == dict(alpha=0.1, beta=0.01, drop_ratio=0.1, adapter_dim=12, hidden_proj=128, down_sample_num=[64, 16], no_cls=False)
    got = llm.state_dict()
    for k, v in ck['model'].items():
        k = k.removeprefix('module.')
        if k.startswith('backbone.'):
            i, fc = k.split('.')[4], k.split('.')[-2]
            ours = f'ademvl.vision_tower.encoder.layers.{i}.mlp.ademvl_adapter.{fc}.weight'
        else: ours = 'ademvl.' + k
        torch.testing.assert_close(got[ours], v, rtol=0, atol=0)
    assert len(rep['loaded']) == len(ck['model']) == sum(p.requires_grad for p in llm.parameters())


def test_released_errors(tmp_path):
    src, _ = patched(); ck = _official(src)
    def with_(model=None, **args):
        a = argparse.Namespace(**{**vars(ck['args']), **args})
        return {**ck, 'model': model if model is not None else ck['model'], 'args': a}
    with pytest.raises(ValueError, match=r"trained with --alpha 0\.2 but the model is patched with alpha=0\.1: patch with alpha=0\.2"):
        ademvl_sqa.load_released(patched()[0], with_(alpha=0.2))
    with pytest.raises(ValueError, match=r"--down_sample_num \[256, 64\].*down_sample_num=\[256, 64\]"):
        ademvl_sqa.load_released(patched()[0], with_(down_sample_num=[256, 64]))
    with pytest.raises(ValueError, match=r"trained without the \[CLS\] token.*with_cls=False"):
        ademvl_sqa.load_released(patched()[0], with_(no_cls=True))
    with pytest.raises(ValueError, match=r"unknown key 'layers\.0\.adapter_mlp\.fc1\.weight'.*no weights"):
        ademvl_sqa.load_released(patched()[0], with_({**ck['model'], 'layers.0.adapter_mlp.fc1.weight': torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"'backbone\.visual\.transformer\.resblocks\.5\.adapter_mlp\.fc1\.weight' does not fit.*2 blocks"):
        ademvl_sqa.load_released(patched()[0], with_({**ck['model'], 'backbone.visual.transformer.resblocks.5.adapter_mlp.fc1.weight': torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"'adapter_emb1' has shape \(1, 5, 32\).*\(1, 80, 32\)"):
        ademvl_sqa.load_released(patched()[0], with_({**ck['model'], 'adapter_emb1': torch.zeros(1, 5, 32)}))
    with pytest.raises(ValueError, match=r"lacks 1 trained weight.*adapter_proj_cls\.fc1\.bias"):
        ademvl_sqa.load_released(patched()[0], with_({k: v for k, v in ck['model'].items() if k != 'adapter_proj_cls.fc1.bias'}))
    with pytest.raises(FileNotFoundError, match='checkpoint-<epoch>.pth'): ademvl_sqa.load_released(patched()[0], tmp_path/'x.pth')
    # without [CLS]: the official model has no adapter_proj_cls, and none is required
    llm, _ = patched(with_cls=False)
    noc = {k: v for k, v in ck['model'].items() if 'adapter_proj_cls' not in k}
    assert 'adapter_emb1' in ademvl_sqa.load_released(llm, with_(noc, no_cls=True))['loaded']
    torch.save(with_(), tmp_path/'checkpoint-19.pth')
    assert len(ademvl_sqa.load_released(patched()[0], tmp_path/'checkpoint-19.pth')['loaded']) == len(ck['model'])


def test_released_set_evaluates_the_standin_without_training(tmp_path):
    "The evaluation-only set: its rehearsal writes the released checkpoint in the official layout; the run loads it, trains nothing."
    from vlrepro import rehearse as R
    root = Path(__file__).resolve().parents[1]
    params = R.load_param_set(root/'nbs'/'params'/'40_ademvl.sqa_7b.released.yaml')
    plan = ademvl_sqa.rehearsal(params, tmp_path)
    ck = torch.load(tmp_path/params['released_ckpt'], map_location='cpu', weights_only=False)
    assert {'adapter_emb1', 'adapter_proj_cls.fc2.bias', 'backbone.visual.transformer.resblocks.0.adapter_mlp.fc1.weight'} <= set(ck['model'])
    assert ck['args'].down_sample_num == [64, 16] and ck['args'].hidden_proj == 16 and not plan['trains']
    p = {**params, **plan['overrides'], 'out_dir': str(tmp_path/'run'), 'limit_eval': 2}
    for k in ('data_root', 'llama_dir', 'clip_path', 'released_ckpt'): p[k] = str(tmp_path/params[k])
    sig = ademvl_sqa.Config.names()
    out = ademvl_sqa.run_full_scale(ademvl_sqa.full_config(**{k: v for k, v in p.items() if k in sig}))
    assert out['extra']['released']['tensors'] == len(ck['model']) and out['train']['step'] == 0
    assert not (tmp_path/'run'/'train'/'checkpoint.pt').exists()
    torch.testing.assert_close(out['model'].llm.state_dict()['ademvl.adapter_emb1'], ck['model']['adapter_emb1'], rtol=0, atol=0)
    assert 'LLaMA-7B ScienceQA/Avg' in out['metrics']
