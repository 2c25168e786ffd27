"""vlrepro.data: on-disk format, readers, synthetic generator (presets vs their specs), transforms, collate."""
import json
from collections import Counter

import numpy as np
import pytest
import torch

from vlrepro import data


# ---------------------------------------------------------------- format and errors
def test_read_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path/'ds'/'train.jsonl'; p.parent.mkdir()
    p.write_text('{"image": null, "question": "q"}\n{"image": null, "question": \n')
    with pytest.raises(ValueError, match=r'train\.jsonl:2: malformed JSON'): data.read_jsonl(p)
    p.write_text('{"image": null, "question": "q"}\n\n{"image": null}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl:3: row lacks required field 'question'"):
        data.read_jsonl(p, required=['question'])
    with pytest.raises(ValueError, match=r"train\.jsonl:1: row lacks required field 'captions' or 'caption'"):
        data.read_jsonl(p, required=[('captions', 'caption')])
    p.write_text('{"image": "a.png"}\n{"image": "missing.png"}\n')
    (p.parent/'images').mkdir(); (p.parent/'images'/'a.png').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl:2: image 'missing.png'"): data.read_jsonl(p)
    assert len(data.read_jsonl(p, check_images=False)) == 2
    p.write_text('[1, 2]\n')
    with pytest.raises(ValueError, match=r'train\.jsonl:1: a row must be a JSON object'): data.read_jsonl(p)


def test_missing_root_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'make_synthetic\.py --root .* --preset shapes'):
        data.RetrievalDataset(tmp_path/'shapes', 'train')
    with pytest.raises(FileNotFoundError, match='get_<dataset>.py'):
        data.dataset_dir(tmp_path/'flickr30k')


def test_missing_split_lists_available(tmp_path):
    d = data.make_synthetic(tmp_path, 'shapes', splits={'train': 3})
    with pytest.raises(FileNotFoundError, match=r"splits here: \['train'\]"): data.RetrievalDataset(d, 'test')


def test_default_root(monkeypatch):
    monkeypatch.delenv('VLREPRO_DATA', raising=False)
    assert str(data.default_root()) == 'data'
    monkeypatch.setenv('VLREPRO_DATA', '/x/y')
    assert str(data.default_root()) == '/x/y'


# ---------------------------------------------------------------- generator
@pytest.mark.parametrize('preset', sorted(data.PRESETS))
def test_presets_deterministic_prefix_stable_and_on_disk(tmp_path, preset):
    a, b = data.generate(preset, 12, seed=5, split='test'), data.generate(preset, 12, seed=5, split='test')
    np.testing.assert_array_equal(a.images, b.images); assert a.rows == b.rows
    small = data.generate(preset, 5, seed=5, split='test')
    assert small.rows == a.rows[:5]
    assert data.generate(preset, 12, seed=6, split='test').rows != a.rows
    d = data.make_synthetic(tmp_path, preset, splits={'train': 6, 'test': 4}, seed=2)
    man = data.read_manifest(d)
    assert man['counts'] == {'train': 6, 'test': 4} and man['format'] == data.FORMAT_VERSION
    assert {'source', 'license', 'date', 'counts'} <= set(man)
    rows = data.read_jsonl(d/'test.jsonl', image_fields=data.IMAGE_FIELDS)
    mem = data.generate(preset, 4, seed=2, split='test')
    from PIL import Image
    for r, m in zip(rows, mem.rows):
        for k in data.IMAGE_FIELDS:
            if m.get(k) is not None:
                np.testing.assert_array_equal(np.asarray(Image.open(d/'images'/r[k])), mem.images[m[k]])
        assert {k: v for k, v in r.items() if k not in data.IMAGE_FIELDS} == {k: v for k, v in m.items() if k not in data.IMAGE_FIELDS}


