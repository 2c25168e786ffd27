#!/usr/bin/env python
"""Convert LaVIN's instruction mix (all_data.json, the data ADEM-VL's instruction model trains on) into vlrepro's instruction format.

--src is LaVIN's data folder: all_data.json ({"all": [{qid, instruction, answer, image, image_source}, ...]}: Alpaca-52k text
items, LLaVA-158k items on COCO and ScienceQA items), cocoimages/train/COCO_train2014_<image> (COCO train2014) and
images/train/<qid>/image.png (ScienceQA train). Rows keep `instruction` and `answer` verbatim (ADEM-VL's prompt and target) and
add a two-turn `conversations`. A LLaVA conversation list belongs to get_llava.py instead.
all_data.json is shared by the LaVIN authors on Google Drive (see the LaVIN README): nothing here downloads it.
Example: python data_scripts/get_lavin_instruct.py --src ~/raw/lavin_data --root data
"""
from vlrepro import data

# file -> (url, sha256): the image archives with a direct official link, for reference. --download is refused:
# all_data.json is shared only through the LaVIN README's Google Drive link, and the archives unpack into other folder names.
DOWNLOADS = {'train2014.zip': ('http://images.cocodataset.org/zips/train2014.zip', None),                 # -> cocoimages/train/
             'images/train.zip': ('https://scienceqa.s3.us-west-1.amazonaws.com/images/train.zip', None)}  # -> images/train/


def main(argv=None):
    p = data.script_parser(__doc__, 'lavin_instruct', "LaVIN's data folder (all_data.json, cocoimages/train/, images/train/)")
    p.add_argument('--json', default='all_data.json', help='the instruction file inside --src (default all_data.json)')
    p.add_argument('--key', default='all', help="the key of the file to read (default all, as ADEM-VL trains)")
    p.add_argument('--split', default='train', help='split name to write (default train)')
    a = p.parse_args(argv)
    if a.download: raise ValueError("get_lavin_instruct.py cannot download all_data.json (the LaVIN README's Google Drive link); "
                                    "fetch it and the images by hand, then pass --src")
    src = data.resolve_src(a, DOWNLOADS)
    from vlrepro import ademvl_sqa
    counts = ademvl_sqa.convert_lavin_instructions(src, a.root/a.name, key=a.key, split=a.split, json_name=a.json,
                                               copy_images=a.copy_images, check_images=a.check_images, dry_run=a.dry_run)
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
