#!/usr/bin/env python
"""Convert LLaVA-1.5's ten evaluation benchmarks, laid out as LLaVA's scripts/v1_5/eval/*.sh read them, into vlrepro's
format for nbs/12_crossget_llava: ROOT/<bench>/test.jsonl + images/ (one row per question: the prompt exactly as LLaVA
sends it, and the answers its scorer uses).

--src is LLaVA's playground/data/eval (unzip LLaVA's eval.zip there, see its docs/Evaluation.md, then add each
benchmark's images and answer files):
  vqav2/       llava_vqav2_mscoco_test-dev2015.jsonl, test2015/          (answers: the EvalAI server)
  gqa/         llava_gqa_testdev_balanced.jsonl, data/images/, data/testdev_balanced_questions.json
  vizwiz/      llava_test.jsonl, test/                                     (answers: the EvalAI server)
  scienceqa/   llava_test_CQM-A.json, problems.json, images/test/          (SQA-I: questions with an image)
  textvqa/     llava_textvqa_val_v051_ocr.jsonl, train_images/, TextVQA_0.5.1_val.json
  pope/        llava_pope_test.jsonl, val2014/, coco/coco_pope_{adversarial,popular,random}.json
  MME/         llava_mme.jsonl, MME_Benchmark_release_version/ (images + per-image question<TAB>answer txt files)
  mmbench/     mmbench_dev_20230712.tsv        mmbench_cn/  mmbench_dev_cn_20231003.tsv   (base64 images inside)
  seed_bench/  llava-seed-bench.jsonl, SEED-Bench.json, SEED-Bench-image/  (SEED-I: image questions)
--download fetches the directly downloadable files of the chosen benchmarks into --src (large: COCO test2015 and
val2014, GQA images); LLaVA's question files (eval.zip) and MME (by request from its authors) are not downloadable here.
Example: python data_scripts/get_llava_eval.py --bench all --src playground/data/eval --root data
"""
from vlrepro import data
from vlrepro.crossget_llava import LLAVA_EVAL_FILES, convert_llava_eval

COCO, GH = 'http://images.cocodataset.org/zips/', 'https://raw.githubusercontent.com/AoiDragon/POPE/e3e39262c85a6a83f26cf5094022a782cb0df58d/output/coco/'
# file under --src -> (url, sha256); sha256 None = not pinned yet: --download prints the digest it saw, record it here.
DOWNLOADS = {
    'vqav2/test2015.zip': (COCO + 'test2015.zip', None),
    'gqa/data/questions1.2.zip': ('https://downloads.cs.stanford.edu/nlp/data/gqa/questions1.2.zip', None),
    'gqa/data/images.zip': ('https://downloads.cs.stanford.edu/nlp/data/gqa/images.zip', None),
    'vizwiz/test.zip': ('https://vizwiz.cs.colorado.edu/VizWiz_final/images/test.zip', None),
    'textvqa/TextVQA_0.5.1_val.json': ('https://dl.fbaipublicfiles.com/textvqa/data/TextVQA_0.5.1_val.json', None),
    'textvqa/train_val_images.zip': ('https://dl.fbaipublicfiles.com/textvqa/images/train_val_images.zip', None),
    'pope/val2014.zip': (COCO + 'val2014.zip', None),
    **{f'pope/coco/coco_pope_{c}.json': (GH + f'coco_pope_{c}.json', None) for c in ('adversarial', 'popular', 'random')},
    'mmbench/mmbench_dev_20230712.tsv': ('https://download.openmmlab.com/mmclassification/datasets/mmbench/mmbench_dev_20230712.tsv', None),
    'mmbench_cn/mmbench_dev_cn_20231003.tsv': ('https://download.openmmlab.com/mmclassification/datasets/mmbench/mmbench_dev_cn_20231003.tsv', None),
    'seed_bench/SEED-Bench.json': ('https://huggingface.co/datasets/AILab-CVC/SEED-Bench/resolve/main/SEED-Bench.json', None),
}


def main(argv=None):
    p = data.script_parser(__doc__, '', "LLaVA's playground/data/eval folder")
    p.add_argument('--bench', default='all', help=f"benchmarks, comma-separated, or all: {', '.join(LLAVA_EVAL_FILES)}")
    a = p.parse_args(argv)
    benches = list(LLAVA_EVAL_FILES) if a.bench == 'all' else [b.strip() for b in a.bench.split(',') if b.strip()]
    bad = [b for b in benches if b not in LLAVA_EVAL_FILES]
    if bad or not benches: raise ValueError(f"unknown benchmark(s) {bad}; choose from {', '.join(LLAVA_EVAL_FILES)} or all")
    if a.name and len(benches) > 1: raise ValueError("--name renames one benchmark's folder; give one --bench with it")
    folders = {LLAVA_EVAL_FILES[b][0] + '/' for b in benches}
    src = data.resolve_src(a, {f: v for f, v in DOWNLOADS.items() if any(f.startswith(d) for d in folders)})
    for b in benches:
        name = a.name or b
        counts = convert_llava_eval(b, src, a.root/name, copy_images=a.copy_images, check_images=a.check_images,
                                    dry_run=a.dry_run)
        print(f"{b}: " + data.report(counts, type(a)(**{**vars(a), 'name': name})))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
