"""DAS at full scale on ViLT / METER (vlrepro.das_vl): checkpoint converters, heads, data converters, run_full_scale."""
import io, json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlrepro import das, data, models
from vlrepro import das_vl as D

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------------------- helpers
def tiny_vilt(seed=0):
    from transformers import ViltModel
    torch.manual_seed(seed)
    return ViltModel(das.tiny_vilt_config(vocab_size=64)).eval()


def vilt_inputs(B=2, T=12, seed=0):
    return das._vilt_inputs(B, T, das.tiny_vilt_config(vocab_size=64), seed)


def png(a):
    from PIL import Image
    b = io.BytesIO(); Image.fromarray(a).save(b, format='PNG'); return b.getvalue()


def write_arrow(path, cols):
    import pyarrow as pa
    t = pa.table(cols)
    with pa.OSFile(str(path), 'wb') as sink, pa.ipc.new_file(sink, t.schema) as w: w.write_table(t)


def vqa_arrows(folder, n_images=6, splits=('train', 'trainable_val', 'rest_val', 'test')):
    "ViLT-schema VQAv2 arrows from ShapesVQA scenes; the test split has empty answer lists, as ViLT writes it."
    folder.mkdir(parents=True, exist_ok=True)
    vocab = data.vqa_answers(data.preset_options('shapesvqa'))
    for k, sp in enumerate(splits):
        g = data.generate('shapesvqa', 2 * n_images, seed=0, split=sp)
        cols = {c: [] for c in ('image', 'questions', 'answers', 'answer_labels', 'answer_scores', 'image_id', 'question_id', 'split')}
        for i in range(n_images):
            rows, test = g.rows[2 * i:2 * i + 2], sp == 'test'
            cols['image'].append(png(g.images[rows[0]['image']])); cols['image_id'].append(1000 * k + i)
            cols['questions'].append([r['question'] for r in rows]); cols['question_id'].append([10 * (1000 * k + i) + j for j in (0, 1)])
            cols['answers'].append([] if test else [[r['answer'], 'maybe'] for r in rows])
            cols['answer_labels'].append([] if test else [[vocab.index(r['answer']), 99] for r in rows])
            cols['answer_scores'].append([] if test else [[1.0, 0.3] for r in rows]); cols['split'].append(sp)
        write_arrow(folder/f'vqav2_{sp}.arrow', cols)
    return vocab


def word_tokenizer(texts, roberta=False, max_len=12):
    sp = ('<s>', '<pad>', '</s>', '<unk>') if roberta else ('[PAD]', '[UNK]', '[CLS]', '[SEP]')
    tpl = '<s> $A </s>' if roberta else '[CLS] $A [SEP]'
    return models.train_tokenizer(texts, specials=sp, normalize=('lowercase',), template=tpl, vocab_size=64, model_max_length=max_len)


QUESTION_WORDS = ['what color is the square circle triangle ? shape in top left right bottom how many red green blue '
                  'yellow objects are there is a nothing']


# ---------------------------------------------------------------------------------------------------------------- ViLT ckpt
def test_vilt_official_round_trip(tmp_path):
    m = tiny_vilt()
    itm = {'itm_score.fc.weight': torch.randn(2, 64), 'itm_score.fc.bias': torch.randn(2)}
    off = D.vilt_to_official(m, {**itm, 'mlm_score.bias': torch.zeros(64)})
    sd = off['state_dict']
    assert sd['transformer.blocks.1.attn.qkv.weight'].shape == (192, 64)
    assert {'transformer.pos_embed', 'transformer.cls_token', 'transformer.patch_embed.proj.weight', 'transformer.norm.weight',
            'text_embeddings.word_embeddings.weight', 'token_type_embeddings.weight', 'pooler.dense.weight',
            'transformer.blocks.0.mlp.fc2.bias', 'transformer.blocks.0.norm1.weight'} <= set(sd)
    torch.testing.assert_close(sd['transformer.blocks.0.attn.qkv.bias'][64:128], m.state_dict()['encoder.layer.0.attention.attention.key.bias'])
    torch.save(off, tmp_path/'vilt.ckpt')
    m2, heads = D.load_vilt(tmp_path/'vilt.ckpt', num_attention_heads=m.config.num_attention_heads)
    assert sorted(heads) == ['itm_score.fc.bias', 'itm_score.fc.weight', 'mlm_score.bias']
    for k, v in m.state_dict().items(): torch.testing.assert_close(m2.state_dict()[k], v, rtol=0, atol=0)
    x = vilt_inputs()
    torch.manual_seed(1); a = m(**x).last_hidden_state
    torch.manual_seed(1); b = m2.eval()(**x).last_hidden_state
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    cfg = D.vilt_config_from_state_dict(D.convert_vilt_checkpoint(off)[0])
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size, cfg.image_size, cfg.max_position_embeddings) == (64, 8, 8, 32, 12)


