"""Loading the authors' DAS checkpoints (official layouts and key names) into vlrepro's DAS-patched models."""
import argparse

import pytest
import torch

from vlrepro import das
from vlrepro import das_vl as D

torch.set_num_threads(1)


def _randomize(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters(): p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _official_vl(task_model, S, heads, extra=None):
    "Write `task_model` (patched with search=True, so it has every adapter as the official module) in the official layout."
    fam = task_model.family
    sd = task_model.state_dict()
    adapters = {k[len('backbone.'):]: v.clone() for k, v in sd.items() if '.das_' in k}
    head = {k: v.clone() for k, v in sd.items() if not k.startswith('backbone.')}
    das.unpatch(task_model)
    off = D.vilt_to_official(task_model.backbone) if fam == 'vilt' else D.meter_to_official(task_model.backbone)
    off['state_dict'].update(D.das_adapters_to_official(adapters, fam)); off['state_dict'].update(head)
    off['state_dict'].update(heads); off['state_dict'].update(extra or {})
    off['hyper_parameters'] = {'config': {'skip_module': list(S), 'skip_num': len(S)}}
    return off


def _vilt_release(tmp_path, task='vqav2', S=(5, 2), n_ans=5):
    from transformers import ViltModel
    torch.manual_seed(0)
    src = D.DASVLTask(ViltModel(das.tiny_vilt_config(vocab_size=64)), task, num_answers=n_ans)
    das.patch(src, search=True); _randomize(src, 1); das.set_skip(src, list(S)); src.eval()
    x = das._vilt_inputs(2, 12, das.tiny_vilt_config(vocab_size=64))
    if task == 'nlvr2': x['pixel_values_2'] = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): ref = src(**x)
    itm = {'itm_score.fc.weight': torch.randn(2, 64), 'itm_score.fc.bias': torch.randn(2), 'mlm_score.bias': torch.zeros(64)}
    off = _official_vl(src, S, itm, {'das_gate': torch.randn(8)})
    torch.save(off, tmp_path/'das_vilt.ckpt')
    return off, x, ref


def test_vilt_released_round_trip(tmp_path):
    off, x, ref = _vilt_release(tmp_path)
    sd = off['state_dict']
    assert {'transformer.blocks.3.adapter0.adapter_layer_norm_before.weight', 'transformer.blocks.3.adapter1.up_proj.bias',
            'adapter_list.2.0.down_proj.weight', 'vqa_classifier.3.weight', 'transformer.cls_token'} <= set(sd)
    bb, heads = D.load_vilt(tmp_path/'das_vilt.ckpt', num_attention_heads=4)
    m = D.DASVLTask(bb, 'vqav2', num_answers=5, heads=heads)
    rep = D.load_das_checkpoint(m, tmp_path/'das_vilt.ckpt')
    assert rep['skip'] == [2, 5] and sorted(das.das_state(m).skip) == [2, 5]
    # every tensor of the checkpoint landed (or is one of the adapters the skip set never runs)
    got = m.state_dict()
    adapters = {'adapter0': 'das_adapter_attn', 'adapter1': 'das_adapter_mlp'}
    parts = {'adapter_layer_norm_before': 'ln', 'down_proj': 'down', 'up_proj': 'up'}
    n_checked = 0
    for k, v in sd.items():
        p = k.split('.')
        if k.startswith('transformer.blocks.') and p[3] in adapters:
            ours = f'backbone.encoder.layer.{p[2]}.{adapters[p[3]]}.{parts[p[4]]}.{p[5]}'
            if int(p[2]) in (2, 5): assert k in rep['unused'] and ours not in got; continue
        elif k.startswith('adapter_list.'):
            ours = f'backbone.encoder.layer.{p[1]}.das_skip.{parts[p[3]]}.{p[4]}'
            if int(p[1]) not in (2, 5): assert k in rep['unused'] and ours not in got; continue
        elif k.startswith('vqa_classifier.'): ours = k
        elif k == 'token_type_embeddings.weight': ours = 'backbone.embeddings.token_type_embeddings.weight'
        elif k == 'pooler.dense.weight': ours = 'backbone.pooler.dense.weight'
        else: continue
        torch.testing.assert_close(got[ours], v, rtol=0, atol=0); n_checked += 1
    assert n_checked == 6 * 2 * 6 + 2 * 6 + 6 + 1 + 1   # 6 kept blocks x 2 adapters, 2 skip adapters (6 tensors each), head, types, pooler
    assert len(rep['unused']) == 2 * 2 * 6 + 6 * 6 and {'itm_score.fc.weight', 'das_gate', 'mlm_score.bias'} <= set(rep['ignored'])
    for k, v in D.vilt_to_official(das.unpatch(m).backbone)['state_dict'].items():   # the backbone too, bit for bit
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)


