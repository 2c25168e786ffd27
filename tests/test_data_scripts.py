"""data_scripts/: the CLIs over vlrepro.data, on small files the tests write in each dataset's real format."""
import importlib.util, json, subprocess, sys
from pathlib import Path

import pytest
from PIL import Image

from vlrepro import data

SCRIPTS = Path(__file__).resolve().parents[1]/'data_scripts'


def load(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS/f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def run(name, *args):
    "Run a script's main in-process the way its __main__ does; return (exit status)."
    return data.script_main(load(name).main, [str(a) for a in args])


def img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.generate('shapes', 1).images[0]).save(path)


def manifest(d):
    m = json.loads((d/'MANIFEST.json').read_text())
    assert {'source', 'license', 'date', 'counts'} <= set(m)
    return m


def test_every_script_has_help_and_downloads_table(capsys):
    scripts = [SCRIPTS/'make_synthetic.py'] + sorted(SCRIPTS.glob('get_*.py'))     # the dataset scripts (STYLE §7)
    assert len(scripts) == 10
    listed = (SCRIPTS/'README.md').read_text()
    missing = [f.name for f in sorted(SCRIPTS.glob('*.py')) if f'`{f.name}' not in listed]
    assert not missing, f"data_scripts/README.md does not list {missing}"
    for f in scripts:
        with pytest.raises(SystemExit) as e: load(f.stem).main(['--help'])
        out = capsys.readouterr().out
        assert e.value.code == 0 and '--root' in out and '--dry-run' in out, f.name
        if f.name.startswith('get_'):
            mod = load(f.stem)
            assert mod.DOWNLOADS and all(u.startswith('http') and (h is None or len(h) == 64) for u, h in mod.DOWNLOADS.values())


def test_make_synthetic_cli(tmp_path, capsys):
    assert run('make_synthetic', '--root', tmp_path, '--preset', 'shapes', '--splits', 'train=8,test=4', '--dry-run') == 0
    assert 'dry run' in capsys.readouterr().out and not (tmp_path/'shapes').exists()
    assert run('make_synthetic', '--root', tmp_path, '--preset', 'shapes', '--splits', 'train=8,test=4', '--seed', '3') == 0
    d = tmp_path/'shapes'
    assert manifest(d)['counts'] == {'train': 8, 'test': 4}
    stamp = (d/'train.jsonl').stat().st_mtime_ns
    assert run('make_synthetic', '--root', tmp_path, '--preset', 'shapes', '--splits', 'train=8,test=4', '--seed', '3') == 0
    assert (d/'train.jsonl').stat().st_mtime_ns == stamp                        # safe rerun: nothing rewritten
    assert len(data.RetrievalDataset(d, 'test')) == 4
    assert run('make_synthetic', '--root', tmp_path, '--preset', 'tiles', '--splits', 'train=3',
               '--set', 'image_size=64', '--set', 'patch_size=8', '--name', 'tiles64') == 0
    assert data.RetrievalDataset(tmp_path/'tiles64')[0]['image'].shape == (3, 64, 64)
    assert run('make_synthetic', '--root', tmp_path, '--set', 'colour=red') == 2
    assert 'unknown option' in capsys.readouterr().err


def test_make_synthetic_default_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv('VLREPRO_DATA', str(tmp_path/'envroot'))
    assert run('make_synthetic', '--preset', 'world', '--splits', 'train=2,test=2') == 0
    assert len(data.WinogroundDataset(tmp_path/'envroot'/'world', 'test')) == 2


def test_get_flickr30k_and_coco(tmp_path, capsys):
    src = tmp_path/'raw'
    for f in ('1.jpg', '2.jpg', '3.jpg'): img(src/'flickr30k-images'/f)
    sents = lambda i: [{'raw': f' A caption {j} of image {i}. ', 'tokens': ['a'], 'imgid': i, 'sentid': 5*i + j} for j in range(5)]
    (src/'dataset_flickr30k.json').write_text(json.dumps({'dataset': 'flickr30k', 'images': [
        {'filename': f'{i}.jpg', 'imgid': i, 'split': sp, 'sentids': [], 'sentences': sents(i)}
        for i, sp in ((1, 'train'), (2, 'val'), (3, 'test'))]}))
    assert run('get_flickr30k', '--root', tmp_path/'data', '--src', src, '--dry-run') == 0
    assert 'train 1, val 1, test 1' in capsys.readouterr().out and not (tmp_path/'data').exists()
    for _ in range(2):                                                           # rerun is safe
        assert run('get_flickr30k', '--root', tmp_path/'data', '--src', src) == 0
    d = tmp_path/'data'/'flickr30k'
    assert (d/'images').is_symlink() and manifest(d)['counts'] == {'train': 1, 'val': 1, 'test': 1}
    ds = data.RetrievalDataset(d, 'test')
    assert ds[0]['captions'][0] == 'A caption 0 of image 3.' and ds[0]['image'].shape == (3, 32, 32)

    coco = tmp_path/'coco'
    img(coco/'train2014'/'COCO_train2014_000000000001.jpg'); img(coco/'val2014'/'COCO_val2014_000000000002.jpg')
    (coco/'dataset_coco.json').write_text(json.dumps({'dataset': 'coco', 'images': [
        {'filepath': 'train2014', 'filename': 'COCO_train2014_000000000001.jpg', 'imgid': 0, 'cocoid': 1, 'split': 'train', 'sentences': sents(0)},
        {'filepath': 'val2014', 'filename': 'COCO_val2014_000000000002.jpg', 'imgid': 1, 'cocoid': 2, 'split': 'restval', 'sentences': sents(1)}]}))
    assert run('get_coco', '--root', tmp_path/'data', '--src', coco) == 0
    rows = data.read_jsonl(tmp_path/'data'/'coco'/'train.jsonl')
    assert [r['image'] for r in rows] == ['train2014/COCO_train2014_000000000001.jpg', 'val2014/COCO_val2014_000000000002.jpg']
    assert run('get_coco', '--root', tmp_path/'data', '--src', coco, '--restval', 'restval', '--name', 'coco_rv') == 0
    assert manifest(tmp_path/'data'/'coco_rv')['counts'] == {'train': 1, 'restval': 1}