def test_vilt_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='vilt_200k_mlm_itm.ckpt'): D.load_vilt(tmp_path/'nope.ckpt')
    torch.save({'state_dict': {'transformer.blocks.0.weird.weight': torch.zeros(1)}}, tmp_path/'bad.ckpt')
    with pytest.raises(ValueError, match='unknown ViLT block weight'): D.load_vilt(tmp_path/'bad.ckpt')
    (tmp_path/'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='config.json'): D.load_vilt(tmp_path/'empty')


def test_hf_folder_and_heads(tmp_path):
    m = tiny_vilt(); m.save_pretrained(tmp_path/'v')
    m2, heads = D.load_vilt(tmp_path/'v')
    assert heads == {}
    torch.testing.assert_close(m2.state_dict()['encoder.layer.3.output.dense.weight'], m.state_dict()['encoder.layer.3.output.dense.weight'])


# ---------------------------------------------------------------------------------------------------------------- heads
def test_rank_output_from_itm_row1():
    itm = {'itm_score.fc.weight': torch.arange(128.).view(2, 64), 'itm_score.fc.bias': torch.tensor([-3., 5.])}
    t = D.DASVLTask(tiny_vilt(), 'f30k', heads=itm)
    torch.testing.assert_close(t.rank_output.weight, itm['itm_score.fc.weight'][1:2])
    assert t.rank_output.bias.item() == 5.0 and t.rank_output_init == 'itm_score.fc row 1'
    assert D.DASVLTask(tiny_vilt(), 'f30k').rank_output_init.startswith('random')
    ids = torch.randint(1, 64, (2, 16, 12))
    s = t(ids, torch.ones_like(ids), vilt_inputs()['pixel_values'])
    assert s.shape == (2, 16)
    loss = D.task_loss(t, dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=vilt_inputs()['pixel_values']))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(s, torch.zeros(2, dtype=torch.long)))


def test_nlvr2_token_types_and_two_passes():
    vb = tiny_vilt(); old = vb.embeddings.token_type_embeddings.weight.detach().clone()
    t = D.DASVLTask(vb, 'nlvr2').eval()
    w = t.backbone.embeddings.token_type_embeddings.weight
    assert w.shape == (3, 64) and vb.config.modality_type_vocab_size == 3
    torch.testing.assert_close(w[:2], old); torch.testing.assert_close(w[2], w[1])
    x = vilt_inputs(); x2 = torch.randn(2, 3, 32, 32)
    out = t(**x, pixel_values_2=x2)
    assert out.shape == (2, 2)
    # the second pass uses token type 2: with row 2 == row 1 the pair (a, a) gives cls_1 == cls_2
    torch.manual_seed(0); c1 = t.encode(x['input_ids'], x['attention_mask'], x['pixel_values'], None, 1)
    torch.manual_seed(0); c2 = t.encode(x['input_ids'], x['attention_mask'], x['pixel_values'], None, 2)
    torch.testing.assert_close(c1, c2)
    with torch.no_grad(): t.backbone.embeddings.token_type_embeddings.weight[2] += torch.randn(64)   # (a constant shift would vanish in LayerNorm)
    torch.manual_seed(0); assert not torch.allclose(t.encode(x['input_ids'], x['attention_mask'], x['pixel_values'], None, 2), c1)
    with pytest.raises(ValueError, match='pixel_values_2'): t(**x)
    m = D.DASVLTask(das.tiny_meter(d=32), 'nlvr2')
    assert m.nlvr2_classifier[0].in_features == 4 * 32 and m.backbone.token_type_embeddings.weight.shape == (3, 32)
    assert D.DASVLTask(das.tiny_meter(d=32), 'vqav2', num_answers=5).vqa_classifier[0].in_features == 64


