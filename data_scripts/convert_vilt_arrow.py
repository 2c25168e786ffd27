#!/usr/bin/env python
"""Convert ViLT's arrow files (VQAv2, Flickr30K Karpathy, NLVR2) into vlrepro's on-disk format, for DAS on ViLT/METER.

--src holds the files ViLT's write_vqa.py / write_f30k_karpathy.py / write_nlvr2.py wrote:
vqav2_{train,val,trainable_val,rest_val,test,test-dev}.arrow, f30k_caption_karpathy_{train,val,test}.arrow,
nlvr2_{train,dev,test1}.arrow (Arrow IPC files; images as encoded bytes). The image bytes are written as files under
<root>/<name>/images/<split>/; rows: VQA one per question (question, answer_scores, answers, question_id, image_id) plus a
label-indexed answer_vocab.json; Flickr30K one per image (captions); NLVR2 one per sentence (image_0, image_1,
sentence, label). Needs pyarrow (pip install vlrepro[arrow]).
Example: python data_scripts/convert_vilt_arrow.py --src ~/vilt_arrows --task vqav2 --root data --name vqav2_vilt
"""
from vlrepro import data
from vlrepro import das_vl


def main(argv=None):
    p = data.script_parser(__doc__, '', 'folder with the ViLT arrow files')
    p.add_argument('--task', required=True, choices=sorted(das_vl.ARROW_PREFIX), help='which arrow files to convert')
    p.add_argument('--splits', default='', help='comma-separated splits (default: every split whose arrow file exists)')
    a = p.parse_args(argv)
    if a.src is None: raise ValueError("pass --src, the folder with ViLT's arrow files (see DATA.md of dandelin/ViLT)")
    a.name = a.name or {'vqav2': 'vqav2_vilt', 'f30k': 'f30k_vilt', 'nlvr2': 'nlvr2_vilt'}[a.task]
    splits = [s for s in a.splits.split(',') if s] or None
    counts = das_vl.convert_vilt_arrow(a.src, a.root/a.name, a.task, splits, dry_run=a.dry_run)
    print(data.report(counts, a))


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
