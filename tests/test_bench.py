"Tests of vlrepro.bench: FLOP conventions, attention kernels, per-module counts, tokens, parameters, timing, memory."
import time
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from vlrepro import bench

torch.set_num_threads(1)


def test_mlp_by_hand():
    mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4))
    fc = bench.count_flops(mlp, torch.randn(8, 16))
    assert (fc.flops, fc.macs, fc.fvcore) == (10_240, 5_120, 6_400)
    assert fc.as_dict() == {'gflops': 10_240 / 1e9, 'gmacs': 5_120 / 1e9, 'gflops_fvcore': 6_400 / 1e9}
    assert fc.module('Sequential.0') == {'flops': 2 * 8 * 16 * 32, 'macs': 8 * 16 * 32, 'fvcore': 8 * 16 * 32}
    assert fc.module('Sequential.2') == {'flops': 0, 'macs': 0, 'fvcore': 8 * 32 * 5}
    assert fc.module('nope') == {'flops': 0, 'macs': 0, 'fvcore': 0}


def test_sdpa_cpu_counted():
    q = torch.randn(2, 4, 10, 8)
    assert bench.count_flops(F.scaled_dot_product_attention, q, q, q).flops == 2 * 2 * 2 * 4 * 10 * 10 * 8
    # with a mask and causal: dense count (upper bound)
    m = torch.zeros(10, 10)
    assert bench.count_flops(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=m)).flops == 25_600
    assert bench.count_flops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True)).flops == 25_600


def test_sdpa_gqa_and_cross():
    q, k = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 9, 8)
    fc = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, k, enable_gqa=True))
    assert fc.macs == 2 * 4 * 6 * 9 * 8


@pytest.mark.parametrize('need_weights,no_grad', [(False, True), (False, False), (True, True)])
def test_mha_paths_agree(need_weights, no_grad):
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(2, 10, 16)
    fc = bench.count_flops(lambda: mha(x, x, x, need_weights=need_weights), no_grad=no_grad)
    assert fc.macs == 4 * 2 * 10 * 16 * 16 + 2 * 2 * 10 * 10 * 16


def test_mha_cross_attention_fast_path():
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    fast = bench.count_flops(lambda: mha(q, kv, kv, need_weights=False))
    slow = bench.count_flops(lambda: mha(q, kv, kv, need_weights=True))
    assert fast.flops == slow.flops == 2 * (2 * 2 * 5 * 16 * 16 + 2 * 2 * 7 * 16 * 16 + 2 * 2 * 5 * 7 * 16)


def test_encoder_layer_fast_path():
    enc = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0).eval()
    x = torch.randn(2, 10, 16)
    assert bench.count_flops(enc, x).flops == bench.count_flops(enc, x, no_grad=False).flops


def test_backward_counted():
    lin = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    fwd = bench.count_flops(lin, x).flops
    both = bench.count_flops(lambda: lin(x).sum().backward(), no_grad=False).flops
    assert fwd == 2 * 3 * 8 * 4 and both == 2 * fwd  # grad wrt weight only (x needs no grad)


def test_norm_conventions():
    x = torch.randn(2, 4, 5, 5)
    assert bench.count_flops(nn.BatchNorm2d(4).eval(), x).fvcore == 2 * x.numel()
    assert bench.count_flops(nn.GroupNorm(2, 4), x).fvcore == 5 * x.numel()
    assert bench.count_flops(nn.LayerNorm(5, elementwise_affine=False), x).fvcore == 4 * x.numel()
    assert bench.count_flops(nn.LayerNorm(5), x).flops == 0
    conv = bench.count_flops(nn.Conv2d(4, 8, 3), x)
    assert conv.macs == 2 * 8 * 4 * 9 * 3 * 3 and conv.fvcore == conv.macs


def test_clip_b16_matches_crossget_table():
    open_clip = pytest.importorskip('open_clip')
    with torch.device('meta'):
        m = open_clip.CLIP(**open_clip.get_model_config('ViT-B-16')).eval()
    vis = bench.count_flops(m.encode_image, torch.empty(1, 3, 224, 224, device='meta'))
    txt = bench.count_flops(m.encode_text, torch.zeros(1, 77, dtype=torch.long, device='meta'))
    assert abs((vis.fvcore - 196 * 768 * 5) / 1e9 - 17.582) < 5e-4  # CrossGET §4.4 (OpenAI ln_post on CLS only)
    assert abs(txt.gfvcore - 2.985) < 5e-4
    per_block = [vis.module(f'VisionTransformer.transformer.resblocks.{i}')['flops'] for i in range(12)]
    assert len(set(per_block)) == 1 and sum(per_block) == vis.module('VisionTransformer.transformer')['flops']
    tab = vis.table(depth=2)
    assert tab.module[0] == 'Global' and tab.flops[0] == vis.flops