def test_get_flickr30k_errors(tmp_path, capsys):
    assert run('get_flickr30k', '--root', tmp_path) == 2
    assert 'pass --src' in capsys.readouterr().err
    src = tmp_path/'raw'; (src/'flickr30k-images').mkdir(parents=True)
    assert run('get_flickr30k', '--root', tmp_path, '--src', src) == 2
    assert 'dataset_flickr30k.json not found' in capsys.readouterr().err
    (src/'dataset_flickr30k.json').write_text(json.dumps({'images': [{'filename': 'gone.jpg', 'split': 'test', 'sentences': [{'raw': 'x'}]}]}))
    assert run('get_flickr30k', '--root', tmp_path, '--src', src) == 2
    assert 'gone.jpg' in capsys.readouterr().err
    assert run('get_flickr30k', '--root', tmp_path, '--src', src, '--no-check-images') == 0
    (src/'dataset_flickr30k.json').write_text('{"images": [')
    assert run('get_flickr30k', '--root', tmp_path, '--src', src) == 2
    assert 'not valid JSON' in capsys.readouterr().err


def test_get_scienceqa(tmp_path):
    src = tmp_path/'sqa'
    img(src/'images'/'train'/'10'/'image.png'); img(src/'images'/'test'/'30'/'image.png')
    base = dict(task='closed choice', topic='t', category='c', skill='s', lecture='L', solution='S')
    problems = {
        '10': dict(base, question='Which color is the ball?', choices=['red', 'blue', 'green'], answer=2, hint='', image='image.png',
                   grade='grade3', subject='natural science', split='train'),
        '20': dict(base, question='Which word is a noun?', choices=['run', 'dog'], answer=1, hint='Read the words.', image=None,
                   grade='grade9', subject='language science', split='val'),
        '30': dict(base, question='Which state is highlighted?', choices=['A', 'B'], answer=0, hint='', image='image.png',
                   grade='grade7', subject='social science', split='test')}
    (src/'problems.json').write_text(json.dumps(problems))
    (src/'pid_splits.json').write_text(json.dumps({'train': ['10'], 'val': ['20'], 'test': ['30'], 'minival': ['20']}))
    (src/'captions.json').write_text(json.dumps({'captions': {'10': 'Three balls.', '30': 'A map.'}}))
    assert run('get_scienceqa', '--root', tmp_path/'data', '--src', src, '--splits', 'train,val,test,minival') == 0
    assert run('get_scienceqa', '--root', tmp_path/'data', '--src', src, '--splits', 'train,val,test,minival') == 0
    d = tmp_path/'data'/'scienceqa'
    assert manifest(d)['counts'] == {'train': 1, 'val': 1, 'test': 1, 'minival': 1}
    tr, va = data.MCQADataset(d, 'train'), data.MCQADataset(d, 'val')
    assert tr[0]['has_image'] and tr[0]['answer'] == 2 and tr.rows[0]['image'] == 'train/10/image.png'
    assert not va[0]['has_image'] and va[0]['image'].shape == (3, 32, 32) and va[0]['context'] == 'Read the words.'
    assert data.sqa_tags(va.rows[0]) == ['LAN', 'TXT', 'G7-12'] and data.sqa_tags(tr.rows[0]) == ['NAT', 'IMG', 'G1-6']
    assert data.sqa_prompt(tr.rows[0])[0].endswith('Options: (A) red (B) blue (C) green\nResponse:')
    assert tr.rows[0]['caption'] == 'Three balls.' and va.rows[0]['caption'] == ''         # captions.json found in --src
    assert data.sqa_prompt(tr.rows[0], use_caption=True)[0].startswith('Context: Three balls.\n')
    assert run('get_scienceqa', '--root', tmp_path/'data', '--src', src, '--splits', 'nosuch') == 2


