#!/usr/bin/env python
"""Convert VQAv2 (questions + annotations JSON, COCO images) into vlrepro's VQA format, with answer_vocab.json.

--src must hold v2_OpenEnded_mscoco_{train2014,val2014,test2015,test-dev2015}_questions.json,
v2_mscoco_{train2014,val2014}_annotations.json and the image folders train2014/ val2014/ test2015/.
Rows: question, answers (the 10 human answers), answer (multiple_choice_answer), question_type, answer_type,
question_id, image_id. answer_vocab.json: answers seen >= --min-answer-count times in train+val (9 -> 3,129).
Example: python data_scripts/get_vqav2.py --src ~/raw/vqav2 --root data --splits train,val
"""
from vlrepro import data

V = 'https://s3.amazonaws.com/cvmlp/vqa/mscoco/vqa/'
# file -> (url, sha256); sha256 None = not pinned yet: --download prints the digest it saw, record it here.
DOWNLOADS = {'v2_Questions_Train_mscoco.zip': (V + 'v2_Questions_Train_mscoco.zip', None),
             'v2_Questions_Val_mscoco.zip': (V + 'v2_Questions_Val_mscoco.zip', None),
             'v2_Questions_Test_mscoco.zip': (V + 'v2_Questions_Test_mscoco.zip', None),
             'v2_Annotations_Train_mscoco.zip': (V + 'v2_Annotations_Train_mscoco.zip', None),
             'v2_Annotations_Val_mscoco.zip': (V + 'v2_Annotations_Val_mscoco.zip', None),
             'train2014.zip': ('http://images.cocodataset.org/zips/train2014.zip', None),
             'val2014.zip': ('http://images.cocodataset.org/zips/val2014.zip', None),
             'test2015.zip': ('http://images.cocodataset.org/zips/test2015.zip', None)}


def main(argv=None):
    p = data.script_parser(__doc__, 'vqav2', 'folder with the VQAv2 JSONs and train2014/ val2014/ test2015/')
    p.add_argument('--splits', default='train,val', help='of train,val,test,test-dev (default train,val)')
    p.add_argument('--min-answer-count', type=int, default=9, help='answers seen fewer times leave answer_vocab.json (default 9)')
    a = p.parse_args(argv)
    src = data.resolve_src(a, DOWNLOADS)
    counts = data.convert_vqav2(src, a.root/a.name, splits=[s for s in a.splits.split(',') if s],
                                min_answer_count=a.min_answer_count,
                                copy_images=a.copy_images, check_images=a.check_images, dry_run=a.dry_run)
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
