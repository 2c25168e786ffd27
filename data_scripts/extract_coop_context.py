#!/usr/bin/env python
"""Extract the learned context of an ordinary CoOp run, the prompt CrossGET's CoOp rows start from (11_crossget's coop_init_prompt).

--src is CoOp's checkpoint prompt_learner/model.pth.tar-<epoch> (a torch file {'state_dict': {'ctx': (n_ctx, C),
'token_prefix': ..., 'token_suffix': ...}, 'epoch': ..., ...}) or a run folder holding prompt_learner/, e.g.
output/dtd/CoOp/vit_b16_16shots/nctx16_cscFalse_ctpend/seed1 (the epoch its `checkpoint` file names, else the last one).
--out gets the context alone, an (n_ctx, C) float32 tensor.
Example: python data_scripts/extract_coop_context.py --src output/dtd/CoOp/vit_b16_16shots/nctx16_cscFalse_ctpend/seed1 --out ckpt/coop_dtd_original_ctx.pt
"""
import argparse, re
from pathlib import Path
from vlrepro import data
from vlrepro.core import atomic_torch_save
from vlrepro.crossget_clip import read_coop_context


def find_checkpoint(src:Path)->Path:
    "The prompt learner checkpoint of a CoOp run folder (or `src` itself when it is a file)."
    if src.is_file(): return src
    d = src/'prompt_learner' if (src/'prompt_learner').is_dir() else src
    if not d.is_dir(): raise FileNotFoundError(f"--src {src} is neither a checkpoint file nor a CoOp run folder")
    named = (d/'checkpoint').read_text().split()[0] if (d/'checkpoint').is_file() else ''
    if named and (d/named).is_file(): return d/named
    found = sorted(d.glob('model.pth.tar-*'), key=lambda p: int(re.sub(r'\D', '', p.name.rsplit('-', 1)[-1]) or 0))
    if not found: raise FileNotFoundError(f"no prompt_learner/model.pth.tar-<epoch> under {src}")
    return found[-1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--src', type=Path, required=True, help='model.pth.tar-<epoch>, or the CoOp run folder')
    p.add_argument('--out', type=Path, required=True, help='where to write the (n_ctx, C) context, e.g. ckpt/coop_dtd_original_ctx.pt')
    p.add_argument('--dry-run', action='store_true', help='read and report, write nothing')
    a = p.parse_args(argv)
    ck = find_checkpoint(a.src)
    ctx = read_coop_context(ck)
    if a.dry_run: print(f"dry run: {ck} holds a context of shape {tuple(ctx.shape)}; would write {a.out}"); return
    atomic_torch_save(ctx.contiguous(), a.out)
    print(f"wrote {a.out}: context {tuple(ctx.shape)} from {ck}")


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