def meter_folders(root, d=32, seed=0):
    torch.manual_seed(seed)
    m = das.tiny_meter(d=d)
    m.vit_model.save_pretrained(root/'clip'); m.text_transformer.save_pretrained(root/'roberta')
    ck = D.meter_to_official(m)
    ck['state_dict'].update({'itm_score.fc.weight': torch.randn(2, 2 * d), 'itm_score.fc.bias': torch.randn(2)})
    torch.save(ck, root/'meter.ckpt')
    return m


def test_meter_load_and_token4classifier(tmp_path):
    m0 = meter_folders(tmp_path)
    m, heads = D.load_meter(tmp_path/'meter.ckpt', tmp_path/'clip', tmp_path/'roberta', image_size=32)
    assert sorted(heads) == ['itm_score.fc.bias', 'itm_score.fc.weight']
    for k, v in m0.state_dict().items(): torch.testing.assert_close(m.state_dict()[k], v, rtol=0, atol=0)
    assert 'token4classifier' not in m.state_dict()
    ref = m0.text_transformer.eval().embeddings(input_ids=torch.zeros(1, 1, dtype=torch.long))
    torch.testing.assert_close(m.token4classifier, ref)
    seen = {}
    m.cross_modal_text_layers[0].register_forward_pre_hook(lambda mod, args: seen.setdefault('x', args[0].detach().clone()))
    ids = torch.randint(4, 64, (2, 7))
    m.eval()(ids, torch.ones_like(ids), torch.randn(2, 3, 32, 32))
    expect = ref[0, 0] + m.token_type_embeddings.weight[0]
    torch.testing.assert_close(seen['x'][:, 0], expect.expand(2, -1))   # first text token = token4classifier (+ type 0)
    # image token type 2 for NLVR2's second image
    t = D.DASVLTask(m, 'nlvr2')
    assert t(ids, torch.ones_like(ids), torch.randn(2, 3, 32, 32), pixel_values_2=torch.randn(2, 3, 32, 32)).shape == (2, 2)
    with pytest.raises(FileNotFoundError, match='vision_ckpt'): D.load_meter(tmp_path/'meter.ckpt', tmp_path/'nope', tmp_path/'roberta')
    with pytest.raises(FileNotFoundError, match='meter_clip16_288_roberta_pretrain'): D.load_meter(tmp_path/'x.ckpt', tmp_path/'clip', tmp_path/'roberta')


def test_lr_multipliers_by_name():
    t = D.DASVLTask(das.tiny_meter(d=32), 'vqav2', num_answers=5); das.patch(t, skip=[1])
    from vlrepro.train import make_param_groups
    groups = make_param_groups(t, 1.0, 0.01, D._lr_mults('meter', 50.0, 5.0))
    mult = {id(p): g['lr_mult'] for g in groups for p in g['params']}
    named = dict(t.named_parameters())
    assert mult[id(named['backbone.cross_modal_text_layers.1.das_skip.down.weight'])] == 1.0
    assert mult[id(named['backbone.cross_modal_text_layers.0.das_adapter_sa.down.weight'])] == 5.0
    assert mult[id(named['backbone.cross_modal_text_pooler.dense.weight'])] == 5.0
    assert mult[id(named['vqa_classifier.0.weight'])] == 50.0 and mult[id(named['backbone.token_type_embeddings.weight'])] == 1.0
    assert not named['backbone.text_transformer.embeddings.word_embeddings.weight'].requires_grad


def test_vqa_scores_transform_and_skip_list():
    assert [D.vilt_vqa_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]
    assert D.pixelbert_size(480, 640) == (384, 512) and D.pixelbert_size(384, 384) == (384, 384)
    assert D.VLTransform('vilt', 32, 8)(np.zeros((40, 60, 3), np.uint8)).shape == (3, 32, 48)
    assert D.parse_skip_list('[4, 1]') == [1, 4] and D.parse_skip_list('') is None and D.parse_skip_list('3') == [3]
    with pytest.raises(ValueError, match="like '\\[1, 4\\]'"): D.parse_skip_list('one, four')


