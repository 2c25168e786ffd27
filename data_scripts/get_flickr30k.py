#!/usr/bin/env python
"""Convert Flickr30k with Karpathy's splits (dataset_flickr30k.json) into vlrepro's retrieval format.

--src must hold dataset_flickr30k.json (from Karpathy's caption_datasets.zip) and the images, by default in
flickr30k-images/ (override with --images). Flickr30k's images are given out on request
(https://shannon.cs.illinois.edu/DenotationGraph/), so --download fetches only the Karpathy split file.
Result: <root>/flickr30k/{train,val,test}.jsonl (29,000 / 1,014 / 1,000 images, 5 captions each), images/ -> your folder.
Example: python data_scripts/get_flickr30k.py --src ~/raw/flickr30k --root data
"""
from pathlib import Path
from vlrepro import data

# file -> (url, sha256); sha256 None = not pinned yet: --download prints the digest it saw, record it here.
DOWNLOADS = {'caption_datasets.zip': ('https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip', None)}


def main(argv=None):
    p = data.script_parser(__doc__, 'flickr30k', 'folder with dataset_flickr30k.json and flickr30k-images/')
    p.add_argument('--images', type=Path, default=None, help='image folder (default: SRC/flickr30k-images)')
    a = p.parse_args(argv)
    src = data.resolve_src(a, DOWNLOADS)
    counts = data.convert_karpathy(src/'dataset_flickr30k.json', a.images or src/'flickr30k-images', a.root/a.name,
                                   copy_images=a.copy_images, check_images=a.check_images, dry_run=a.dry_run,
                                   license='Flickr30k: non-commercial research and educational use (Flickr terms of use); '
                                           'Karpathy splits: BSD')
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