def test_open_clip_fused_attention_counted_on_cpu():
    open_clip = pytest.importorskip('open_clip')
    m = open_clip.CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=2, head_width=16),
                       text_cfg=dict(context_length=8, vocab_size=40, width=32, heads=2, layers=2)).eval()
    img = torch.randn(2, 3, 32, 32)
    fc = bench.count_flops(m.encode_image, img)
    attn = 2 * 2 * 2 * 17 * 17 * 32  # per layer: QKᵀ + AV, 2 FLOPs per MAC
    assert fc.module('VisionTransformer.transformer.resblocks.0.attn')['flops'] == 2 * 4 * 2 * 17 * 32 * 32 + attn
    assert bench.token_counts(m, lambda: m.encode_image(img), r'visual\.transformer\.resblocks\.\d+$') == [17, 17]


def test_hf_eager_equals_sdpa():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64)
    ids, mask = torch.randint(0, 50, (1, 12)), torch.tensor([[1] * 9 + [0] * 3])
    counts = {}
    for impl in ['eager', 'sdpa']:
        cfg._attn_implementation = impl
        model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
        counts[impl] = bench.count_flops(model, input_ids=ids, attention_mask=mask).flops
    assert counts['eager'] == counts['sdpa'] == 2 * 2 * (12 * 32 * 32 * 4 + 12 * 32 * 64 * 2 + 2 * 12 * 12 * 32)


def test_flop_mapping_usable_directly():
    from torch.utils.flop_counter import FlopCounterMode
    q = torch.randn(1, 1, 4, 2)
    with FlopCounterMode(display=False, custom_mapping=bench.flop_mapping(norms=False)) as fc:
        F.scaled_dot_product_attention(q, q, q)
    assert fc.get_total_flops() == 2 * 2 * 4 * 4 * 2


def test_token_counts_errors_and_dim():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=False), 2, enable_nested_tensor=False)
    x = torch.randn(5, 3, 8)  # (N, B, C)
    assert bench.token_counts(enc, lambda: enc(x), nn.TransformerEncoderLayer, dim=0) == [5, 5]
    with pytest.raises(ValueError, match='matches'):
        bench.token_counts(enc, lambda: enc(x), 'nothing_here')


def test_parameters():
    mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4))
    mlp[0].requires_grad_(False)
    assert bench.count_parameters(mlp) == 740 and bench.count_parameters(mlp, trainable_only=True) == 196
    df = bench.parameter_summary(mlp)
    assert df.set_index('prefix').loc['total'].tolist() == [740, 196, 544]
    assert df.set_index('prefix').loc['0', 'frozen'] == 544
    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    assert bench.count_parameters(tied) == 40
    p = nn.Parameter(torch.empty(0)); p.ds_numel = 1000  # ZeRO-3 shard
    holder = nn.Module(); holder.w = p
    assert bench.count_parameters(holder) == 1000


def test_time_fn_and_stats():
    t = bench.time_fn(lambda: time.sleep(0.002), warmup=1, repeats=5)
    assert len(t.times) == 5 and t.min <= t.median <= t.max and t.median >= 0.0015
    assert t.items_per_s(10) == pytest.approx(10 / t.median)
    with pytest.raises(ValueError, match='repeats'):
        bench.time_fn(lambda: None, repeats=0)
    assert 'median' in repr(t)


def test_benchmark_interleaved_order_and_ratio():
    calls = []
    fns = {'a': lambda: (calls.append('a'), time.sleep(0.004)), 'b': lambda: (calls.append('b'), time.sleep(0.001))}
    df = bench.benchmark(fns, warmup=1, repeats=4, items=8)
    assert calls == ['a', 'b'] * 5  # warm-up round, then interleaved A B A B ...
    assert df.name.tolist() == ['a', 'b'] and df.speedup[0] == 1.0 and df.speedup[1] > 1.5
    assert df.items_per_s[1] == pytest.approx(8 / df.median_s[1])
    calls.clear()
    df = bench.benchmark(fns, warmup=0, repeats=4, order='rotate', baseline='b')
    assert calls == ['a', 'b', 'b', 'a', 'a', 'b', 'b', 'a'] and df.speedup[1] == 1.0
    with pytest.raises(ValueError, match='baseline'):
        bench.benchmark(fns, baseline='c')
    with pytest.raises(ValueError, match='order'):
        bench.benchmark(fns, order='random')
    with pytest.raises(ValueError, match='at least one'):
        bench.benchmark({})


