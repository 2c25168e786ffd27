#!/usr/bin/env python
"""Convert MS-COCO captions with Karpathy's splits (dataset_coco.json) into vlrepro's retrieval format.

--src must hold dataset_coco.json and the COCO 2014 images as train2014/ and val2014/ (override with --images, the
folder that holds those two). 'restval' joins train (113,287 train / 5,000 val / 5,000 test images), or keep it apart
with --restval restval. --download fetches the Karpathy file and the 2014 image zips (≈19 GB).
Example: python data_scripts/get_coco.py --src ~/raw/coco --root data
"""
from pathlib import Path
from vlrepro import data

# file -> (url, sha256); sha256 None = not pinned yet: --download prints the digest it saw, record it here.
DOWNLOADS = {'caption_datasets.zip': ('https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip', None),
             'train2014.zip': ('http://images.cocodataset.org/zips/train2014.zip', None),
             'val2014.zip': ('http://images.cocodataset.org/zips/val2014.zip', None)}


def main(argv=None):
    p = data.script_parser(__doc__, 'coco', 'folder with dataset_coco.json, train2014/ and val2014/')
    p.add_argument('--images', type=Path, default=None, help='folder holding train2014/ and val2014/ (default: SRC)')
    p.add_argument('--restval', default='train', choices=['train', 'val', 'restval'], help="where 'restval' goes (default train)")
    a = p.parse_args(argv)
    src = data.resolve_src(a, DOWNLOADS)
    counts = data.convert_karpathy(src/'dataset_coco.json', a.images or src, a.root/a.name, restval=a.restval,
                                   copy_images=a.copy_images, check_images=a.check_images, dry_run=a.dry_run,
                                   source='https://cocodataset.org + ' + DOWNLOADS['caption_datasets.zip'][0],
                                   license='COCO annotations CC BY 4.0; images: Flickr terms of use; Karpathy splits: BSD')
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
