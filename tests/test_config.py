"Typed pipeline configs: one class per notebook's parameters, checked once; vlrepro run checks YAMLs against it."
import dataclasses
from pathlib import Path

import pytest
import yaml

from vlrepro import cli as C, core, run as R

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'
PIPELINES = sorted(C.CONFIGS)


def _type_str(cls, name):
    import typing
    return core._type_name(typing.get_type_hints(cls)[name]).replace(' ', '')


@pytest.mark.parametrize('stem', PIPELINES)
def test_config_fields_are_the_parameters_cell(stem):
    "Names, defaults and types of the config are exactly the notebook's parameters cell (so every YAML keeps working)."
    cls, params = C.config_class(stem), R.notebook_parameters(NBS / f'{stem}.ipynb')
    assert cls.names() == list(params)
    default = cls()
    for n, p in params.items():
        assert getattr(default, n) == p.default, n
        assert _type_str(cls, n) == p.type, n


@pytest.mark.parametrize('path', [p for s in PIPELINES for p in sorted((NBS / 'params').glob(f'{s}.*.yaml'))], ids=lambda p: p.name)
def test_every_param_set_round_trips(path):
    "Each YAML set builds its config; asdict gives the set's values back (ints of float fields as floats)."
    raw = yaml.safe_load(path.read_text())
    cfg = C.config_class(path.name.split('.')[0]).from_params(raw, f' in {path.name}')
    d = cfg.asdict()
    assert {k: d[k] for k in raw} == raw
    assert type(cfg).from_params(d) == cfg


@pytest.mark.parametrize('stem', PIPELINES)
def test_unknown_key_and_bad_type(stem):
    cls = C.config_class(stem)
    name = cls.names()[2]
    with pytest.raises(ValueError, match=f"unknown parameter '{name}x' in s.yaml \\(did you mean '{name}'\\?\\)"):
        cls.from_params({name + 'x': 1}, ' in s.yaml')
    f = next(f for f in dataclasses.fields(cls) if _type_str(cls, f.name) == 'int')
    with pytest.raises(ValueError, match=f"parameter '{f.name}' must be int, got 'two'"):
        cls.from_params({f.name: 'two'})


def test_laps_values_name_the_field():
    from vlrepro import laps, laps_retrieval
    with pytest.raises(ValueError, match=r"sparse_ratio must lie in \(0, 1\], got 1.5"): laps_retrieval.Config(sparse_ratio=1.5)
    with pytest.raises(ValueError, match="vit_type must be 'vit' or 'swin', got 'vitt'"): laps_retrieval.Config(vit_type='vitt')
    with pytest.raises(ValueError, match="select_on must be 'test' or 'val'"): laps_retrieval.Config(select_on='train')
    with pytest.raises(ValueError, match="set data_root to the folder holding coco/"): laps_retrieval.Config(dataset='coco')
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"): laps_retrieval.Config(batch_size=0)


def _bad_set(tmp_path, stem, **kw):
    good = sorted((NBS / 'params').glob(f'{stem}.*.yaml'))[0]
    p = tmp_path / f'{stem}.bad.yaml'
    p.write_text(yaml.safe_dump({**yaml.safe_load(good.read_text()), **kw}))
    return p


@pytest.mark.parametrize('stem', PIPELINES)
def test_run_checks_a_set_against_the_config_before_a_kernel(tmp_path, stem):
    "A wrong key, type or value in a set fails in `vlrepro run --dry-run` with the notebook config's own message."
    cls = C.config_class(stem)
    name = cls.names()[2]
    for kw in ({name + 'x': 1}, {next(n for n in cls.names() if _type_str(cls, n) == 'int'): 'two'}):
        p = _bad_set(tmp_path, stem, **kw)
        with pytest.raises(ValueError) as want: cls.from_params(yaml.safe_load(p.read_text()), f' in {p}')
        with pytest.raises(ValueError) as got: R.run_notebook(stem, param_file=p, dry_run=True, config_of=C.config_class)
        assert str(got.value) == str(want.value)


def test_run_checks_laps_values_and_p_overrides(tmp_path):
    p = _bad_set(tmp_path, '30_laps', sparse_ratio=2.0)
    with pytest.raises(ValueError, match=r"sparse_ratio must lie in \(0, 1\], got 2.0; e.g. sparse_ratio=0.5 in "): R.run_notebook('30_laps', param_file=p, dry_run=True, config_of=C.config_class)
    with pytest.raises(ValueError, match=r"unknown parameter 'sparse_ration' given with -p \(did you mean 'sparse_ratio'\?\)"):
        R.run_notebook('30_laps', params={'sparse_ration': '0.3'}, dry_run=True, config_of=C.config_class)
    with pytest.raises(ValueError, match=r"select_on must be 'test' or 'val', got 'train' given with -p"):
        R.run_notebook('30_laps', params={'select_on': 'train'}, dry_run=True, config_of=C.config_class)