def test_vilt_released_same_outputs_and_nlvr2(tmp_path):
    for task in ('vqav2', 'nlvr2'):
        off, x, ref = _vilt_release(tmp_path, task, S=(0, 7))
        bb, heads = D.load_vilt(tmp_path/'das_vilt.ckpt', num_attention_heads=4)
        m = D.DASVLTask(bb, task, num_answers=5, heads=heads)
        D.load_das_checkpoint(m, tmp_path/'das_vilt.ckpt')
        with torch.no_grad(): torch.testing.assert_close(m.eval()(**x), ref, rtol=1e-5, atol=1e-6)   # (weights: bit for bit above)


def test_vilt_convert_accepts_adapters(tmp_path):
    off, _, _ = _vilt_release(tmp_path)
    out, heads = D.convert_vilt_checkpoint(off)
    torch.testing.assert_close(out['encoder.layer.4.das_adapter_mlp.down.weight'], off['state_dict']['transformer.blocks.4.adapter1.down_proj.weight'])
    torch.testing.assert_close(out['encoder.layer.6.das_skip.ln.bias'], off['state_dict']['adapter_list.6.0.adapter_layer_norm_before.bias'])
    assert not any('adapter' in k for k in heads)
    only = {k: v for k, v in off['state_dict'].items() if 'adapter' in k}        # adapters-only file: accepted, no backbone
    out, _ = D.convert_vilt_checkpoint({'state_dict': only})
    assert len(out) == len(only) and all('.das_' in k for k in out)
    torch.save({'state_dict': only}, tmp_path/'only.ckpt')
    with pytest.raises(ValueError, match='no ViLT backbone'): D.load_vilt(tmp_path/'only.ckpt')
    with pytest.raises(ValueError, match='no transformer.cls_token and no DAS adapter'): D.convert_vilt_checkpoint({'x.weight': torch.zeros(1)})


def test_released_errors(tmp_path):
    off, _, _ = _vilt_release(tmp_path)
    bb, heads = D.load_vilt(tmp_path/'das_vilt.ckpt', num_attention_heads=4)
    fresh = lambda n=5: D.DASVLTask(D.load_vilt(tmp_path/'das_vilt.ckpt', num_attention_heads=4)[0], 'vqav2', num_answers=n)
    bad = {**off, 'state_dict': {**off['state_dict'], 'transformer.blocks.0.adapter2.down_proj.weight': torch.zeros(4, 64)}}
    with pytest.raises(ValueError, match=r"unknown adapter weight 'transformer\.blocks\.0\.adapter2\.down_proj\.weight'.*adapter0/1"):
        D.load_das_checkpoint(fresh(), bad)
    bad = {**off, 'state_dict': {**off['state_dict'], 'transformer.blocks.0.adapter0.gate.weight': torch.zeros(4)}}
    with pytest.raises(ValueError, match=r"unknown adapter weight 'transformer\.blocks\.0\.adapter0\.gate\.weight'"):
        D.load_das_checkpoint(fresh(), bad)
    bad = {**off, 'state_dict': {**off['state_dict'], 'gqa_classifier.0.weight': torch.zeros(4)}}
    with pytest.raises(ValueError, match=r"unknown key 'gqa_classifier\.0\.weight'.*remove it"):
        D.load_das_checkpoint(fresh(), bad)
    with pytest.raises(ValueError, match=r"'vqa_classifier\.3\.weight' has shape \(5, 128\).*\(7, 128\).*num_answers"):
        D.load_das_checkpoint(fresh(7), off)
    nohp = {'state_dict': off['state_dict']}
    with pytest.raises(ValueError, match=r"records no skip set.*skip=\[\.\.\.\]"): D.load_das_checkpoint(fresh(), nohp)
    assert D.load_das_checkpoint(fresh(), nohp, skip='[2, 5]')['skip'] == [2, 5]
    lack = {**off, 'state_dict': {k: v for k, v in off['state_dict'].items() if k != 'transformer.blocks.0.adapter0.up_proj.weight'}}
    with pytest.raises(ValueError, match=r"lacks 1 trained weight.*encoder\.layer\.0\.das_adapter_attn\.up\.weight"):
        D.load_das_checkpoint(fresh(), lack)
    m = fresh(); das.patch(m, skip=[1])
    with pytest.raises(ValueError, match=r"patched with skip set \[1\] but the checkpoint was trained with \[2, 5\]"):
        D.load_das_checkpoint(m, off)
    with pytest.raises(ValueError, match=r"skip=\[2, 6\] but the checkpoint was trained with skip_module=\[2, 5\]"):
        D.load_das_checkpoint(fresh(), off, skip=[2, 6])
    with pytest.raises(FileNotFoundError, match='fine-tuned'): D.load_das_checkpoint(fresh(), tmp_path/'nope.ckpt')
    with pytest.raises(ValueError, match=r"unknown adapter weight 'cross_modal_text_layers\.0\.adapter\.down_proj\.weight' in this vilt"):
        D.split_das_adapters({'cross_modal_text_layers.0.adapter.down_proj.weight': torch.zeros(1)}, 'vilt')


