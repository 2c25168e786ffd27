"Tests of vlrepro.models: tiny presets, real-size configs, local loaders, offline tokenizers."
import subprocess, sys

import pytest
import torch

from vlrepro import models
from vlrepro.models import (MODEL_PRESETS, TOKENIZER_PRESETS, build_hf, build_tokenizer, create_open_clip,
                            example_inputs, hf_config, load_hf, load_tokenizer, open_clip_state_dict_to_hf,
                            open_clip_to_hf, open_clip_tokenizer, register_open_clip_configs, save_open_clip, tiny_hf,
                            train_tokenizer)

torch.set_num_threads(1)


def _first_tensor(out):
    key = 'logits' if 'logits' in out else ('last_hidden_state' if 'last_hidden_state' in out else None)
    if key is None: key = next(k for k, v in out.items() if torch.is_tensor(v))
    return out[key]


def test_import_is_light():
    code = ("import sys, vlrepro.models; heavy = {'transformers', 'open_clip', 'tokenizers', 'deepspeed'} & "
            "set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, '-c', code], check=True)


# ---------------------------------------------------------------- open_clip

def test_tiny_clip_registered_and_shaped():
    import open_clip
    assert 'vlrepro-tiny-clip' in register_open_clip_configs()
    m = open_clip.create_model('vlrepro-tiny-clip')  # works through open_clip's own factory
    n = sum(p.numel() for p in m.parameters())
    assert 0.40e6 < n < 0.45e6  # crossget spec §7.1: ~0.42 M
    v = m.visual
    assert v.conv1.kernel_size == (4, 4) and len(v.transformer.resblocks) == 4 and v.positional_embedding.shape == (65, 64)
    assert m.token_embedding.weight.shape == (27, 64) and m.positional_embedding.shape == (24, 64)
    assert type(v.transformer.resblocks[0].mlp.gelu).__name__ == 'QuickGELU'
    assert v.transformer.resblocks[0].attn.num_heads == 2  # width 64 / head_width 32


def test_open_clip_save_load_round_trip(tmp_path):
    m = create_open_clip('vlrepro-tiny-clip')
    assert not m.training
    x, t = torch.randn(2, 3, 32, 32), torch.randint(1, 26, (2, 24))
    t[:, -1] = 26
    path = save_open_clip(m, tmp_path/'ckpt'/'tiny.pt')
    m2 = create_open_clip('vlrepro-tiny-clip', pretrained=str(path))
    with torch.no_grad():
        torch.testing.assert_close(m2.encode_image(x), m.encode_image(x), rtol=0, atol=0)
        torch.testing.assert_close(m2.encode_text(t), m.encode_text(t), rtol=0, atol=0)


def test_open_clip_torchscript_archive(tmp_path):
    # OpenAI's released CLIP files (ViT-B-16.pt, ViT-L-14.pt) are TorchScript archives; a traced model is one too
    m = create_open_clip('vlrepro-tiny-clip')
    x, t = torch.randn(2, 3, 32, 32), torch.randint(1, 26, (2, 24))
    t[:, -1] = 26
    torch.jit.save(torch.jit.trace(m, (x, t), check_trace=False), tmp_path/'jit.pt')
    m2 = create_open_clip('vlrepro-tiny-clip', pretrained=str(tmp_path/'jit.pt'))
    with torch.no_grad(): torch.testing.assert_close(m2.encode_text(t), m.encode_text(t), rtol=0, atol=0)
    tower = open_clip_to_hf('vlrepro-tiny-clip', pretrained=str(tmp_path/'jit.pt'), vision_only=True)
    with torch.no_grad():
        torch.testing.assert_close(tower(pixel_values=x).pooler_output, m.visual.ln_post(
            _penultimate_and_last(m, x)), rtol=1e-4, atol=1e-5)


def _penultimate_and_last(model, x):
    feats = {}
    hook = model.visual.transformer.resblocks[-1].register_forward_hook(lambda mod, i, o: feats.update(x=o))
    with torch.no_grad(): model.encode_image(x)
    hook.remove()
    return feats['x'][:, 0]


def test_open_clip_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='not found'):
        create_open_clip('vlrepro-tiny-clip', pretrained=str(tmp_path/'missing.pt'))
    with pytest.raises(ValueError, match='never downloads'):
        create_open_clip('ViT-B-16', pretrained='openai')
    with pytest.raises(ValueError, match='unknown open_clip model'):
        create_open_clip('no-such-clip')
    with pytest.raises(ValueError, match='crossget'):
        open_clip_tokenizer('vlrepro-tiny-clip')


