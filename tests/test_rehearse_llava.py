"Rehearsal of the 12_crossget_llava parameter sets: plans, stand-ins in the official layouts, LLaVA eval data script."
import json, subprocess, sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip('transformers')
from vlrepro import crossget as cg, crossget_llava as cgl
from vlrepro import core, data, models
from vlrepro.rehearse import make_plan, check_recipe_batch

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
SETS = sorted((REPO/'nbs'/'params').glob('12_crossget_llava.*.yaml'))
BENCHES = list(cgl.LLAVA_EVAL_FILES)


def script(name, *args):
    return subprocess.run([sys.executable, f'data_scripts/{name}', *map(str, args)], cwd=REPO, capture_output=True, text=True)


@pytest.fixture(scope='module')
def upstream(tmp_path_factory):
    "LLaVA's playground/data/eval layout, 4 questions per benchmark."
    return cgl.write_llava_eval_upstream(tmp_path_factory.mktemp('llava')/'eval', n=4)


# --- the parameter sets -------------------------------------------------------------------------------------------

def test_one_training_per_model_size():
    "Issue 14.4: the 7B and 13B sets train once and evaluate all ten benchmarks; the per-benchmark sets only evaluate it."
    sets = {p.name.split('.')[1]: yaml.safe_load(p.read_text()) for p in SETS}
    train = sorted(k for k, s in sets.items() if s.get('data_root') and not s.get('crossget_weights'))
    assert train == ['13b', '7b']
    for size in ('7b', '13b'):
        assert sets[size]['eval_benchmarks'] == cg.LLAVA_METRICS and sets[size]['deepspeed'] == 'zero3'
        for b in cg.LLAVA_METRICS:
            s = sets[f'{b}-{size}']
            assert s['eval_benchmarks'] == [b] and s['paper_row'] == size.upper()
            assert s['crossget_weights'] == f'runs/12_crossget_llava.{size}/train/model.pt'   # the --out the size set documents
            assert s['model'] == sets[size]['model'] and 'train_name' not in s and 'nproc' not in s
    assert len(sets) == 23


def test_13b_cross_loss_weight():
    "Issue 14.4: the official code uses a cross-token loss weight of 0.1 for 13B (0.001 for 7B)."
    assert yaml.safe_load((REPO/'nbs/params/12_crossget_llava.13b.yaml').read_text())['cross_loss_weight'] == 0.1
    assert yaml.safe_load((REPO/'nbs/params/12_crossget_llava.7b.yaml').read_text())['cross_loss_weight'] == 0.001


@pytest.mark.parametrize('path', SETS, ids=lambda p: p.stem)
def test_plan_of_every_set(path):
    p = make_plan(path)
    s = yaml.safe_load(path.read_text())
    assert set(p.overrides) <= {'bench_preset', 'bench_batch', 'bench_repeats', 'bench_new_tokens', 'device', 'precision',
                                'eval_limit', 'max_new_tokens', 'per_device_batch_size', 'nproc', 'base_steps', 'steps',
                                'n_train_vqa', 'n_train_mc', 'n_test_vqa', 'n_test_mc'}   # sizes and device only, no paths
    if p.branch == 'cpu-demo': assert p.trains and p.rows == [] and p.nproc == 1; return
    size = s['paper_row']
    assert (f'CrossGET {size}', 'throughput_ratio') in p.rows
    registry = {(r.setting, r.metric) for r in core.paper_numbers('crossget')}
    assert set(p.rows) <= registry
    if p.branch == 'llava-train':
        assert p.nproc == 2 and p.overrides['nproc'] == 2 and check_recipe_batch(p.recipe_batch).endswith('(recipe 128)')
        assert len(p.rows) == 2 * 8 + 1                         # VQAv2 / VizWiz test-dev are scored by their servers
    else:
        assert p.branch == 'llava-eval' and not p.trains and p.recipe_batch is None
        b = s['eval_benchmarks'][0]
        assert p.metric == (f'CrossGET/{b}_answers' if b in ('vqav2', 'vizwiz') else f'CrossGET/{b}')


# --- LLaVA eval data: data_scripts/get_llava_eval.py ----------------------------------------------------------------