def meter_release(tmp_path, task='vqav2', S=(1, 4), n_ans=5):
    torch.manual_seed(0)
    m0 = das.tiny_meter(d=32, fusion_layers=3)
    m0.vit_model.save_pretrained(tmp_path/'clip'); m0.text_transformer.save_pretrained(tmp_path/'roberta')
    pre = D.meter_to_official(m0)
    pre['state_dict'].update({'itm_score.fc.weight': torch.randn(2, 64), 'itm_score.fc.bias': torch.randn(2)})
    torch.save(pre, tmp_path/'meter.ckpt')
    bb, heads = D.load_meter(tmp_path/'meter.ckpt', tmp_path/'clip', tmp_path/'roberta', image_size=32)
    src = D.DASVLTask(bb, task, num_answers=n_ans, heads=heads)
    das.patch(src, search=True); _randomize(src, 2); das.set_skip(src, list(S)); src.eval()
    t4c = torch.randn(1, 1, 32); src.backbone.token4classifier = t4c.clone()
    ids = torch.randint(4, 64, (2, 7)); x = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(2, 3, 32, 32))
    if task == 'nlvr2': x['pixel_values_2'] = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): ref = src(**x)
    off = _official_vl(src, S, {'itm_score.fc.weight': torch.randn(2, 64), 'itm_score.fc.bias': torch.randn(2)},
                       {'token4classifier': torch.nn.Parameter(t4c), 'das_gate': torch.zeros(12), 'skip_num': torch.ones(1)})
    torch.save(off, tmp_path/'das_meter.ckpt')
    return off, x, ref