def test_make_synthetic_rerun_is_noop_and_overwrite_regenerates(tmp_path):
    d = data.make_synthetic(tmp_path, 'tiles', splits={'train': 5})
    stamp = (d/'train.jsonl').stat().st_mtime_ns
    data.make_synthetic(tmp_path, 'tiles', splits={'train': 5})
    assert (d/'train.jsonl').stat().st_mtime_ns == stamp
    data.make_synthetic(tmp_path, 'tiles', splits={'train': 3}, overwrite=True)
    assert len(list((d/'images').glob('train_*.png'))) == 3                     # stale images removed
    assert data.read_manifest(d)['counts'] == {'train': 3}
    data.make_synthetic(tmp_path, 'tiles', splits={'test': 2}, seed=1)               # other arguments: old splits go
    assert not (d/'train.jsonl').exists() and not list((d/'images').glob('train_*.png'))
    assert data.read_manifest(d)['counts'] == {'test': 2} and data.read_manifest(d)['images'] == 2


def test_make_synthetic_parallel_calls_agree(tmp_path):
    import concurrent.futures as cf
    with cf.ThreadPoolExecutor(3) as ex:
        outs = list(ex.map(lambda _: data.make_synthetic(tmp_path, 'shapes', splits={'train': 40}), range(3)))
    assert len(set(outs)) == 1 and len(data.RetrievalDataset(outs[0])) == 40
    assert len(list((outs[0]/'images').glob('*.png'))) == 40


def test_generation_is_fast():
    import time
    t = time.perf_counter(); data.generate('shapes', 1000); dt = time.perf_counter() - t
    assert dt < 3.0, f'1,000 images took {dt:.2f} s'      # ≈0.3 s alone; generous for a shared machine


def test_shapes_preset_matches_crossget_spec():
    s = data.generate('shapes', 400)
    o = data.preset_options('shapes')
    assert s.images.shape == (400, 32, 32, 3)
    for r in s.rows:
        assert len(r['objects']) == 2 and len({ob['cell'] for ob in r['objects']}) == 2
        assert len(r['captions']) == 5 == len(set(r['captions']))
        assert set(r['captions']) <= set(data.paraphrases(r['objects'], o))
        for ob in r['objects']:
            assert ob['size'] in ('small', 'big') and ob['r'] == {'small': 3, 'big': 6}[ob['size']]
            x0, y0, x1, y1 = ob['box']; assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
    assert len(data.paraphrases(s.rows[0]['objects'], o)) == 8
    vocab = set('a and in the at with top bottom left right small big'.split()) | set(o['colors']) | set(o['shapes'])
    assert len(vocab) == 24
    words = [c.split() for r in s.rows for c in r['captions']]
    assert {w for ws in words for w in ws} <= vocab and max(map(len, words)) + 2 <= 19
    # background: uniform [0, 60] per channel + noise; corners are background (objects sit in the cell centres ± 2 + r 6)
    assert s.images[:, 0, 0].mean() < 60


def test_shapesvqa_matches_das_spec():
    s = data.generate('shapesvqa', 3000)
    o = data.preset_options('shapesvqa')
    answers = data.vqa_answers(o)
    assert len(answers) == 15 and {r['answer'] for r in s.rows} == set(answers)
    assert len({w for r in s.rows for w in r['question'].split()}) + 3 == 27
    assert abs(np.mean([len(r['objects']) for r in s.rows])/4 - 0.6) < 0.03
    kinds = Counter(r['question_type'] for r in s.rows)
    assert set(kinds) == {'color', 'shape', 'count', 'exists'}
    for r in s.rows:
        objs = r['objects']
        q = r['question']
        if r['question_type'] == 'color':
            shape = q.split()[-2]
            assert sum(ob['shape'] == shape for ob in objs) == 1
            assert r['answer'] == next(ob['color'] for ob in objs if ob['shape'] == shape)
        if r['question_type'] == 'count':
            assert r['answer'] == str(sum(ob['color'] == q.split()[2] for ob in objs))
        if r['question_type'] == 'shape':
            cell = ' '.join(q.split()[5:7])
            assert r['answer'] == next((ob['shape'] for ob in objs if ob['cell'] == cell), 'nothing')
        if r['question_type'] == 'exists':
            c, sh = q.split()[3:5]
            assert r['answer'] == ('yes' if any((ob['color'], ob['shape']) == (c, sh) for ob in objs) else 'no')
        for ob in objs: assert 4.5 <= ob['r'] <= 6.5