def test_open_clip_real_vit_b16_random_init():
    m = create_open_clip('ViT-B-16', force_quick_gelu=True)
    assert round(sum(p.numel() for p in m.parameters()) / 1e6, 1) == 149.6
    assert m.visual.conv1.kernel_size == (16, 16) and len(m.visual.transformer.resblocks) == 12
    assert open_clip_tokenizer('ViT-B-16')(['a photo of a cat']).shape == (1, 77)


def _penultimate_open_clip(model, images):
    feats = {}
    hook = model.visual.transformer.resblocks[-2].register_forward_hook(lambda m, i, o: feats.update(x=o))
    with torch.no_grad(): emb = model.encode_image(images)
    hook.remove()
    return emb, feats['x']


def test_open_clip_to_hf_tiny_equivalence(tmp_path):
    oc = create_open_clip('vlrepro-tiny-clip')
    x, t = torch.randn(3, 3, 32, 32), torch.randint(1, 25, (3, 24))
    t[:, 10] = 26; t[:, 11:] = 0  # <eot> then padding
    img, feats = _penultimate_open_clip(oc, x)
    hf = open_clip_to_hf(oc)
    assert type(hf).__name__ == 'CLIPModel' and hf.config.vision_config.num_attention_heads == 2
    assert hf.config.vision_config.hidden_act == 'quick_gelu' and hf.config.text_config.eos_token_id == 26
    with torch.no_grad():
        torch.testing.assert_close(hf.get_image_features(pixel_values=x).pooler_output, img, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(hf.get_text_features(input_ids=t, attention_mask=(t > 0).long()).pooler_output,
                                   oc.encode_text(t), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(hf.logit_scale, oc.logit_scale)
    # from a checkpoint file, vision tower only (what LLaVA / CLIP-FlanT5 / ADEM-VL read)
    path = save_open_clip(oc, tmp_path/'oc.pt')
    tower = open_clip_to_hf('vlrepro-tiny-clip', pretrained=str(path), vision_only=True)
    assert type(tower).__name__ == 'CLIPVisionModel'
    with torch.no_grad():
        torch.testing.assert_close(tower(pixel_values=x, output_hidden_states=True).hidden_states[-2], feats,
                                   rtol=1e-4, atol=1e-5)
    tower.save_pretrained(tmp_path/'tower')  # and it is an ordinary HF checkpoint from then on
    assert type(load_hf('clip_vision', tmp_path/'tower')).__name__ == 'CLIPVisionModel'


def test_open_clip_to_hf_real_vit_b16_vision():
    oc = create_open_clip('ViT-B-16', force_quick_gelu=True)
    x = torch.randn(1, 3, 224, 224)
    img, feats = _penultimate_open_clip(oc, x)
    tower = open_clip_to_hf(oc, vision_only=True)
    c = tower.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.patch_size, c.image_size) == (768, 12, 12, 16, 224)
    with torch.no_grad(): out = tower(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-2], feats, rtol=1e-4, atol=1e-4)


def test_open_clip_to_hf_rejects_other_layouts():
    with pytest.raises(TypeError, match='OpenAI-style'): open_clip_to_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match='cannot convert'): open_clip_state_dict_to_hf({'visual.trunk.weight': torch.zeros(1)})


# ---------------------------------------------------------------- Hugging Face

@pytest.mark.parametrize('name', sorted(MODEL_PRESETS))
def test_every_preset_builds_and_runs(name):
    m = tiny_hf(name, seed=0)
    assert not m.training
    assert type(m).__name__ == models.HF_KINDS[MODEL_PRESETS[name]['kind']][1]
    assert sum(p.numel() for p in m.parameters()) < 2e6
    with torch.no_grad(): out = m(**example_inputs(m))
    assert torch.isfinite(_first_tensor(out)).all()