# ---------------------------------------------------------------------------------------------------------------- data
def test_convert_vilt_arrow_all_tasks(tmp_path):
    vocab = vqa_arrows(tmp_path/'arrows', n_images=3)
    counts = D.convert_vilt_arrow(tmp_path/'arrows', tmp_path/'vqa', 'vqav2')
    assert counts == {'train': 6, 'trainable_val': 6, 'rest_val': 6, 'test': 6}
    r = data.read_jsonl(tmp_path/'vqa'/'train.jsonl')[0]
    assert r['answer_scores'] == {r['answer']: 1.0, 'maybe': 0.3} and sorted(r['answers']) == sorted([r['answer']] * 4 + ['maybe'])
    assert (tmp_path/'vqa'/'images'/r['image']).read_bytes()[:4] == b'\x89PNG'
    av = json.loads((tmp_path/'vqa'/'answer_vocab.json').read_text())
    assert len(av) == 100 and av[99] == 'maybe' and av[vocab.index(r['answer'])] == r['answer'] and av[98] == '<label_98>'
    ds = D.VQATargets(data.VQADataset(tmp_path/'vqa', 'train'))
    it = ds[0]; assert it['target'][99] == pytest.approx(0.3) and it['target'].sum() == pytest.approx(1.3)
    assert not D.VQATargets(data.VQADataset(tmp_path/'vqa', 'test'))[0]['has_answers']
    # Flickr30K
    g = data.generate('shapes', 3, split='test')
    write_arrow(tmp_path/'arrows'/'f30k_caption_karpathy_test.arrow',
                dict(image=[png(im) for im in g.images], caption=[r['captions'] for r in g.rows],
                     image_id=[f'{i}.jpg' for i in range(3)], split=['test'] * 3))
    assert D.convert_vilt_arrow(tmp_path/'arrows', tmp_path/'f30k', 'f30k') == {'test': 3}
    rd = data.RetrievalDataset(tmp_path/'f30k', 'test')
    assert len(rd.captions) == 15 and rd.rows[1]['image'] == 'test/1.jpg'
    # NLVR2
    write_arrow(tmp_path/'arrows'/'nlvr2_dev.arrow',
                dict(image_0=[png(g.images[0])], image_1=[png(g.images[1])], questions=[['one dog', 'two dogs']],
                     answers=[['True', 'False']], identifier=['dev-850-0']))
    assert D.convert_vilt_arrow(tmp_path/'arrows', tmp_path/'nlvr2', 'nlvr2') == {'dev': 2}
    nd = D.NLVR2Dataset(tmp_path/'nlvr2', 'dev')
    assert [nd[i]['label'] for i in range(2)] == [1, 0] and nd.rows[0]['image_1'] == 'dev/dev-850-0-img1.png'
    with pytest.raises(FileNotFoundError, match='arrow files not found'): D.convert_vilt_arrow(tmp_path/'arrows', tmp_path/'x', 'f30k', ['train'])
    with pytest.raises(ValueError, match='task must be one of'): D.convert_vilt_arrow(tmp_path/'arrows', tmp_path/'x', 'gqa')


def nlvr2_raw(root, n=4):
    "Official NLVR2 layout: <split>.json lines; train images in train/<directory>/, dev/test1 flat."
    g = data.generate('shapesvqa', 2 * n, seed=0, split='x')
    (root/'json').mkdir(parents=True, exist_ok=True)
    for sp in ('train', 'dev', 'test1'):
        lines = []
        for i in range(n):
            pair = f'{sp}-{100 + i}-{i % 2}'
            d = root/'images'/sp/(str(i % 3) if sp == 'train' else '')
            d.mkdir(parents=True, exist_ok=True)
            for j in (0, 1):
                from PIL import Image
                Image.fromarray(g.images[(2 * i + j) % len(g.images)]).save(d/f'{pair}-img{j}.png')
            for s in range(2):
                row = dict(identifier=f'{pair}-{s}', sentence=f"{'the left image has more shapes' if s else 'there is a red shape'}",
                           label='True' if (i + s) % 2 else 'False', synset='x', query='y')
                if sp == 'train': row['directory'] = str(i % 3)
                lines.append(json.dumps(row))
        (root/'json'/f'{sp}.json').write_text('\n'.join(lines) + '\n')
    return root