def test_tiles_matches_laps_spec():
    s = data.generate('tiles', 60)
    for r in s.rows:
        assert sorted(t['cell'] for t in r['tiles']) == [0, 1, 2, 3]
        assert len({(t['color'], t['pattern']) for t in r['tiles']}) == 4
        assert len(r['captions']) == 5 and len({tuple(sorted(p)) for p in r['caption_tiles']}) == 5
        for cap, pair, mask in zip(r['captions'], r['caption_tiles'], r['masks']):
            assert len(mask) == 32 and mask == data.tile_patch_mask(pair, 32, 4)
            for cell in pair:
                t = next(t for t in r['tiles'] if t['cell'] == cell)
                assert t['color'] in cap and t['pattern'] in cap and data.cell_name(cell) in cap
    assert data.tile_patch_mask([3], 32, 4)[0] == 4*8 + 4
    assert data.tile_patch_mask([0, 1], 32, 8) == list(range(8))
    # pattern pixels take the colour, the rest 0.35*colour + 0.25 (before noise)
    o = data.preset_options('tiles', noise=0)
    im = data.generate(o, 1).images[0].astype(float)
    r = data.generate(o, 1).rows[0]; t = r['tiles'][0]
    rgb = np.array(data.COLORS[t['color']], float)
    tile = im[:16, :16].reshape(-1, 3)
    assert np.isclose(tile, rgb, atol=1).all(1).any()
    if t['pattern'] != 'solid': assert np.isclose(tile, 0.35*rgb + 0.25*255, atol=1).all(1).any()


def test_sciqa_matches_ademvl_spec():
    s = data.generate('sciqa', 2000)
    mix = Counter(r['category'] for r in s.rows)
    assert abs(mix['IMG']/2000 - 0.5) < 0.04 and abs(mix['TXT']/2000 - 0.25) < 0.04 and abs(mix['NO']/2000 - 0.25) < 0.04
    img = [r for r in s.rows if r['category'] == 'IMG']
    assert 0.25 < np.mean([r['hint'] == 'Look at the picture.' for r in img]) < 0.35
    for r in s.rows:
        assert len(r['choices']) == 3 == len(set(r['choices'])) and 0 <= r['answer'] < 3
        tags = data.sqa_tags(r)
        if r['category'] == 'IMG':
            assert r['image'] is not None and 1 <= len(r['objects']) <= 3 and r['description'].startswith('The picture shows')
            assert 'IMG' in tags
        else:
            assert r['image'] is None and r['has_image'] is False
        if r['category'] == 'TXT': assert tags[:2] == ['SOC', 'TXT'] and r['choices'][r['answer']] in r['hint']
        if r['category'] == 'NO': assert tags == ['LAN', 'NO', 'G7-12']
    p, a = data.sqa_prompt(dict(question='Which?', hint='', choices=['x', 'y'], answer=1))
    assert p == 'Context: N/A\nQuestion: Which?\nOptions: (A) x (B) y\nResponse:' and a == 'The answer is B.'
    p, _ = data.sqa_prompt(dict(question='Q?', hint='H.', choices=['x'], answer=0), fmt='QCM-A')
    assert p.startswith('Question: Q?\nContext: H.\nOptions:')