def test_get_llava_eval_all_benchmarks(upstream, tmp_path):
    p = script('get_llava_eval.py', '--bench', 'all', '--src', upstream, '--root', tmp_path/'d', '--dry-run')
    assert p.returncode == 0, p.stderr
    assert 'gqa: dry run' in p.stdout and not (tmp_path/'d').exists()
    p = script('get_llava_eval.py', '--bench', 'all', '--src', upstream, '--root', tmp_path/'d')
    assert p.returncode == 0, p.stderr
    counts = {b: data.read_manifest(tmp_path/'d'/b)['counts']['test'] for b in BENCHES}
    assert counts == dict(vqav2=4, gqa=4, vizwiz=4, sqa=4, textvqa=4, pope=12, mme=12, mmbench=4, mmbench_cn=4, seed=4)
    rows = {b: data.read_jsonl(tmp_path/'d'/b/'test.jsonl') for b in BENCHES}   # images resolve under images/
    gqa = json.loads((upstream/'gqa/data/testdev_balanced_questions.json').read_text())
    assert [r['answers'] for r in rows['gqa']] == [[gqa[r['id']]['answer']] for r in rows['gqa']]
    q0 = json.loads((upstream/'textvqa/llava_textvqa_val_v051_ocr.jsonl').read_text().splitlines()[0])
    assert rows['textvqa'][0]['prompt'] == q0['text'] and 'Reference OCR token' in q0['text']   # LLaVA's exact prompt
    assert len(rows['textvqa'][0]['answers']) == 10
    assert all(r['answers'] == [] for r in rows['vqav2'] + rows['vizwiz'])                   # test-dev: the servers
    labels = [json.loads(l)['label'] for l in (upstream/'pope/coco/coco_pope_popular.json').read_text().splitlines()]
    assert [r['answers'][0] for r in rows['pope'] if r['category'] == 'popular'] == labels   # in order, per category
    assert {r['category'] for r in rows['mme']} == {'existence', 'artwork', 'code_reasoning'}
    assert all(r['answers'][0] in ('Yes', 'No') for r in rows['mme'])
    sqa = rows['sqa'][0]
    assert sqa['prompt'].endswith(cgl.LETTER_ANSWER) and '<image>' not in sqa['prompt'] and isinstance(sqa['answer'], int)
    assert len(rows['seed']) == 4                                                          # the video question is left out
    mmb = rows['mmbench']
    assert [len(r['choices']) for r in mmb] == [4, 3, 4, 3] and (tmp_path/'d/mmbench/images'/mmb[0]['image']).is_file()
    assert mmb[1]['hint'] == '' and mmb[0]['hint']


def test_get_llava_eval_errors(upstream, tmp_path):
    assert script('get_llava_eval.py', '--bench', 'coco', '--src', upstream, '--root', tmp_path).returncode == 2
    p = script('get_llava_eval.py', '--bench', 'gqa', '--root', tmp_path)
    assert p.returncode == 2 and 'pass --src' in p.stderr
    bad = tmp_path/'eval'; (bad/'pope/coco').mkdir(parents=True)
    (bad/'pope/llava_pope_test.jsonl').write_text((upstream/'pope/llava_pope_test.jsonl').read_text())
    for c in ('adversarial', 'popular', 'random'):
        (bad/f'pope/coco/coco_pope_{c}.json').write_text((upstream/f'pope/coco/coco_pope_{c}.json').read_text())
    (bad/'pope/coco/coco_pope_random.json').write_text('')
    p = script('get_llava_eval.py', '--bench', 'pope', '--src', bad, '--root', tmp_path/'d', '--no-check-images')
    assert p.returncode == 2 and "coco_pope_random.json has 0 labels" in p.stderr and 'Traceback' not in p.stderr
    with pytest.raises(FileNotFoundError, match='is not a folder'): cgl.convert_llava_eval('mme', bad, tmp_path/'x')


def test_records_and_scores_from_converted_files(upstream, tmp_path):
    for b in BENCHES: cgl.convert_llava_eval(b, upstream, tmp_path/b)
    mmb = cgl.llava_benchmark_records(tmp_path, 'mmbench', 32)
    assert len(mmb) == 4 + 3 + 4 + 3                         # every circular rotation (LLaVA's --all-rounds)
    right = [r['choices'][r['answer']] for r in mmb if r['id'] == '1000']
    assert len(set(right)) == 1                              # the right option follows the rotation
    answers = ['ABCD'[r['answer']] for r in mmb]
    assert cgl.score_benchmark('mmbench', mmb, answers)['mmbench'] == 100.0
    answers[1] = 'A' if answers[1] != 'A' else 'B'             # one rotation wrong: the whole question counts wrong
    assert cgl.score_benchmark('mmbench', mmb, answers)['mmbench'] == 75.0
    cn = cgl.llava_benchmark_records(tmp_path, 'mmbench_cn', 32)
    assert cn[0]['question'].endswith('请直接回答选项字母。')
    mme = cgl.llava_benchmark_records(tmp_path, 'mme', 32)
    sc = cgl.score_benchmark('mme', mme, [r['answers'][0] for r in mme])
    assert sc == {'mme': 400.0}                               # existence + artwork; code_reasoning is cognition
    vqa = cgl.llava_benchmark_records(tmp_path, 'vqav2', 32)
    assert cgl.score_benchmark('vqav2', vqa, ['x'] * 4) == {}
    up = cgl.llava_upload('vizwiz', cgl.llava_benchmark_records(tmp_path, 'vizwiz', 32), ['Unanswerable.'] * 4)
    assert up[0] == dict(image='VizWiz_test_00000000.jpg', answer='unanswerable')
    pope = cgl.llava_benchmark_records(tmp_path, 'pope', 32)
    assert cgl.score_benchmark('pope', pope, [r['answers'][0].capitalize() for r in pope])['pope'] == 100.0


