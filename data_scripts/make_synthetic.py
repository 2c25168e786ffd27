#!/usr/bin/env python
"""Write a synthetic scenes dataset (vlrepro.data.make_synthetic) in vlrepro's on-disk format.

Presets: shapes (CrossGET), shapesvqa (DAS), tiles (LAPS), sciqa (ADEM-VL), world (VQAScore), or 'all'.
Examples:
  python data_scripts/make_synthetic.py --root data --preset shapes
  python data_scripts/make_synthetic.py --preset tiles --splits train=200,test=50 --seed 3
  python data_scripts/make_synthetic.py --preset shapes --set image_size=64 --set 'shapes=["circle","square"]' --name shapes64
"""
import argparse, json
from pathlib import Path
from vlrepro import data


def parse_splits(text):
    "'train=1000,test=100' -> {'train': 1000, 'test': 100}; 'train,test' -> ['train', 'test']."
    if not text: return None
    parts = [p.strip() for p in text.split(',') if p.strip()]
    if all('=' not in p for p in parts): return parts
    out = {}
    for p in parts:
        k, _, v = p.partition('=')
        if not v.isdigit(): raise ValueError(f"--splits: expected NAME=COUNT, got {p!r}")
        out[k] = int(v)
    return out


def parse_set(items):
    "['image_size=64', 'shapes=[\"circle\"]'] -> {'image_size': 64, 'shapes': ['circle']} (values are JSON, else strings)."
    out = {}
    for it in items or []:
        k, sep, v = it.partition('=')
        if not sep: raise ValueError(f"--set: expected KEY=VALUE, got {it!r}")
        try: out[k] = json.loads(v)
        except json.JSONDecodeError: out[k] = v
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--root', type=Path, default=data.default_root(), help='data root (default: $VLREPRO_DATA, else data/)')
    p.add_argument('--preset', default='shapes', choices=sorted(data.PRESETS) + ['all'])
    p.add_argument('--splits', default='', help="e.g. 'train=1000,test=100' (default: the preset's splits and sizes)")
    p.add_argument('--seed', type=int, default=0, help='dataset seed (default 0)')
    p.add_argument('--name', default=None, help='folder name under the root (default: the preset)')
    p.add_argument('--set', action='append', metavar='KEY=VALUE', help='override a generator option (JSON value); repeatable')
    p.add_argument('--overwrite', action='store_true', help='regenerate even if an identical dataset exists')
    p.add_argument('--dry-run', action='store_true', help='print what would be written, write nothing')
    a = p.parse_args(argv)
    splits, overrides = parse_splits(a.splits), parse_set(a.set)
    presets = sorted(data.PRESETS) if a.preset == 'all' else [a.preset]
    if a.name and len(presets) > 1: raise ValueError('--name needs a single --preset')
    for preset in presets:
        o = data.preset_options(preset, **overrides)        # checks the options
        sp = splits if isinstance(splits, dict) else {k: o['splits'].get(k, (200, 0))[0] for k in (splits or o['splits'])}
        out = a.root/(a.name or preset)
        if a.dry_run:
            print(f"dry run: would write {out} ({', '.join(f'{k} {v}' for k, v in sp.items())}; preset {preset}, seed {a.seed})")
            continue
        d = data.make_synthetic(a.root, preset, splits=sp, seed=a.seed, name=a.name, overwrite=a.overwrite, **overrides)
        print(f"wrote {d} ({', '.join(f'{k} {v}' for k, v in data.read_manifest(d)['counts'].items())}) and MANIFEST.json")


if __name__ == '__main__':
    raise SystemExit(data.script_main(main))