def test_spec_presets_match_specs():
    c = hf_config('laps-vit'); assert (c.image_size, c.patch_size, c.hidden_size, c.num_hidden_layers,
                                       c.num_attention_heads, c.intermediate_size) == (32, 4, 64, 2, 4, 128)
    v, b = tiny_hf('laps-vit'), tiny_hf('laps-bert', vocab_size=35)
    assert v.pooler is None and b.pooler is None and b.config.max_position_embeddings == 40
    assert 130e3 < sum(p.numel() for p in [*v.parameters(), *b.parameters()]) < 160e3  # laps §7.2: ~147 k
    c = hf_config('ademvl-llama')
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.rms_norm_eps, c.tie_word_embeddings) == (128, 96, 256, 3, 4, 1e-6, False)
    c = hf_config('ademvl-clip-vision')
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads, c.image_size,
            c.patch_size, c.hidden_act) == (64, 256, 3, 2, 32, 4, 'quick_gelu')
    c = hf_config('vqascore-t5')
    assert (c.vocab_size, c.d_model, c.d_kv, c.d_ff, c.num_layers, c.num_decoder_layers, c.num_heads,
            c.is_gated_act, c.decoder_start_token_id, c.pad_token_id, c.eos_token_id) == (200, 64, 16, 128, 4, 2, 4,
                                                                                          True, 0, 0, 1)
    c = hf_config('vqascore-clip')
    assert (c.vision_config.patch_size, c.vision_config.num_hidden_layers, c.text_config.num_hidden_layers,
            c.text_config.max_position_embeddings, c.projection_dim, c.text_config.eos_token_id) == (8, 4, 2, 24, 64, 1)
    c = hf_config('das-vilt')
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.patch_size,
            c.max_position_embeddings) == (64, 8, 4, 256, 8, 12)
    out = tiny_hf('das-vilt')(**example_inputs(hf_config('das-vilt'), seq_len=12))
    assert out.last_hidden_state.shape == (2, 12 + 16 + 1, 64)  # text + 16 patches + image CLS = 29 tokens


def test_real_size_configs():
    c = hf_config('vit', 'base'); assert (c.hidden_size, c.num_hidden_layers, c.patch_size, c.image_size) == (768, 12, 16, 224)
    c = hf_config('bert', 'base'); assert (c.vocab_size, c.hidden_size, c.num_hidden_layers) == (30522, 768, 12)
    c = hf_config('vilt', 'base'); assert (c.patch_size, c.image_size, c.hidden_size, c.max_position_embeddings) == (32, 384, 768, 40)
    c = hf_config('swin', 'base'); assert (c.embed_dim, list(c.depths), c.window_size) == (128, [2, 2, 18, 2], 7)
    c = hf_config('clip_vision', 'large-336')
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.patch_size, c.image_size) == (1024, 24, 16, 14, 336)
    c = hf_config('llama', '7b'); assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (4096, 11008, 32)
    c = hf_config('llama', '13b'); assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (5120, 13824, 40)
    c = hf_config('t5', 'xl'); assert (c.d_model, c.d_ff, c.num_heads, c.num_layers, c.vocab_size) == (2048, 5120, 32, 24, 32128)
    c = hf_config('t5', 'xxl'); assert (c.d_model, c.d_ff, c.num_heads) == (4096, 10240, 64)
    c = hf_config('llava', '7b')
    assert (c.vision_config.image_size, c.text_config.hidden_size, c.vision_feature_layer, c.image_token_index) == (336, 4096, -2, 32000)
    c = hf_config('clip', 'base'); assert (c.vision_config.patch_size, c.text_config.hidden_size, c.projection_dim) == (16, 512, 512)