def test_meter_released_round_trip(tmp_path):
    for task in ('vqav2', 'nlvr2'):
        off, x, ref = meter_release(tmp_path, task)
        sd = off['state_dict']
        assert {'cross_modal_text_layers.0.attention.output.adapter.down_proj.weight',
                'cross_modal_image_layers.2.crossattention.output.adapter.adapter_layer_norm_before.bias',
                'cross_modal_image_layers.1.adapter.up_proj.weight', 'adapter_list_l.1.0.up_proj.weight',
                'adapter_list_v.1.0.down_proj.bias'} <= set(sd)
        bb, heads = D.load_meter(tmp_path/'das_meter.ckpt', tmp_path/'clip', tmp_path/'roberta', image_size=32)
        m = D.DASVLTask(bb, task, num_answers=5, heads=heads)
        rep = D.load_das_checkpoint(m, tmp_path/'das_meter.ckpt')
        assert rep['skip'] == [1, 4]                            # text layer 1 and image layer 1 (index 3 + 1)
        got = m.state_dict()
        tl, il = 'backbone.cross_modal_text_layers', 'backbone.cross_modal_image_layers'
        pairs = {f'{tl}.0.das_adapter_sa.down.weight': 'cross_modal_text_layers.0.attention.output.adapter.down_proj.weight',
                 f'{il}.2.das_adapter_ca.ln.bias': 'cross_modal_image_layers.2.crossattention.output.adapter.adapter_layer_norm_before.bias',
                 f'{tl}.2.das_adapter_ffn.up.weight': 'cross_modal_text_layers.2.adapter.up_proj.weight',
                 f'{tl}.1.das_skip.up.weight': 'adapter_list_l.1.0.up_proj.weight',
                 f'{il}.1.das_skip.down.bias': 'adapter_list_v.1.0.down_proj.bias',
                 f'{tl}.0.base.attention.self.query.weight': 'cross_modal_text_layers.0.attention.self.query.weight',
                 'backbone.cross_modal_image_pooler.dense.weight': 'cross_modal_image_pooler.dense.weight',
                 'backbone.token_type_embeddings.weight': 'token_type_embeddings.weight'}
        for ours, k in pairs.items(): torch.testing.assert_close(got[ours], sd[k], rtol=0, atol=0)
        # every adapter of the file: loaded into the block that runs it, or reported unused
        n_ad = [k for k in sd if 'adapter' in k]
        assert len(n_ad) == len([k for k in rep['loaded'] if 'adapter' in k]) + len(rep['unused'])
        assert 'adapter_list_l.0.0.up_proj.weight' in rep['unused'] and 'cross_modal_text_layers.1.adapter.up_proj.weight' in rep['unused']
        torch.testing.assert_close(m.backbone.token4classifier, sd['token4classifier'].detach())
        with torch.no_grad(): torch.testing.assert_close(m.eval()(**x), ref, rtol=1e-5, atol=1e-6)   # (weights: bit for bit above)
    assert m.backbone.token_type_embeddings.weight.shape == (3, 32)


def test_meter_split_errors():
    with pytest.raises(ValueError, match=r"unknown adapter weight 'adapter_list_x\.0\.0\.up_proj\.weight' in this meter.*adapter_list_l/v"):
        D.split_das_adapters({'adapter_list_x.0.0.up_proj.weight': torch.zeros(1)}, 'meter')
    with pytest.raises(ValueError, match="family must be"): D.split_das_adapters({}, 'llava')


# ---------------------------------------------------------------------------------------------------------------- LaVIN
def _lavin(multimodal, skip, seed=0, search=False):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from vlrepro import models
    from vlrepro.das_lavin import LaVIN
    torch.manual_seed(seed)
    llm = models.tiny_hf('llama', vocab_size=128, num_hidden_layers=4)
    vis = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           image_size=32, patch_size=8)) if multimodal else None
    return LaVIN(llm, vis, [5, 6], [5, 7], skip=skip, search=search, adapter_dim=4, hidden_proj=8)


def _lavin_official(m, ddp=False):
    "The official names of LaVIN-DAS (written out here independently of the loader's mapping)."
    out = {}
    parts = {'down': 'down_sampler', 'up': 'up_sampler'}
    for n, p in m.named_parameters():
        if not p.requires_grad: continue
        q = n.split('.')
        if n.startswith('llm.model.layers.'):
            kind = 'adapter_attn' if q[4] == 'das_adapter_attn' else 'replaced_adapter'
            k = f'layers.{q[3]}.{kind}.{parts.get(q[5], q[5])}.{q[6]}'
        elif '.layer_norm1.adapter_attn.' in n:
            i = q[q.index('layers') + 1]
            k = f'backbone.visual.transformer.resblocks.{i}.adapter_attn.{q[-2]}.{q[-1]}'
        elif n.startswith('adapter_proj.'): k = f"adapter_proj.{'conv_A' if q[1] == 'fc1' else 'conv_B'}.{q[2]}"
        else: k = n
        out[('module.' if ddp else '') + k] = p.detach().clone()
    return out