def test_benchmark_inference_mode():
    seen = []
    bench.benchmark({'a': lambda: seen.append(torch.is_inference_mode_enabled())}, warmup=0, repeats=1)
    bench.benchmark({'a': lambda: seen.append(torch.is_inference_mode_enabled())}, warmup=0, repeats=1, inference=False)
    assert seen == [True, False]


def test_peak_memory_cpu():
    def hold():
        t = torch.ones(16 * 2 ** 20)
        time.sleep(0.05)
        return t.sum()
    mem = bench.peak_memory(hold, device='cpu')
    assert mem['method'].startswith('cpu') and mem['delta_bytes'] > 32 * 2 ** 20


def test_efficiency_report():
    lin = nn.Linear(8, 4)
    x = torch.randn(2, 8)
    eff = bench.efficiency_report(lin, lambda: lin(x), items=2, flops_per=2, paper='das', repeats=3)
    assert eff['gflops'] == pytest.approx(8 * 4 * 2 / 1e9) and eff['params'] == 36 and eff['batch'] == 2
    assert eff['latency_ms_min'] <= eff['latency_ms'] <= eff['latency_ms_max']
    assert eff['gflops_paper'] == pytest.approx(8 * 4 / 1e9) and eff['throughput'] > 0
    assert set(bench.FLOP_CONVENTIONS) == {'crossget', 'das', 'laps', 'ademvl', 'vqascore'}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_attention_and_memory():
    q = torch.randn(2, 4, 64, 32, device='cuda', dtype=torch.float16)
    assert bench.count_flops(F.scaled_dot_product_attention, q, q, q).flops == 2 * 2 * 2 * 4 * 64 * 64 * 32
    mha = nn.MultiheadAttention(64, 4, batch_first=True).cuda().eval()
    x = torch.randn(2, 10, 64, device='cuda')
    assert bench.count_flops(lambda: mha(x, x, x, need_weights=False)).macs == 4 * 2 * 10 * 64 * 64 + 2 * 2 * 10 * 10 * 64
    mem = bench.peak_memory(lambda: torch.empty(2 ** 26, device='cuda', dtype=torch.uint8), device='cuda')
    assert mem['method'] == 'cuda.max_memory_allocated' and mem['delta_bytes'] >= 2 ** 26
    df = bench.benchmark({'a': lambda: q @ q.transpose(-1, -2)}, warmup=1, repeats=3)
    assert df.attrs['sync'] is True


def test_hf_llama_gqa_and_token_counts():
    transformers = pytest.importorskip('transformers')
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    lm = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (1, 10))
    per_layer = 10 * 32 * 32 * 2 + 2 * 10 * 32 * 16 + 3 * 10 * 32 * 64 + 2 * 4 * 10 * 10 * 8  # q,o; k,v (2 kv heads); MLP; QKᵀ+AV
    assert bench.count_flops(lm, ids).macs == 2 * per_layer + 10 * 32 * 64  # + lm_head
    assert bench.token_counts(lm, lambda: lm(ids), r'layers\.\d+$') == [10, 10]


def test_token_counts_hidden_states_kwarg():
    class Block(nn.Module):
        def forward(self, mask=None, hidden_states=None): return hidden_states
    class Net(nn.Module):
        def __init__(self): super().__init__(); self.b = Block()
        def forward(self, x): return self.b(mask=torch.ones(1), hidden_states=x)
    net = Net()
    assert bench.token_counts(net, lambda: net(torch.randn(2, 7, 3)), Block) == [7]


def test_block_macs_matches_counter():
    open_clip = pytest.importorskip('open_clip')
    from open_clip.transformer import ResidualAttentionBlock
    blk = ResidualAttentionBlock(32, 2, mlp_ratio=4.0).eval()
    for n in (5, 17):
        assert bench.count_flops(blk, torch.randn(2, n, 32)).macs == 2 * bench.block_macs(n, 32)
    assert bench.block_macs(10, 8, kv_tokens=4) == 2 * 10 * 64 + 2 * 4 * 64 + 2 * 10 * 4 * 8 + 2 * 10 * 8 * 32
    assert bench.block_macs(197, 768) * 12 == 12 * (12 * 197 * 768 ** 2 + 2 * 197 ** 2 * 768)