def test_get_vqav2(tmp_path):
    src = tmp_path/'vqa'
    img(src/'train2014'/'COCO_train2014_000000000009.jpg'); img(src/'val2014'/'COCO_val2014_000000000042.jpg')
    img(src/'test2015'/'COCO_test2015_000000000077.jpg')
    def qa(split, qid, iid, q, answers, mc):
        return ({'image_id': iid, 'question': q, 'question_id': qid},
                {'question_id': qid, 'image_id': iid, 'multiple_choice_answer': mc, 'question_type': 'what', 'answer_type': 'other',
                 'answers': [{'answer': a, 'answer_confidence': 'yes', 'answer_id': i + 1} for i, a in enumerate(answers)]})
    tr = [qa('train', 90, 9, 'What is it?', ['cat']*7 + ['dog']*3, 'cat'), qa('train', 91, 9, 'Is it red?', ['yes']*10, 'yes')]
    va = [qa('val', 420, 42, 'How many?', ['2']*6 + ['3']*4, '2')]
    for coco, items in (('train2014', tr), ('val2014', va)):
        (src/f'v2_OpenEnded_mscoco_{coco}_questions.json').write_text(json.dumps({'questions': [q for q, _ in items]}))
        (src/f'v2_mscoco_{coco}_annotations.json').write_text(json.dumps({'annotations': [a for _, a in items]}))
    (src/'v2_OpenEnded_mscoco_test2015_questions.json').write_text(json.dumps({'questions': [{'image_id': 77, 'question': 'Why?', 'question_id': 770}]}))
    assert run('get_vqav2', '--root', tmp_path/'data', '--src', src, '--splits', 'train,val,test', '--min-answer-count', '3') == 0
    d = tmp_path/'data'/'vqav2'
    assert manifest(d)['counts'] == {'train': 2, 'val': 1, 'test': 1}
    vocab = json.loads((d/'answer_vocab.json').read_text())
    assert vocab == ['yes', 'cat', '2', '3', 'dog']                  # counts 10, 7, 6, 4, 3; sorted by count
    ds = data.VQADataset(d, 'train')
    it = ds[0]
    assert len(it['answers']) == 10 and ds.answer_vocab[it['label']] == 'cat'
    assert abs(float(it['target'][ds.answer_index['dog']]) - 1.0) < 1e-6   # 3 of 10 annotators -> min(1, 3/3)
    te = data.VQADataset(d, 'test')
    assert te[0]['answers'] == [] and te[0]['label'] == -1 and te.answer_vocab == vocab
    (src/'v2_mscoco_train2014_annotations.json').write_text(json.dumps({'annotations': [tr[0][1]]}))
    assert run('get_vqav2', '--root', tmp_path/'data', '--src', src, '--splits', 'train') == 2   # question 91 has no annotation


def test_get_llava(tmp_path, capsys):
    src = tmp_path/'llava'
    img(src/'coco'/'train2017'/'000000000001.jpg')
    items = [{'id': '000000000001', 'image': 'coco/train2017/000000000001.jpg', 'conversations': [
                 {'from': 'human', 'value': '<image>\nWhat is in the picture?'}, {'from': 'gpt', 'value': 'Two shapes.'},
                 {'from': 'human', 'value': 'Which colours?'}, {'from': 'gpt', 'value': 'Red and blue.'}]},
             {'id': 'alpaca_1', 'model': '', 'conversations': [{'from': 'human', 'value': 'Say hi.'}, {'from': 'gpt', 'value': 'Hi.'}]}]
    (src/'llava_v1_5_mix665k.json').write_text(json.dumps(items))
    assert run('get_llava', '--root', tmp_path/'data', '--src', src, '--dry-run') == 0
    assert 'train 2' in capsys.readouterr().out
    assert run('get_llava', '--root', tmp_path/'data', '--src', src, '--name', 'llava_mix665k') == 0
    assert run('get_llava', '--root', tmp_path/'data', '--src', src, '--name', 'llava_mix665k') == 0
    d = tmp_path/'data'/'llava_mix665k'
    ds = data.InstructionDataset(d)
    assert ds[0]['image'].shape == (3, 32, 32) and ds[0]['conversations'][0]['value'].startswith('<image>\n')
    assert ds[1]['image'] is None and len(ds) == 2
    (src/'bad.json').write_text(json.dumps([{'id': 'x', 'conversations': [{'from': 'human'}]}]))
    assert run('get_llava', '--root', tmp_path/'data', '--src', src, '--json', 'bad.json') == 2
    assert 'item 0 (id x), turn 0' in capsys.readouterr().err


def test_cli_exit_status_in_subprocess(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPTS/'get_scienceqa.py'), '--root', str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith('error: pass --src') and 'Traceback' not in out.stderr
    out = subprocess.run([sys.executable, str(SCRIPTS/'make_synthetic.py'), '--root', str(tmp_path), '--preset', 'sciqa',
                          '--splits', 'train=5'], capture_output=True, text=True)
    assert out.returncode == 0 and 'wrote' in out.stdout and (tmp_path/'sciqa'/'train.jsonl').is_file()
