"Every method's `patch` adds modules in the model's own mode: a model in eval() stays in eval (no adapter dropout)."
import pytest, torch
from vlrepro import das, ademvl, laps, crossget, models
from test_ademvl import tiny_llama, tiny_clip


def _modes(m): return {mod.training for mod in m.modules()}


@pytest.mark.parametrize('train', [False, True])
def test_das_adapters_follow_the_mode(train):
    from transformers import ViltModel
    m = ViltModel(das.tiny_vilt_config()).train(train)
    das.patch(m, skip=[1], search=True)
    assert _modes(m) == {train}


@pytest.mark.parametrize('train', [False, True])
def test_ademvl_modules_follow_the_mode(train):
    llm, vt = tiny_llama().train(train), tiny_clip().train(train)
    ademvl.patch(llm, vt, down_sample_num=(64, 16))
    assert _modes(llm) == {train} and _modes(vt) == {train}


@pytest.mark.parametrize('train', [False, True])
def test_laps_head_follows_the_mode(train):
    from test_laps import tiny_model
    m = tiny_model().train(train)
    laps.patch(m, 0.5, 0.4); assert _modes(m) == {train}


def test_crossget_adds_parameters_not_modules():
    clip = models.create_open_clip('vlrepro-tiny-clip').eval()
    n = sum(1 for _ in clip.modules())
    crossget.patch(clip, rv=2)
    assert sum(1 for _ in clip.modules()) == n and _modes(clip) == {False}


@pytest.mark.parametrize('mod', ['crossget', 'das', 'laps', 'ademvl', 'vqascore'])
def test_siblings_share_one_signature_shape(mod):
    "patch / unpatch / is_patched / trainable_parameters: `model` first; trainable_parameters -> {name: nn.Parameter}."
    import importlib, inspect
    m = importlib.import_module(f'vlrepro.{mod}')
    for fn in ('patch', 'unpatch', 'is_patched', 'trainable_parameters'):
        if mod == 'vqascore' and fn != 'trainable_parameters': continue   # CLIP-FlanT5 is trained by stages, not patched
        assert next(iter(inspect.signature(getattr(m, fn)).parameters)) == 'model', (mod, fn)
    assert inspect.signature(m.trainable_parameters).return_annotation in ('dict[str, nn.Parameter]',), mod


def test_trainable_parameters_are_named_parameters_that_train():
    m = laps.LAPSModel(models.tiny_hf('laps-vit'), models.tiny_hf('laps-bert'), embed_size=16)
    m.requires_grad_(True); next(iter(m.parameters())).requires_grad_(False)
    tp = laps.trainable_parameters(m)
    assert isinstance(tp, dict) and all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in tp.values())
    assert len(tp) == sum(1 for p in m.parameters()) - 1