def test_real_size_param_counts_on_meta():
    def n(m): return sum(p.numel() for p in m.parameters())
    assert n(build_hf('vit', 'base', device='meta')) == 86_389_248
    assert n(build_hf('bert', 'base', device='meta', model_kwargs=dict(add_pooling_layer=False))) == 108_891_648
    t5 = build_hf('t5', 'xl', device='meta')
    assert t5.lm_head.weight is not t5.shared.weight and round(n(t5) / 1e9, 2) == 2.85
    assert round(n(build_hf('clip_vision', 'large-336', device='meta')) / 1e6, 1) == 303.5


def test_real_width_shallow_model_runs():
    m = build_hf('bert', 'base', num_hidden_layers=1, seed=0)
    assert m.config.hidden_size == 768 and len(m.encoder.layer) == 1
    with torch.no_grad(): assert m(**example_inputs(m, seq_len=5)).last_hidden_state.shape == (2, 5, 768)


def test_seeded_build_is_reproducible_and_leaves_global_rng():
    torch.manual_seed(123); a = torch.rand(3)
    torch.manual_seed(123); m1 = tiny_hf('tiny-llama', seed=7); b = torch.rand(3)
    m2 = tiny_hf('tiny-llama', seed=7)
    torch.testing.assert_close(a, b)
    for p, q in zip(m1.parameters(), m2.parameters()): torch.testing.assert_close(p, q, rtol=0, atol=0)
    m3 = tiny_hf('tiny-llama', seed=8)
    assert not torch.equal(next(m1.parameters()), next(m3.parameters()))


def test_nested_overrides_and_errors():
    c = hf_config('crossget-llava', vision_config=dict(num_hidden_layers=2), text_config=dict(num_hidden_layers=1))
    assert (c.vision_config.num_hidden_layers, c.vision_config.hidden_size, c.text_config.num_hidden_layers) == (2, 64, 1)
    with pytest.raises(ValueError, match='presets'): hf_config('no-such-model')
    with pytest.raises(ValueError, match='sizes'): hf_config('t5', 'small')
    with pytest.raises(ValueError, match="kind 'vit'"): build_hf('laps-vit', 'base')
    with pytest.raises(ValueError, match='kinds'): load_hf('gpt2', '/tmp')
    with pytest.raises(ValueError, match="'num_hidden_layers'"): tiny_hf('laps-vit', num_hiden_layers=1)
    with pytest.raises(ValueError, match='CLIPVisionConfig'): hf_config('crossget-llava', vision_config=dict(hiden_size=8))
    assert hf_config('t5', hidden_size=32).d_model == 32  # attribute_map aliases are accepted


