#!/usr/bin/env python
"""Convert the 11 CoOp few-shot datasets from CoOp's layout (its DATASETS.md) into vlrepro's classification format.

--src is CoOp's DATA folder, one sub-folder per dataset as DATASETS.md lays them out: imagenet/ (images/train, images/val,
classnames.txt), caltech-101/, oxford_pets/, stanford_cars/, oxford_flowers/, food-101/, fgvc_aircraft/ (variants.txt,
images_variant_*.txt), sun397/, dtd/, eurosat/, ucf101/, each with its images and split_zhou_<Name>.json
({"train": [[image path, label, class name], ...], "val": ..., "test": ...}).
The images and split files come from many places (see DATASETS.md), so --download is refused; DOWNLOADS lists the
direct archive links for reference.
Result: <root>/coop/<dataset>/{train,val,test}.jsonl (rows: image, label, classname), images/ -> the dataset's image folder.
Example: python data_scripts/get_coop.py --src ~/raw/coop_data --root data --datasets dtd eurosat
"""
from vlrepro import data
from vlrepro.crossget_clip import COOP_DATASETS, convert_coop

# file -> (url, sha256): the image archives with a direct official link, for reference. --download is refused: each
# dataset must be unpacked and completed with CoOp's split_zhou_*.json (Google Drive links in DATASETS.md) by hand.
DOWNLOADS = {
    'dtd-r1.0.1.tar.gz': ('https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz', None),
    'fgvc-aircraft-2013b.tar.gz': ('https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz', None),
    'EuroSAT.zip': ('http://madm.dfki.de/files/sentinel/EuroSAT.zip', None),
    '102flowers.tgz': ('https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz', None),
    'images.tar.gz': ('https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz', None),
    'SUN397.tar.gz': ('http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz', None),
}


def main(argv=None):
    p = data.script_parser(__doc__, 'coop', "CoOp's DATA folder (dtd/, caltech-101/, imagenet/, ...)")
    p.add_argument('--datasets', nargs='+', choices=sorted(COOP_DATASETS), default=None,
                   help='datasets to convert (default: every one found under --src)')
    a = p.parse_args(argv)
    if a.download: raise ValueError("get_coop.py cannot download: fetch each dataset as CoOp's DATASETS.md says, then pass --src")
    src = data.resolve_src(a, DOWNLOADS)
    names = a.datasets or [n for n, d in COOP_DATASETS.items() if (src/d['folder']).is_dir()]
    if not names:
        raise FileNotFoundError(f"no CoOp dataset under {src}: expected folders like {', '.join(d['folder'] for d in COOP_DATASETS.values())}")
    for n in names:
        counts = convert_coop(src, n, a.root/a.name/n, copy_images=a.copy_images, check_images=a.check_images, dry_run=a.dry_run)
        what = ', '.join(f'{k} {v}' for k, v in counts.items())
        print(f"dry run: would write {a.root/a.name/n} ({what})" if a.dry_run else f"wrote {a.root/a.name/n} ({what}) and MANIFEST.json")


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