def test_convert_nlvr2_json(tmp_path):
    raw = nlvr2_raw(tmp_path/'raw', n=3)
    counts = D.convert_nlvr2(raw/'json', raw/'images', tmp_path/'nlvr2')
    assert counts == {'train': 6, 'dev': 6, 'test1': 6}
    rows = data.read_jsonl(tmp_path/'nlvr2'/'train.jsonl', image_fields=('image_0', 'image_1'))
    assert rows[0] == dict(id='train-100-0-0', pair='train-100-0', image_0='train/0/train-100-0-img0.png',
                           image_1='train/0/train-100-0-img1.png', sentence='there is a red shape', label=False)
    ds = D.NLVR2Dataset(tmp_path/'nlvr2', 'dev')
    assert ds.rows[2]['image_0'] == 'dev/dev-101-1-img0.png' and ds[1]['label'] == 1 and ds[0]['image_0'].shape == (3, 32, 32)
    assert data.read_manifest(tmp_path/'nlvr2')['counts']['test1'] == 6
    (raw/'json'/'dev.json').write_text('{"identifier": "dev-1-0-0", "sentence": "x"}\n')
    with pytest.raises(ValueError, match="lacks 'label'"): D.convert_nlvr2(raw/'json', raw/'images', tmp_path/'n2', splits=['dev'])


# ---------------------------------------------------------------------------------------------------------------- pipeline
KW = dict(das_epoch=2, search_epochs=2, das_turn=1, warmup_epoch=0, train_epochs=1, per_gpu_batchsize=4, batch_size=8,
          lr=1e-3, image_size=32, max_text_len=12, device='cpu', max_steps=2)


def vqa_setup(tmp_path):
    "Tiny VQAv2 data converted from ViLT arrow files, and a tiny ViLT folder with its tokenizer."
    vqa_arrows(tmp_path/'arrows', n_images=4)
    D.convert_vilt_arrow(tmp_path/'arrows', tmp_path/'vqa', 'vqav2')
    qs = [r['question'] for r in data.read_jsonl(tmp_path/'vqa'/'train.jsonl', check_images=False)]
    tiny_vilt().save_pretrained(tmp_path/'vilt'); word_tokenizer(qs + QUESTION_WORDS).save_pretrained(tmp_path/'vilt')


def test_run_full_scale_vilt_vqa_and_resume(tmp_path):
    vqa_setup(tmp_path)
    args = dict(model='vilt', task='vqav2', data_root=str(tmp_path/'vqa'), ckpt=str(tmp_path/'vilt'), skip_num=2,
                out_dir=str(tmp_path/'run'), eval_split='rest_val,test', **KW)
    r = D.run_full_scale(D.config(**args))
    assert set(r) == {'metrics', 'efficiency', 'extra', 'scale', 'status'} and (r['scale'], r['status']) == ('real-data', 'complete')
    x = r['extra']
    assert len(x['skip']) == 2 and x['search'] == 'ran' and x['search_updates'] >= 1 and x['train_steps_run'] == 2
    assert len(x['gates']) == 8 and x['splits'] == dict(train=['train', 'trainable_val'], reward='rest_val', eval=['rest_val', 'test'])
    s = r['metrics']['ViLT DAS-2 VQAv2 rest_val/vqa_score']; assert 0 <= s <= 100
    sub = json.loads(Path(x['submission_test']).read_text())
    assert len(sub) == 8 and set(sub[0]) == {'question_id', 'answer'}
    e = r['efficiency']
    D_, N = 64, 12 + 16 + 1
    blk, skip = das.vilt_block_macs(N, D_, 8), das.skip_adapter_macs(N, D_, 16)
    assert e['encoder_gflops_no_skip'] == pytest.approx(2 * 8 * blk / 1e9)
    assert e['encoder_gflops'] == pytest.approx(2 * (8 * blk - 2 * (blk - skip)) / 1e9)
    assert e['adapter_params'] == 6 * 2 * das._count(das.DASAdapter(64, 8)) + 2 * das._count(das.DASAdapter(64, 16))
    assert e['trainable_params'] > e['adapter_params']
    assert json.loads((tmp_path/'run'/'full_scale.json').read_text())['metrics'] == r['metrics']
    r2 = D.run_full_scale(D.config(**args))            # resume: search.json and the finished training checkpoint are reused
    assert r2['extra']['search'] == 'loaded from search.json' and r2['extra']['train_steps_run'] == 0
    assert r2['extra']['skip'] == x['skip'] and r2['metrics'] == pytest.approx(r['metrics'])
    r3 = D.run_full_scale(D.config(**{**args, 'skip_list': '[0, 7]', 'out_dir': str(tmp_path/'run3'), 'eval_split': 'rest_val'}))
    assert r3['extra']['skip'] == [0, 7] and r3['extra']['search'].startswith('skipped')