def test_mme_perception_leaves_out_cognition():
    "Before: 'perception' summed every subtask, so a file with MME's cognition subtasks inflated the perception score."
    sc = cgl.mme_scores(['Yes', 'No', 'Yes', 'No'], ['yes', 'no', 'yes', 'no'], ['a', 'a', 'b', 'b'],
                       ['existence', 'existence', 'code_reasoning', 'code_reasoning'])
    assert sc['perception'] == 200.0 and sc['cognition'] == 200.0


def test_mmbench_scored_circular():
    "Before: MMBench was scored as plain accuracy over one ordering of the options, not CircularEval."
    recs = [dict(id='7', answer=(1 - t) % 2, num_choices=2, round=t) for t in range(2)]
    assert cgl.score_benchmark('mmbench', recs, ['B', 'B'])['mmbench'] == 0.0      # right in round 0 only


# --- stand-in checkpoints through the real loaders ----------------------------------------------------------------

def test_llava_hf_standin_roundtrip(tmp_path):
    "The tiny llava-hf folder loads with models.load_hf / load_tokenizer / AutoProcessor; a fine-tune's model.pt loads back."
    d = tmp_path/'ckpt/llava-1.5-7b-hf'
    sd = cgl.write_llava_hf(d, seed=3, r=13)
    assert {'config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'processor_config.json'} <= {p.name for p in d.iterdir()}
    m, tok = models.load_hf('llava', d), models.load_tokenizer(d)
    assert tok.convert_tokens_to_ids('<image>') == m.config.image_token_id == 255 and tok.bos_token_id == 1
    from transformers import AutoProcessor
    assert type(AutoProcessor.from_pretrained(d)).__name__ == 'LlavaProcessor'
    torch.save(sd, tmp_path/'model.pt')
    ft = cgl.load_crossget_llava(d, tmp_path/'model.pt', r=13)
    assert cg.is_patched(ft) and cgl.llava_visual_tokens(ft) == 26
    assert all(torch.equal(v, sd[k]) for k, v in ft.state_dict().items())
    base_sd = m.state_dict()
    assert all(torch.equal(base_sd[k], sd[k]) for k in base_sd)                 # the fine-tune shares the base's other weights
    with pytest.raises(ValueError, match='does not fit'): cgl.load_crossget_llava(d, tmp_path/'model.pt', r=0)


def test_train_task_reads_converted_mix67k(tmp_path):
    "make_llava_mix67k.py on a tiny mix665k, then llava_train_task with an absolute train_name (how a [data] parameter arrives)."
    cgl.write_llava_mix665k(tmp_path/'raw', n=90)
    p = script('make_llava_mix67k.py', '--src', tmp_path/'raw', '--root', tmp_path/'data')
    assert p.returncode == 0, p.stderr
    cgl.write_llava_hf(tmp_path/'m')
    task = cgl.llava_train_task(str(tmp_path/'m'), 'unused', str(tmp_path/'data/llava_mix67k'), r_vision=13,
                               gradient_checkpointing=False)
    assert len(task['train_data']) == 8                                        # 9 rows, the text-only one left out
    batch = task['collate_fn']([task['train_data'][i] for i in range(2)])
    loss, logs = task['loss_fn'](task['model'], batch)
    assert torch.isfinite(loss) and 'cross' in logs


def test_llava_answers_resume(tmp_path):
    "A rerun reads the answers already kept and generates only the rest (a line cut by a kill is dropped)."
    calls = []
    real = cgl.llava_generate
    try:
        cgl.llava_generate = lambda m, t, recs, **kw: calls.append(len(recs)) or [f"a{r['id']}" for r in recs]
        recs = [dict(id=str(i)) for i in range(5)]
        f = tmp_path/'ans.jsonl'
        assert cgl.llava_answers(f, None, None, recs[:3], chunk=2) == ['a0', 'a1', 'a2'] and calls == [2, 1]
        f.write_text(f.read_text() + '{"key": "3#0", "ans')                    # killed mid-write
        assert cgl.llava_answers(f, None, None, recs, chunk=2) == [f'a{i}' for i in range(5)] and calls == [2, 1, 2]
        assert cgl.llava_answers(f, None, None, recs, chunk=2) == [f'a{i}' for i in range(5)] and calls == [2, 1, 2]
    finally: cgl.llava_generate = real


def test_plan_writes_standins(tmp_path):
    "An eval-only set: the plan writes the model, the fine-tune's weights and the converted benchmark where the set points."
    path = REPO/'nbs/params/12_crossget_llava.textvqa-13b.yaml'
    p = make_plan(path, tmp_path)
    s = yaml.safe_load(path.read_text())
    assert (tmp_path/s['model']/'config.json').is_file() and (tmp_path/s['crossget_weights']).is_file()
    assert len(data.read_jsonl(tmp_path/s['data_root']/'textvqa'/'test.jsonl')) == 4
    cgl.load_crossget_llava(tmp_path/s['model'], tmp_path/s['crossget_weights'], r=s['r_vision'])
    assert not p.trains and p.rows == [('LLaVA-1.5-13B', 'textvqa'), ('CrossGET 13B', 'textvqa'), ('CrossGET 13B', 'throughput_ratio')]