def test_world_matches_vqascore_spec():
    tr, te, fam = data.world_families()
    assert (len(tr), len(te), len(tr) + len(te)) == (68, 40, 108)
    assert len({fam[c] for c in tr}) == 24 and not ({fam[c] for c in tr} & {fam[c] for c in te})
    train = data.generate('world', 300)
    for r in train.rows:
        c = tuple(r['combo'])
        assert c in tr and r['caption'] == data.world_caption(c) and c[0] != c[2]
        l, rr = r['objects']
        assert 6 <= l['x'] <= 11 and 21 <= rr['x'] <= 26 and 6 <= l['y'] <= 26 and l['r'] == 5
        assert (l['color'], l['shape'], rr['color'], rr['shape']) == c
    test = data.generate('world', 200, split='test')
    assert test.images.shape[0] == 400
    for r in test.rows:
        assert tuple(r['combo_0']) in te and tuple(r['combo_1']) in te
        assert sorted(r['caption_0'].split()) == sorted(r['caption_1'].split()) and r['caption_0'] != r['caption_1']
        assert data.world_swaps(r['combo_0'])[r['tag']] == tuple(r['combo_1'])
    ds = data.WinogroundDataset(test)
    assert ds[0]['image_0'].shape == (3, 32, 32)


def test_general_options_combine():
    s = data.generate('shapes', 10, image_size=64, placement='free', objects=(2, 3), task='vqa',
                      question_mix={'count': 1, 'exists': 1}, colors={'pink': (255, 100, 200), 'gray': (90, 90, 90)},
                      shapes=('circle', 'cross'), background=(10, 20, 30), noise=0)
    assert s.images.shape == (10, 64, 64, 3)
    assert all(2 <= len(r['objects']) <= 3 for r in s.rows)
    assert {ob['color'] for r in s.rows for ob in r['objects']} <= {'pink', 'gray'}
    g = data.generate('shapes', 5, grid=3, objects=5, size_words=None, radius=(2, 3))
    assert all(len({ob['cell'] for ob in r['objects']}) == 5 for r in g.rows)
    with pytest.raises(ValueError, match='unknown option'): data.generate('shapes', 1, colour='red')
    with pytest.raises(ValueError, match='unknown preset'): data.generate('nope', 1)
    with pytest.raises(ValueError, match='distinct cells'): data.generate('shapes', 1, objects=5)


# ---------------------------------------------------------------- readers
def test_retrieval_dataset_and_caption_views(tmp_path):
    d = data.make_synthetic(tmp_path, 'shapes', splits={'test': 20})
    ds = data.RetrievalDataset(d, 'test')
    mem = data.RetrievalDataset(data.generate('shapes', 20, split='test'))
    assert len(ds) == 20 and len(ds.captions) == 100 and ds.caption_image[:6] == [0]*5 + [1]
    torch.testing.assert_close(ds[4]['image'], mem[4]['image'])
    assert ds[4]['captions'] == mem[4]['captions'] and ds[4]['index'] == 4
    allv = ds.caption_view('all')
    assert len(allv) == 100 and allv[12]['index'] == 2 and allv[12]['caption'] == ds.captions[12]
    rnd = ds.caption_view('random', seed=1)
    assert len(rnd) == 20
    torch.manual_seed(0); a = [rnd[i]['caption_index'] for i in range(20)]
    torch.manual_seed(0); b = [rnd[i]['caption_index'] for i in range(20)]
    assert a == b and all(ds.caption_image[k] == i for i, k in enumerate(a))
    rnd.set_epoch(3); c = [rnd[i]['caption'] for i in range(20)]; rnd.set_epoch(3)
    assert c == [rnd[i]['caption'] for i in range(20)]
    with pytest.raises(ValueError, match="'random' or 'all'"): ds.caption_view('every')


def test_vqa_dataset_vocab_and_targets(tmp_path):
    d = data.make_synthetic(tmp_path, 'shapesvqa', splits={'train': 30, 'test': 10})
    tr, te = data.VQADataset(d, 'train'), data.VQADataset(d, 'test')
    assert tr.answer_vocab == te.answer_vocab == data.vqa_answers(data.preset_options('shapesvqa'))
    it = te[0]
    assert it['target'].shape == (15,) and it['target'].sum() == 1 and te.answer_vocab[it['label']] == it['answer' if 'answer' in it else 'answers'][0]
    rows = [dict(answers=['a']*2 + ['b']*8), dict(answer='c')]
    assert data.build_answer_vocab(rows) == ['b', 'a', 'c']
    assert data.build_answer_vocab(rows, min_count=2) == ['b', 'a']