def test_run_full_scale_meter_nlvr2(tmp_path):
    raw = nlvr2_raw(tmp_path/'raw', n=4)
    D.convert_nlvr2(raw/'json', raw/'images', tmp_path/'nlvr2')
    meter_folders(tmp_path)
    word_tokenizer(['the left image has more shapes there is a red shape'], roberta=True).save_pretrained(tmp_path/'roberta')
    r = D.run_full_scale(D.config('meter', 'nlvr2', str(tmp_path/'nlvr2'), str(tmp_path/'meter.ckpt'), str(tmp_path/'clip'),
                         str(tmp_path/'roberta'), skip_num=2, out_dir=str(tmp_path/'run'), precision='fp32', **KW))
    assert len(r['extra']['skip']) == 2 and r['extra']['num_blocks'] == 4 and all(0 <= i < 4 for i in r['extra']['skip'])
    for sp in ('dev', 'test1'): assert 0 <= r['metrics'][f'METER DAS-2 NLVR2 {sp}/accuracy'] <= 100
    assert r['extra']['max_text_len'] == 12 and 0 < r['efficiency']['flops_reduction'] < 1
    assert D.IMAGE_SIZE[('meter', 'nlvr2')] == 288 and D.MAX_TEXT_LEN[('meter', 'f30k')] == 40


def test_run_full_scale_vilt_f30k_fixed_skip(tmp_path):
    data.make_synthetic(tmp_path, 'shapes', {'train': 6, 'val': 3, 'test': 4}, name='f30k')
    caps = [c for r in data.read_jsonl(tmp_path/'f30k'/'train.jsonl', check_images=False) for c in r['captions']]
    tiny_vilt().save_pretrained(tmp_path/'vilt'); word_tokenizer(caps).save_pretrained(tmp_path/'vilt')
    itm = tiny_vilt()
    torch.save(D.vilt_to_official(itm, {'itm_score.fc.weight': torch.randn(2, 64), 'itm_score.fc.bias': torch.randn(2)}), tmp_path/'v.ckpt')
    r = D.run_full_scale(D.config('vilt', 'f30k', str(tmp_path/'f30k'), str(tmp_path/'vilt'), skip_list='[3]', out_dir=str(tmp_path/'run'),
                         limit_eval=3, **{**KW, 'per_gpu_batchsize': 2, 'batch_size': 2}))
    m = r['metrics']
    assert {f'ViLT DAS-1 Flickr30K test/{k}' for k in ('TR@1', 'TR@5', 'TR@10', 'IR@1', 'IR@5', 'IR@10', 'rsum')} | {'train/loss'} == set(m)
    assert m['ViLT DAS-1 Flickr30K test/TR@10'] == 100.0 and 0 <= m['ViLT DAS-1 Flickr30K test/IR@1'] <= 100   # 3 images: R@10 = 100
    assert r['extra']['rank_output_init'].startswith('random')   # an HF folder without ITM head


def test_run_full_scale_errors(tmp_path):
    (tmp_path/'d').mkdir(); tiny_vilt().save_pretrained(tmp_path/'vilt')
    word_tokenizer(QUESTION_WORDS).save_pretrained(tmp_path/'vilt')
    ok = dict(data_root=str(tmp_path/'d'), ckpt=str(tmp_path/'vilt'), out_dir=str(tmp_path/'run'), **KW)
    with pytest.raises(ValueError, match="model must be 'vilt' or 'meter'"): D.run_full_scale(D.config('blip', 'vqav2', **ok))
    with pytest.raises(ValueError, match='task must be one of'): D.run_full_scale(D.config('vilt', 'gqa', **ok))
    with pytest.raises(FileNotFoundError, match='convert the data first'): D.run_full_scale(D.config('vilt', 'vqav2', **{**ok, 'data_root': str(tmp_path/'no')}))
    with pytest.raises(FileNotFoundError, match='vilt_200k_mlm_itm.ckpt'): D.run_full_scale(D.config('vilt', 'vqav2', **{**ok, 'ckpt': str(tmp_path/'no.ckpt')}))
    with pytest.raises(FileNotFoundError, match='vision_ckpt'): D.run_full_scale(D.config('meter', 'vqav2', **ok))
    with pytest.raises(ValueError, match='multiple of per_gpu_batchsize'): D.run_full_scale(D.config('vilt', 'vqav2', **{**ok, 'batch_size': 6}))
    with pytest.raises(FileNotFoundError, match="lacks the split"): D.run_full_scale(D.config('vilt', 'vqav2', **ok))
    vqa_arrows(tmp_path/'arrows', n_images=2); D.convert_vilt_arrow(tmp_path/'arrows', tmp_path/'d', 'vqav2')
    with pytest.raises(ValueError, match='8 candidate blocks'): D.run_full_scale(D.config('vilt', 'vqav2', **{**ok, 'skip_list': '[2, 11]'}))
    with pytest.raises(ValueError, match="like '\\[1, 4\\]'"): D.run_full_scale(D.config('vilt', 'vqav2', **{**ok, 'skip_list': 'first'}))
    with pytest.raises(ValueError, match='text positions'): D.run_full_scale(D.config('vilt', 'vqav2', **{**ok, 'max_text_len': 40}))
    assert not (tmp_path/'run'/'train').exists()            # nothing trained


