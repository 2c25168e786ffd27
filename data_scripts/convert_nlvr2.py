#!/usr/bin/env python
"""Convert NLVR2 (the official JSON-lines annotations + image folders) into vlrepro's two-image format.

--src holds train.json, dev.json, test1.json (nlvr/nlvr2/data of the lil-lab/nlvr repository); --images the folder
holding train/<directory>/ and dev/, test1/ with <pair>-img0.png and <pair>-img1.png (the NLVR2 image release).
Rows: id, pair, image_0, image_1, sentence, label (bool). Example:
python data_scripts/convert_nlvr2.py --src ~/nlvr/nlvr2/data --images ~/nlvr2_images --root data
"""
from pathlib import Path

from vlrepro import data
from vlrepro import das_vl


def main(argv=None):
    p = data.script_parser(__doc__, 'nlvr2', 'folder with the NLVR2 JSONs (train.json, dev.json, test1.json)')
    p.add_argument('--images', type=Path, default=None, help='folder with train/ dev/ test1/ images (default: --src)')
    p.add_argument('--splits', default='train,dev,test1', help='JSON files to convert (default train,dev,test1)')
    a = p.parse_args(argv)
    if a.src is None: raise ValueError("pass --src, the folder with NLVR2's train.json / dev.json / test1.json")
    counts = das_vl.convert_nlvr2(a.src, a.images or a.src, a.root/a.name, [s for s in a.splits.split(',') if s],
                                  copy_images=a.copy_images, check_images=a.check_images, dry_run=a.dry_run)
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
