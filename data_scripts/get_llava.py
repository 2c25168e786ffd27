#!/usr/bin/env python
"""Convert a LLaVA conversation JSON (llava_v1_5_mix665k.json, llava_instruct_150k.json, blip_laion_cc_sbu_558k.json)
into vlrepro's instruction format.

--src holds the JSON (--json names it; default llava_v1_5_mix665k.json) and the images its "image" paths are
relative to (--images; default SRC, e.g. with coco/ gqa/ ocr_vqa/ textvqa/ vg/ under it for the 665k mix).
--download fetches only the JSON; the images come from their own datasets (see the LLaVA repository's data docs).
Example: python data_scripts/get_llava.py --src ~/raw/llava --json llava_v1_5_mix665k.json --name llava_mix665k --root data
"""
from pathlib import Path
from vlrepro import data

H = 'https://huggingface.co/datasets/liuhaotian/'
# file -> (url, sha256); sha256 None = not pinned yet: --download prints the digest it saw, record it here.
DOWNLOADS = {'llava_v1_5_mix665k.json': (H + 'LLaVA-Instruct-150K/resolve/main/llava_v1_5_mix665k.json', None),
             'llava_instruct_150k.json': (H + 'LLaVA-Instruct-150K/resolve/main/llava_instruct_150k.json', None),
             'blip_laion_cc_sbu_558k.json': (H + 'LLaVA-Pretrain/resolve/main/blip_laion_cc_sbu_558k.json', None)}


def main(argv=None):
    p = data.script_parser(__doc__, 'llava', 'folder with the conversation JSON and its images')
    p.add_argument('--json', default='llava_v1_5_mix665k.json', help='the conversation JSON inside --src')
    p.add_argument('--images', type=Path, default=None, help='folder the JSON\'s image paths are relative to (default: SRC)')
    p.add_argument('--split', default='train', help='split name to write (default train)')
    a = p.parse_args(argv)
    downloads = {a.json: DOWNLOADS[a.json]} if a.json in DOWNLOADS else {}
    src = data.resolve_src(a, downloads)
    counts = data.convert_llava(src/a.json, a.images or src, a.root/a.name, split=a.split,
                                copy_images=a.copy_images, check_images=a.check_images, dry_run=a.dry_run,
                                source=downloads.get(a.json, (str(src/a.json),))[0])
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
