#!/usr/bin/env python
"""Convert ScienceQA (problems.json + pid_splits.json + images/) into vlrepro's multiple-choice format.

--src must hold problems.json, pid_splits.json and images/{train,val,test}/<pid>/image.png (as the ScienceQA repo's
tools/download.sh leaves them). Rows keep ScienceQA's fields (question, hint, choices, answer, subject, grade, topic,
category, skill, lecture, solution) and add has_image and context; with captions.json (LaVIN's image captions, used by
ADEM-VL's evaluation prompt) also caption. Result: train 12,726 / val 4,241 / test 4,241.
Example: python data_scripts/get_scienceqa.py --src ~/raw/scienceqa --root data [--splits train,val,test,minival]
"""
from pathlib import Path
from vlrepro import data

# file -> (url, sha256); sha256 None = not pinned yet: --download prints the digest it saw, record it here.
DOWNLOADS = {'problems.json': ('https://raw.githubusercontent.com/lupantech/ScienceQA/main/data/scienceqa/problems.json', None),
             'pid_splits.json': ('https://raw.githubusercontent.com/lupantech/ScienceQA/main/data/scienceqa/pid_splits.json', None),
             'images/train.zip': ('https://scienceqa.s3.us-west-1.amazonaws.com/images/train.zip', None),
             'images/val.zip': ('https://scienceqa.s3.us-west-1.amazonaws.com/images/val.zip', None),
             'images/test.zip': ('https://scienceqa.s3.us-west-1.amazonaws.com/images/test.zip', None)}


def main(argv=None):
    p = data.script_parser(__doc__, 'scienceqa', 'folder with problems.json, pid_splits.json and images/')
    p.add_argument('--splits', default='train,val,test', help='keys of pid_splits.json to write (default train,val,test)')
    p.add_argument('--captions', type=Path, default=None,
                   help="LaVIN's captions.json ({'captions': {pid: text}}) -> a 'caption' field (default: SRC/captions.json if present)")
    a = p.parse_args(argv)
    src = data.resolve_src(a, DOWNLOADS)
    captions = a.captions or (src/'captions.json' if (src/'captions.json').is_file() else None)
    counts = data.convert_scienceqa(src, a.root/a.name, splits=[s for s in a.splits.split(',') if s], caption_file=captions,
                                    copy_images=a.copy_images, check_images=a.check_images, dry_run=a.dry_run)
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