def test_t5_head_is_untied_like_flant5():
    m = tiny_hf('vqascore-t5', seed=0)
    assert m.lm_head.weight is not m.shared.weight
    assert not torch.equal(m.lm_head.weight, m.shared.weight)
    assert m.config.scale_decoder_outputs is False  # T5 v1.1: no d_model^-1/2 rescaling before the head
    labels = torch.tensor([[5, 6, 1], [7, 1, -100]])  # answer ids incl. </s>, -100 = ignored (HF shifts right from 0)
    x = example_inputs(m)
    assert torch.isfinite(m(input_ids=x['input_ids'], attention_mask=x['attention_mask'], labels=labels).loss)
    tied = tiny_hf('vqascore-t5', tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.shared.weight
    head = m.lm_head.weight.detach().clone()
    m.resize_token_embeddings(210, mean_resizing=False)  # VQAScore resizes to len(tokenizer): the head stays its own
    assert m.lm_head.weight.shape == (210, 64) and m.lm_head.weight is not m.shared.weight
    assert torch.equal(m.lm_head.weight[:200], head)


@pytest.mark.parametrize('name', ['tiny-vit', 'laps-swin', 'laps-bert', 'tiny-roberta', 'das-vilt', 'das-vilt-vqa',
                                  'vqascore-clip', 'vqascore-clip-vision', 'vqascore-clip-text', 'ademvl-llama',
                                  'vqascore-t5', 'crossget-llava'])
def test_load_hf_round_trip(name, tmp_path):
    m = tiny_hf(name, seed=0)
    inputs = example_inputs(m)
    m.save_pretrained(tmp_path/name)
    m2 = load_hf(name, tmp_path/name)
    assert not m2.training and type(m2) is type(m)
    with torch.no_grad(): a, b = m2(**inputs), m(**inputs)
    if name.startswith('das-vilt'):  # HF ViLT shuffles the image tokens on every call (torch.multinomial), so compare
        # what does not depend on their order: the text tokens / VQA logits (summation order differs: tiny tolerance)
        a, b = (a.logits, b.logits) if 'logits' in a else (a.last_hidden_state[:, :8], b.last_hidden_state[:, :8])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    else: torch.testing.assert_close(_first_tensor(a), _first_tensor(b), rtol=0, atol=0)
    if name == 'vqascore-t5': assert m2.lm_head.weight is not m2.shared.weight


def test_load_vision_tower_from_full_clip_checkpoint(tmp_path):
    c = tiny_hf('vqascore-clip', seed=0)
    c.save_pretrained(tmp_path/'clip')
    v = load_hf('clip_vision', tmp_path/'clip')
    px = example_inputs(c)['pixel_values']
    with torch.no_grad():
        a = v(pixel_values=px, output_hidden_states=True).hidden_states[-2]
        b = c.vision_model(pixel_values=px, output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_hf_missing_checkpoint_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as e: load_hf('llama', tmp_path/'llama-7b')
    assert str(tmp_path/'llama-7b') in str(e.value) and 'hf download huggyllama/llama-7b' in str(e.value)
    (tmp_path/'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no config.json'): load_hf('t5', tmp_path/'empty')


def test_tiny_llama_generates_and_llava_trains():
    m = tiny_hf('ademvl-llama', seed=0)
    x = torch.tensor([[1, 5, 6, 7]])
    out = m.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
    llava = tiny_hf('crossget-llava', seed=0).train()
    inp = example_inputs(llava)
    loss = llava(**inp, labels=inp['input_ids']).loss
    loss.backward()
    assert torch.isfinite(loss) and llava.model.multi_modal_projector.linear_1.weight.grad is not None


# ---------------------------------------------------------------- tokenizers

CAPTIONS = [f'a {s} {c} {sh} in the top left and a {c2} {sh2} at the bottom right'
            for s in ['small', 'big'] for c, c2 in [('red', 'green'), ('blue', 'yellow'), ('purple', 'cyan'),
                                                    ('white', 'orange')] for sh, sh2 in [('circle', 'square'),
                                                                                        ('triangle', 'cross')]]
CAPTIONS += ['red circle with blue square at top right']


def test_crossget_tokenizer_and_tiny_clip():
    tok = build_tokenizer('crossget', CAPTIONS)
    assert len(tok) == 27 and tok.pad_token_id == 0 and tok.eos_token_id == 26 and tok.convert_tokens_to_ids('<sot>') == 25
    assert tok.bos_token_id == 25
    words = tok.convert_ids_to_tokens(list(range(1, 25)))
    assert words == sorted(words)
    enc = tok(CAPTIONS[:3], padding='max_length', max_length=24, truncation=True, return_tensors='pt')
    assert enc.input_ids.shape == (3, 24)
    assert (enc.input_ids.argmax(-1) == enc.attention_mask.sum(-1) - 1).all()  # <eot> last and largest
    long = tok(' '.join(CAPTIONS[:3]), max_length=24, truncation=True).input_ids
    assert len(long) == 24 and long[-1] == 26  # truncation keeps <eot>
    clip = create_open_clip('vlrepro-tiny-clip')
    with torch.no_grad(): assert clip.encode_text(enc.input_ids).shape == (3, 64)


def test_laps_das_ademvl_tokenizers():
    laps = build_tokenizer('laps', CAPTIONS)
    assert laps.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    assert (laps.pad_token_id, laps.unk_token_id, laps.cls_token_id, laps.sep_token_id, laps.mask_token_id) == (0, 1, 2, 3, 4)
    ids = laps('A red zebra').input_ids
    assert ids[0] == 2 and ids[-1] == 3 and ids[3] == 1  # lowercased, unknown word -> [UNK]
    das = build_tokenizer('das', ['what color is the circle ?', 'is there a red square ?'])
    assert das.convert_ids_to_tokens([0, 1, 2]) == ['[pad]', '[cls]', '[sep]'] and das('is there').input_ids[0] == 1
    adem = build_tokenizer('ademvl', ['Context: The ball is red.\nQuestion: What color is the ball?'], vocab_size=64)
    assert (adem.pad_token_id, adem.bos_token_id, adem.eos_token_id, len(adem)) == (0, 1, 2, 64)
    assert adem('The ball').input_ids == [adem.convert_tokens_to_ids('The'), adem.convert_tokens_to_ids('ball')]  # no BOS/EOS
    assert adem.tokenize('red.\nWhat') == ['red', '.', '\n', 'What']


def test_vqascore_bpe_tokenizer():
    corpus = [f'a {c1} {s1} left of a {c2} {s2}' for c1 in ['red', 'green', 'blue', 'yellow'] for c2 in ['red', 'green']
              for s1 in ['circle', 'square', 'triangle'] for s2 in ['circle', 'square'] if c1 != c2]
    corpus += ['Does this figure show "a red circle"? Please answer yes or no.', 'Yes', 'No']
    tok = build_tokenizer('vqascore', corpus)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2) and len(tok) <= 200
    assert tok.convert_ids_to_tokens(tok('Yes').input_ids) == ['▁Yes', '</s>']
    assert tok('').input_ids == [1]
    assert tok('ASSISTANT:\n a red  circle ').input_ids == tok('ASSISTANT: a red circle').input_ids
    assert tok.decode(tok('a red circle').input_ids, skip_special_tokens=True) == 'a red circle'
    assert build_tokenizer('vqascore', corpus).get_vocab() == tok.get_vocab()  # deterministic


@pytest.mark.parametrize('preset', sorted(TOKENIZER_PRESETS))
def test_tokenizer_save_reload(preset, tmp_path):
    tok = build_tokenizer(preset, CAPTIONS)
    tok.save_pretrained(tmp_path/preset)
    tok2 = load_tokenizer(tmp_path/preset)
    assert tok2.get_vocab() == tok.get_vocab()
    assert tok2(CAPTIONS[:4]).input_ids == tok(CAPTIONS[:4]).input_ids
    for role in ('pad_token_id', 'eos_token_id', 'bos_token_id', 'unk_token_id', 'cls_token_id', 'sep_token_id'):
        assert getattr(tok2, role) == getattr(tok, role), role
    b1 = tok2(CAPTIONS[:2], padding='max_length', max_length=tok.model_max_length if tok.model_max_length < 100 else 30,
              truncation=True, return_tensors='pt')
    assert (b1.input_ids[b1.attention_mask == 0] == tok.pad_token_id).all()


def test_train_tokenizer_options_and_errors():
    tok = train_tokenizer(['b a c', 'c d'], words=['d', 'c'], specials=('<pad>', '<unk>'))
    assert tok.convert_ids_to_tokens([2, 3, 4, 5]) == ['d', 'c', 'a', 'b']  # fixed order first, then sorted rest
    assert train_tokenizer(['b a'], specials=('<pad>', '<unk>')).get_vocab() == train_tokenizer(['a b', 'b'], specials=('<pad>', '<unk>')).get_vocab()
    with pytest.raises(ValueError, match='not special tokens'): train_tokenizer(['a'], template='[CLS] $A')
    with pytest.raises(ValueError, match='vocab_size'): train_tokenizer(['a b c'], vocab_size=3)
    with pytest.raises(ValueError, match='duplicate'): train_tokenizer(['a'], specials=('<pad>', '<pad>'))
    with pytest.raises(ValueError, match='pre_tokenizer'): train_tokenizer(['a'], pre_tokenizer='spaces')
    with pytest.raises(ValueError, match="'wordlevel' or 'bpe'"): train_tokenizer(['a'], model='unigram')
    with pytest.raises(ValueError, match='presets'): build_tokenizer('clip', ['a'])
    with pytest.raises(FileNotFoundError, match='save_pretrained'): load_tokenizer('/nonexistent/tok')


def test_load_tokenizer_of_a_real_checkpoint_layout(tmp_path):
    (tmp_path/'vocab.txt').write_text('\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'a', 'red', 'region']))
    (tmp_path/'tokenizer_config.json').write_text('{"tokenizer_class": "BertTokenizer", "do_lower_case": true}')
    tok = load_tokenizer(tmp_path)
    assert tok('A red zebra').input_ids == [2, 5, 6, 1, 3] and tok.pad_token_id == 0
    bpe = train_tokenizer(['aaa bbb aaa'], model='bpe', specials=('<pad>', '<unk>'), specials_end=('<eot>',),
                          pre_tokenizer='metaspace', vocab_size=30)
    assert bpe.convert_tokens_to_ids('<eot>') == len(bpe) - 1 and bpe.eos_token_id == len(bpe) - 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_presets_on_cuda_in_bf16():
    for name in ['laps-vit', 'das-vilt', 'ademvl-llama', 'vqascore-t5', 'vqascore-clip', 'crossget-llava']:
        m = tiny_hf(name, seed=0, device='cuda').to(torch.bfloat16)
        inputs = {k: (v.to('cuda', torch.bfloat16) if v.is_floating_point() else v.to('cuda'))
                  for k, v in example_inputs(m).items()}
        with torch.no_grad(): out = m(**inputs)
        assert _first_tensor(out).device.type == 'cuda' and torch.isfinite(_first_tensor(out).float()).all(), name
    oc = create_open_clip('vlrepro-tiny-clip', device='cuda', precision='bf16')
    hf = open_clip_to_hf(oc)
    assert next(hf.parameters()).device.type == 'cuda' and next(hf.parameters()).dtype == torch.bfloat16
    x = torch.randn(2, 3, 32, 32, device='cuda', dtype=torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(hf.get_image_features(pixel_values=x).pooler_output.float(),
                                   oc.encode_image(x).float(), rtol=0.05, atol=0.05)


def test_openai_weights_build_quickgelu_and_mismatches_are_refused(tmp_path):
    "OpenAI's CLIP weights were trained with QuickGELU: 'ViT-B-16' (GELU) + an OpenAI archive builds the QuickGELU model."
    import open_clip
    from open_clip.model import CLIP, CLIPVisionCfg, CLIPTextCfg
    from vlrepro.models import _uses_quick_gelu
    cfg = open_clip.get_model_config('vlrepro-tiny-clip')
    def build(quick):
        torch.manual_seed(0)
        return CLIP(cfg['embed_dim'], CLIPVisionCfg(**cfg['vision_cfg']), CLIPTextCfg(**cfg['text_cfg']), quick_gelu=quick).eval()
    # a GELU config of the same shapes, registered as a built-in-like name, with OpenAI-style (QuickGELU) weights
    open_clip.factory._MODEL_CONFIGS['tiny-gelu-test'] = {**cfg, 'quick_gelu': False}
    x, t = torch.randn(2, 3, 32, 32), torch.randint(1, 26, (2, 24)); t[:, -1] = 26
    openai = build(True)
    torch.jit.save(torch.jit.trace(openai, (x, t), check_trace=False), tmp_path/'openai.pt')
    m = create_open_clip('tiny-gelu-test', pretrained=str(tmp_path/'openai.pt'))
    assert _uses_quick_gelu(m)
    with torch.no_grad(): torch.testing.assert_close(m.encode_image(x), openai.encode_image(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="trained with QuickGELU, but 'tiny-gelu-test' would be built with GELU"):
        create_open_clip('tiny-gelu-test', pretrained=str(tmp_path/'openai.pt'), force_quick_gelu=False)
    # our own files record their activation: a GELU checkpoint is refused by a QuickGELU model
    save_open_clip(build(False), tmp_path/'gelu.pt')
    with pytest.raises(ValueError, match="trained with GELU, but 'vlrepro-tiny-clip' would be built with QuickGELU"):
        create_open_clip('vlrepro-tiny-clip', pretrained=str(tmp_path/'gelu.pt'))
    assert not _uses_quick_gelu(create_open_clip('tiny-gelu-test', pretrained=str(tmp_path/'gelu.pt')))