def test_mcqa_and_instruction_datasets(tmp_path):
    d = data.make_synthetic(tmp_path, 'sciqa', splits={'train': 30})
    ds = data.MCQADataset(d, 'train', transform=data.image_transform(size=16))
    shapes = {ds[i]['image'].shape for i in range(len(ds))}
    assert shapes == {(3, 16, 16)}
    noimg = next(i for i, r in enumerate(ds.rows) if r['image'] is None)
    assert ds[noimg]['has_image'] is False and ds[noimg]['image'].abs().sum() == 0
    b = data.collate([ds[i] for i in range(8)])
    assert b['image'].shape == (8, 3, 16, 16) and b['has_image'].dtype == torch.bool and b['answer'].dtype == torch.long
    p = tmp_path/'ins'; (p/'images').mkdir(parents=True)
    from PIL import Image
    Image.fromarray(data.generate('shapes', 1).images[0]).save(p/'images'/'x.png')
    data.write_jsonl(p/'train.jsonl', [{'id': '1', 'image': 'x.png', 'conversations': [{'from': 'human', 'value': '<image>\nWhat?'}, {'from': 'gpt', 'value': 'A.'}]},
                                       {'id': '2', 'image': None, 'conversations': [{'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Hello'}]}])
    ins = data.InstructionDataset(p)
    assert ins[0]['image'].shape == (3, 32, 32) and ins[1]['image'] is None
    b = data.collate([ins[0], ins[1]])
    assert isinstance(b['image'], list) and b['id'] == ['1', '2']


def test_transforms():
    x = np.zeros((10, 30, 3), np.uint8); x[..., 1] = 255
    t = data.image_transform(size=12, mean=data.CLIP_MEAN, std=data.CLIP_STD, pad_to_square=True)
    y = t(x)
    assert y.shape == (3, 12, 12)
    torch.testing.assert_close(y[:, 0, 6], torch.zeros(3), atol=1e-3, rtol=0)   # padding = mean -> 0 after normalisation
    from PIL import Image
    torch.testing.assert_close(data.to_tensor(Image.fromarray(x)), data.to_tensor(x))
    assert data.image_transform(size=8, crop=True)(x).shape == (3, 8, 8)
    sq = data.expand2square(torch.ones(3, 2, 4), fill=(0, 0, 0))
    assert sq.shape == (3, 4, 4) and sq[:, 0].sum() == 0 and sq[:, 1:3].sum() == 24
    with pytest.raises(ValueError, match='both mean and std'): data.image_transform(mean=(0.5,)*3)


def test_collate_with_tokenizer(tmp_path):
    ds = data.RetrievalDataset(data.generate('shapes', 6))
    tok = lambda texts: torch.tensor([len(t.split()) for t in texts])
    b = data.collate_retrieval([ds[i] for i in range(4)], tokenize=tok)
    assert b['image'].shape == (4, 3, 32, 32) and b['captions_tokens'].shape == (20,) and b['index'].tolist() == [0, 1, 2, 3]
    cv = ds.caption_view('all')
    b = data.collate([cv[i] for i in range(3)], tokenize=tok)
    assert b['caption_tokens'].shape == (3,) and len(b['caption']) == 3
    from torch.utils.data import DataLoader
    dl = DataLoader(cv, batch_size=5, collate_fn=data.collate, num_workers=0)
    assert next(iter(dl))['image'].shape == (5, 3, 32, 32)


def test_import_is_light():
    import subprocess, sys
    code = "import sys, vlrepro.data; bad = [m for m in ('deepspeed', 'transformers', 'open_clip', 'matplotlib') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == '[]'
