#!/usr/bin/env python
"""Build CrossGET's LLaVA-1.5 training subset mix67k (every 10th record of llava_v1_5_mix665k.json)
and convert it into vlrepro's instruction format.

--src holds llava_v1_5_mix665k.json (--json) and the images its "image" paths are relative to (--images; default SRC:
coco/ gqa/ ocr_vqa/ textvqa/ vg/). Writes SRC/llava_v1_5_mix67k.json (unless --dry-run) and ROOT/llava_mix67k/.
Example: python data_scripts/make_llava_mix67k.py --src ~/raw/llava --root data
"""
import json, tempfile
from pathlib import Path
from vlrepro import data
from vlrepro.core import atomic_write_text
from vlrepro.crossget_llava import mix67k


def main(argv=None):
    p = data.script_parser(__doc__, 'llava_mix67k', 'folder with llava_v1_5_mix665k.json and its images')
    p.add_argument('--json', default='llava_v1_5_mix665k.json', help='the full mix inside --src')
    p.add_argument('--images', type=Path, default=None, help="folder the JSON's image paths are relative to (default: SRC)")
    p.add_argument('--every', type=int, default=10, help='keep every N-th record (default 10, as the authors)')
    a = p.parse_args(argv)
    if a.src is None: raise ValueError("pass --src FOLDER holding llava_v1_5_mix665k.json (get it with data_scripts/get_llava.py --download)")
    full = Path(a.src) / a.json
    if not full.exists(): raise FileNotFoundError(f"{full} not found; download it with data_scripts/get_llava.py --download --src {a.src}")
    sub = mix67k(json.loads(full.read_text()), a.every)
    out = Path(tempfile.mkdtemp()) / 'llava_v1_5_mix67k.json' if a.dry_run else Path(a.src) / 'llava_v1_5_mix67k.json'
    atomic_write_text(out, json.dumps(sub))              # a dry run writes it to a temporary folder only
    print(f"mix67k: {len(sub)} of the mix's records (every {a.every}th){' (dry run)' if a.dry_run else f' -> {out}'}")
    counts = data.convert_llava(out, a.images or Path(a.src), a.root / a.name, split='train',
                                copy_images=a.copy_images, check_images=a.check_images, dry_run=a.dry_run,
                                source=f'{full} [::{a.every}]')
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
