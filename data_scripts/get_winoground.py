#!/usr/bin/env python
"""Convert Winoground (Hugging Face `facebook/winoground`) into vlrepro's Winoground-style format for VQAScore.

--src holds the dataset's files as the Hugging Face repository has them: examples.jsonl (id, caption_0, caption_1,
image_0, image_1, tag, ...) and images.zip (images/ex_N_img_K.png), either at the top or under data/; an unpacked
images/ folder works too (it is linked, not copied). Writes ROOT/winoground/test.jsonl + images/ + MANIFEST.json.
The dataset is gated: accept its terms on the Hub, then --download (with HF_TOKEN set) or fetch the two files yourself.
Example: python data_scripts/get_winoground.py --src ~/raw/winoground --root data
"""
from vlrepro import data
from vlrepro.vqascore_eval import convert_winoground

H = 'https://huggingface.co/datasets/facebook/winoground/resolve/main/data/'
# file -> (url, sha256); sha256 None = not pinned yet: --download prints the digest it saw, record it here.
DOWNLOADS = {'examples.jsonl': (H + 'examples.jsonl', None), 'images.zip': (H + 'images.zip', None)}


def main(argv=None):
    p = data.script_parser(__doc__, 'winoground', 'folder with examples.jsonl and images.zip (or images/)')
    a = p.parse_args(argv)
    src = data.resolve_src(a, DOWNLOADS)
    counts = convert_winoground(src, a.root/a.name, copy_images=a.copy_images, check_images=a.check_images,
                                dry_run=a.dry_run)
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