# ---------------------------------------------------------------------------------------------------------------- scripts
def test_data_scripts(tmp_path, capsys):
    import importlib.util
    def load(name):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1]/'data_scripts'/f'{name}.py')
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod
    vqa_arrows(tmp_path/'arrows', n_images=2, splits=('train', 'test'))
    arrow = load('convert_vilt_arrow').main
    assert data.script_main(arrow, ['--src', str(tmp_path/'arrows'), '--task', 'vqav2', '--root', str(tmp_path), '--dry-run']) == 0
    assert 'dry run' in capsys.readouterr().out and not (tmp_path/'vqav2_vilt').exists()
    assert data.script_main(arrow, ['--src', str(tmp_path/'arrows'), '--task', 'vqav2', '--root', str(tmp_path)]) == 0
    assert data.read_manifest(tmp_path/'vqav2_vilt')['counts'] == {'train': 4, 'test': 4}
    assert data.script_main(arrow, ['--src', str(tmp_path/'arrows'), '--task', 'f30k', '--root', str(tmp_path)]) == 2
    raw = nlvr2_raw(tmp_path/'raw', n=2)
    nl = load('convert_nlvr2').main
    assert data.script_main(nl, ['--src', str(raw/'json'), '--images', str(raw/'images'), '--root', str(tmp_path)]) == 0
    assert len(D.NLVR2Dataset(tmp_path/'nlvr2', 'train')) == 4
    assert data.script_main(nl, ['--root', str(tmp_path)]) == 2 and '--src' in capsys.readouterr().err


@pytest.mark.slow
def test_run_full_scale_launched_training(tmp_path):
    "nproc=1: the skip-and-retrain step runs in a fresh process (vlrepro.train.launch) and its weights are read back."
    vqa_setup(tmp_path)
    r = D.run_full_scale(D.config('vilt', 'vqav2', str(tmp_path/'vqa'), str(tmp_path/'vilt'), skip_list='[2]', out_dir=str(tmp_path/'run'),
                         eval_split='rest_val', nproc=1, launcher='python', **KW))
    assert r['extra']['skip'] == [2] and 0 <= r['metrics']['ViLT DAS-1 VQAv2 rest_val/vqa_score'] <= 100
    summary = json.loads((tmp_path/'run'/'train'/'summary.json').read_text())
    assert summary['step'] == 2 and summary['finished']


@pytest.mark.slow
def test_notebook_20_das_runs_full_scale(tmp_path):
    "`vlrepro run 20_das -f <yaml>` path: the paper notebook dispatches model='vilt' to das_vl and writes results.json."
    import papermill as pm
    from vlrepro import core
    vqa_setup(tmp_path)
    nbs = Path(__file__).parent.parent/'nbs'
    pm.execute_notebook(str(nbs/'20_das.ipynb'), str(tmp_path/'out.ipynb'), cwd=str(nbs), kernel_name='python3',
                        parameters=dict(model='vilt', task='vqav2', data_root=str(tmp_path/'vqa'), ckpt=str(tmp_path/'vilt'),
                                        skip_num=2, out_dir=str(tmp_path/'run'), eval_split='rest_val', **KW))
    rec = core.read_results(tmp_path/'run')
    assert rec['paper'] == 'das' and (rec['scale'], rec['status']) == ('real-data', 'complete') and rec['params']['model'] == 'vilt'
    assert len(rec['extra']['skip']) == 2 and 0 <= rec['metrics']['ViLT DAS-2 VQAv2 rest_val/vqa_score'] <= 100
    assert rec['efficiency']['flops_reduction'] > 0