@pytest.mark.parametrize('multimodal', [True, False])
def test_lavin_released_round_trip(multimodal):
    from vlrepro import das_lavin as L
    S = [1, 3]
    src = _lavin(multimodal, S, search=not multimodal); _randomize(src, 3)   # language-only: the file keeps every adapter
    if not multimodal: das.set_skip(src.llm, S)
    sd = _lavin_official(src, ddp=multimodal)
    ck = {'model': sd, 'epoch': 19, 'args': argparse.Namespace(skip_list='[3, 1]')}
    keys = set(k.removeprefix('module.') for k in sd)
    if multimodal:
        assert {'layers.0.adapter_attn.conv_D.weight', 'layers.1.replaced_adapter.expert_weights.bias', 'adapter_proj.conv_A.weight',
                'backbone.visual.transformer.resblocks.1.adapter_attn.conv_B.bias', 'adapter_modality_embedding.weight'} <= keys
        assert 'layers.1.adapter_attn.conv_A.weight' not in keys            # deleted as in the official multimodal model
        assert L.released_skip({'model': sd}) == S                          # from the keys alone
    else:
        assert {'layers.0.adapter_attn.down_sampler.weight', 'layers.2.replaced_adapter.up_sampler.bias'} <= keys
        assert L.released_skip({'model': sd}) is None                       # every adapter kept: only args tell
    assert L.released_skip(ck) == S
    dst = _lavin(multimodal, S, seed=0)
    rep = L.load_das_checkpoint(dst, ck)
    got = dict(dst.named_parameters())
    n = 0
    for name, p in src.named_parameters():
        if not p.requires_grad: continue
        if name in got: torch.testing.assert_close(got[name], p, rtol=0, atol=0); n += 1
    assert n == sum(q.requires_grad for q in dst.parameters()) and len(rep['loaded']) == n
    if not multimodal: assert len(rep['unused']) == 4 * 4 and 'layers.0.replaced_adapter.up_sampler.weight' in rep['unused']
    with pytest.raises(ValueError, match=r"skips blocks \[1, 3\] but the checkpoint was trained with \[0, 2\]"):
        L.load_das_checkpoint(_lavin(multimodal, S), ck, skip=[0, 2])


def test_lavin_released_errors():
    from vlrepro import das_lavin as L
    src = _lavin(True, [1, 3]); sd = _lavin_official(src)
    ck = lambda extra={}, drop=(): {'model': {**{k: v for k, v in sd.items() if k not in drop}, **extra}, 'args': argparse.Namespace(skip_list='[1, 3]')}
    with pytest.raises(ValueError, match=r"unknown key 'layers\.0\.adapter_mlp\.conv_A\.weight'.*'block' adapters"):
        L.load_das_checkpoint(_lavin(True, [1, 3]), ck({'layers.0.adapter_mlp.conv_A.weight': torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"unknown key 'layers\.0\.attention\.wq\.lora_a\.weight'.*LoRA"):
        L.load_das_checkpoint(_lavin(True, [1, 3]), ck({'layers.0.attention.wq.lora_a.weight': torch.zeros(1)}))
    with pytest.raises(ValueError, match=r"'adapter_proj\.conv_A\.weight' has shape \(3, 32\).*\(8, 32\).*hidden_proj"):
        L.load_das_checkpoint(_lavin(True, [1, 3]), ck({'adapter_proj.conv_A.weight': torch.zeros(3, 32)}))
    with pytest.raises(ValueError, match=r"lacks 1 trained weight.*adapter_modality_embedding"):
        L.load_das_checkpoint(_lavin(True, [1, 3]), ck(drop=('adapter_modality_embedding.weight',)))
    with pytest.raises(ValueError, match=r"does not fit this model.*language-only LaVIN"):
        L.load_das_checkpoint(_lavin(False, [1, 3]), ck())
    bad = {'model': sd, 'args': argparse.Namespace(skip_list='[0, 2]')}
    with pytest.raises(ValueError, match=r"args\.skip_list \[0, 2\] disagrees with its adapters.*\[1, 3\]"): L.released_skip(bad)
    lang = _lavin_official(_lavin(False, [1, 3], search=True))
    with pytest.raises(ValueError, match=r"records no skip set.*--skip_list"): L.load_das_checkpoint(_lavin(False, [1, 3]), {'model': lang})
    with pytest.raises(FileNotFoundError, match='checkpoint-<epoch>.pth'): L.load_das_checkpoint(_lavin(True, [1, 3]), '/nonexistent.pth')
