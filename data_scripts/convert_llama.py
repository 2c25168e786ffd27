#!/usr/bin/env python
"""Convert Meta's LLaMA-1 `consolidated.*.pth` shards (ADEM-VL's `<data_root>/weights/` layout) into a Hugging Face folder.

--src holds tokenizer.model and <size>/{params.json, consolidated.00.pth[, consolidated.01.pth]}; the 13B shards are merged,
q/k rows are permuted to HF's rotate-half RoPE layout (logic and tests: vlrepro.models, nbs/02_models.ipynb). The HF folder
then loads with `ademvl_sqa.load_llama(out, 'hf')` or `LlamaForCausalLM.from_pretrained(out)`. tokenizer.model is copied
beside the weights as it is (transformers 5 cannot convert it without protobuf; `das_lavin.load_llama_tokenizer(out)`
reads it with sentencepiece).
Example: python data_scripts/convert_llama.py --src data/weights --size 7B --out data/llama-7b-hf [--dry-run]
"""
import argparse, json, shutil
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--src', type=Path, required=True, help="Meta weights/ folder (tokenizer.model, 7B/, 13B/)")
    p.add_argument('--size', default='7B', help="sub-folder: 7B or 13B (default 7B)")
    p.add_argument('--out', type=Path, required=True, help="HF folder to write (config.json, safetensors, tokenizer)")
    p.add_argument('--dtype', default='float16', choices=['float16', 'bfloat16', 'float32'])
    p.add_argument('--dry-run', action='store_true', help='check the files and print the config, write nothing')
    a = p.parse_args(argv)
    import torch
    from vlrepro import ademvl_sqa, models
    d = a.src/a.size
    shards = sorted(d.glob('consolidated.*.pth'))
    if not shards or not (d/'params.json').exists():
        raise SystemExit(f"no params.json + consolidated.*.pth in {d}; expected {a.src}/{a.size}/consolidated.00.pth")
    params = json.loads((d/'params.json').read_text())
    print(f"{len(shards)} shard(s); {models.llama_config_from_params(params).to_json_string()[:200]}...")
    if a.dry_run: return 0
    m = ademvl_sqa.load_llama(a.src, 'meta', a.size, dtype=getattr(torch, a.dtype))
    m.save_pretrained(a.out)
    # the file itself, not a transformers conversion: LlamaTokenizer(vocab_file=...) silently builds an empty tokenizer
    # under transformers 5 without protobuf, and saving that would lose the vocabulary
    if (a.src/'tokenizer.model').exists(): shutil.copy2(a.src/'tokenizer.model', a.out/'tokenizer.model')
    print(f"wrote {a.out}")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