def test_crossget_das_ademvl_values_name_the_field():
    from vlrepro import ademvl_sqa, crossget_clip, das
    with pytest.raises(ValueError, match="finetunes entries are 'method:rv:rl'.*got 'crossget:16'"): crossget_clip.Config(finetunes=['crossget:16'])
    with pytest.raises(ValueError, match="preset='full' needs real data"): crossget_clip.Config(preset='full')
    assert crossget_clip.Config(preset='cpu-demo', finetune_steps=7).finetune_steps == 7     # a given value wins over the preset
    with pytest.raises(ValueError, match='search_epochs=3 must equal das_epoch=5'): das.Config(das_epoch=5)
    with pytest.raises(ValueError, match="model='tiny-vilt' runs the synthetic ShapesVQA demonstration only"): das.Config(task='vqav2')
    with pytest.raises(ValueError, match="skip_list must be a list of block indices like"): das.Config(model='vilt', task='vqav2', skip_list='[1,')
    with pytest.raises(ValueError, match=r"drop_ratio must be in \[0, 1\)"): ademvl_sqa.Config(drop_ratio=1.5)
    with pytest.raises(ValueError, match="task must be one of"): ademvl_sqa.Config(data_root='data', task='vqa')
    assert ademvl_sqa.Config(preset='smoke', steps_c=99).steps_c == 10                      # ADEM-VL's preset sets its knobs


# issue 15: no library function takes more than 12 parameters (runners take their typed config instead)
OVER_12:set = set()


def test_no_new_function_takes_more_than_12_parameters():
    import ast
    over = set()
    for f in sorted((ROOT / 'vlrepro').glob('*.py')):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = n.args
                k = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                k -= bool(a.args and a.args[0].arg in ('self', 'cls'))
                if k > 12: over.add(f'{f.stem}.{n.name}')
    assert over == OVER_12, (f"new: {sorted(over - OVER_12)}; now at most 12 (drop them from OVER_12): {sorted(OVER_12 - over)}")


def test_llava_and_vqascore_values_name_the_field():
    from vlrepro import crossget_llava, vqascore_eval
    L, V = crossget_llava.Config, vqascore_eval.Config
    with pytest.raises(ValueError, match="deepspeed must be one of '', 'zero2', 'zero3', got 'zero1'"): L(deepspeed='zero1')
    with pytest.raises(ValueError, match="bench_preset must be one of 'tiny', 'cpu-vitl', '7b', '13b', got '70b'"): L(bench_preset='70b')
    with pytest.raises(ValueError, match=r"eval_benchmarks \['gqa'\] need real data: set data_root"): L(eval_benchmarks=['gqa'])
    with pytest.raises(ValueError, match=r"eval_benchmarks: unknown \['gqaa'\] with data_root 'data'; choose from"):
        L(data_root='data', eval_benchmarks=['gqa', 'gqaa'])
    with pytest.raises(ValueError, match="per_device_batch_size must be at least 1, got 0"): L(per_device_batch_size=0)
    with pytest.raises(ValueError, match=r"warmup_ratio must lie in \[0, 1\), got 1.0"): L(warmup_ratio=1.0)
    assert L(model='ckpt/llava-1.5-13b-hf', data_root='data', eval_benchmarks=['gqa']).size_tag == '13B'
    assert L(data_root='data', eval_benchmarks=['gqa'], paper_row='7B').size_tag == '7B'
    with pytest.raises(ValueError, match="preset must be one of 'tiny', 'cpu-demo', 'full', got 'xl'"): V(preset='xl')
    with pytest.raises(ValueError, match="style must be one of .*got 'chat'"): V(style='chat')
    with pytest.raises(ValueError, match=r"scoring a folder \(images_dir\) needs a real model: set preset='full'"): V(images_dir='gen')
    with pytest.raises(ValueError, match="train_stage=2 trains the full-size model: set preset='full'"): V(train_stage=2)
    with pytest.raises(ValueError, match="train_stage must be one of 0, 1, 2, got 3"): V(preset='full', train_stage=3)
    with pytest.raises(ValueError, match="preset 'full' with train_stage=2 needs base_model, vision_tower_path, data_json, "
                                         "image_folder, pretrain_mm_mlp_adapter"): V(preset='full', train_stage=2)
    with pytest.raises(ValueError, match="prompts_file is read only with images_dir"): V(prompts_file='p.csv')
    assert V(preset='cpu-demo', clip_steps=5).steps == dict(clip_steps=5, stage1_steps=300, stage2_steps=600)


def test_run_checks_llava_and_vqascore_values(tmp_path):
    "A set's bad value fails `vlrepro run --dry-run` with the config's message and the set's name."
    p = _bad_set(tmp_path, '12_crossget_llava', deepspeed='zero1')
    with pytest.raises(ValueError, match=f"deepspeed must be one of .*got 'zero1' in {p}"):
        R.run_notebook('12_crossget_llava', param_file=p, dry_run=True, config_of=C.config_class)
    with pytest.raises(ValueError, match="scoring a folder .* given with -p"):
        R.run_notebook('50_vqascore', params={'images_dir': 'gen'}, dry_run=True, config_of=C.config_class)
