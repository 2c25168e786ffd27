#!/usr/bin/env python
"""Convert a local export of BoolQ / CommonsenseQA / GSM8K (Hugging Face google/boolq, tau/commonsense_qa, openai/gsm8k
config main) into vlrepro's format for the LaVIN-DAS language-only runs (nbs/22_das_lavin.ipynb).

--src holds one file per split as exported from `datasets` (`<split>.jsonl`, `<split>.parquet` or HF's
`data/<split>-00000-of-00001.parquet`; parquet needs pyarrow). Rows become {id, question, passage, choices, answer}
(+ rationale for GSM8K); logic and tests: vlrepro.das_lavin.convert_language_task.
Example: python data_scripts/convert_lavin_language.py --task boolq --src ~/raw/boolq --root data [--dry-run]
"""
from vlrepro import data


def main(argv=None):
    p = data.script_parser(__doc__, '', 'folder of the exported HF dataset (one jsonl/parquet file per split)')
    p.add_argument('--task', required=True, choices=['boolq', 'csqa', 'gsm8k'], help='which dataset --src holds')
    a = p.parse_args(argv)
    from vlrepro import das_lavin
    if a.src is None: raise ValueError("pass --src FOLDER with the exported HF dataset")
    a.name = a.name or a.task
    counts = das_lavin.convert_language_task(a.task, a.src, a.root/a.name, dry_run=a.dry_run)
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
