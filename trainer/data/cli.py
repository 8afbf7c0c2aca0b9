"""``pspnet-cluster data``: data set tools (no MindSpore needed).

  python -m trainer.data.cli synth DIR [--images N] [--seed S] [--size WxH]
  python -m trainer.data.cli check [--config NAME|PATH] [KEY=VALUE ...] [--jobs J]

``synth`` writes a small VOC-format data set; ``check`` validates every line of a config's train and
val lists (files present, images readable, label sizes and class ids) and prints every problem as
``LIST:LINE: ...``; exit status 1 when there is any.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple


def _size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 160x120") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size {text!r} is too small (at least 8x8)")
    return w, h


def cmd_synth(args: argparse.Namespace) -> int:
    from .synth import generate
    root = Path(args.dir)
    if root.exists() and any(root.iterdir()) and not args.force:
        print(f"error: {root} exists and is not empty; choose another directory or pass --force "
              f"to write into it", file=sys.stderr)
        return 2
    if args.images < 2:
        print("error: --images must be at least 2 (one train and one val image)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    summary = generate(root, images=args.images, seed=args.seed, size=args.size, val_fraction=args.val_fraction)
    print(f"wrote {summary['images']} images ({summary['train']} train, {summary['val']} val, "
          f"{summary['size'][0]}x{summary['size'][1]}, seed {summary['seed']}) to {root} "
          f"in {time.monotonic() - t0:.1f} s")
    print(f"train with: pspnet-cluster launch --devices 2 -- data_root={root}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from trainer.config import ConfigError, load_config, parse_overrides
    from .lists import check_list, dataset_lists
    try:
        cfg = load_config(args.config, parse_overrides(args.overrides))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not cfg["data_root"]:
        print(f"error: {cfg['_path']}: data_root is empty; pass data_root=DIR", file=sys.stderr)
        return 2
    total = 0
    for list_path in dataset_lists(cfg):
        t0 = time.monotonic()
        n, problems = check_list(list_path, cfg["data_root"], cfg["dataset"], int(cfg["classes"]),
                                 int(cfg["ignore_label"]), jobs=args.jobs)
        for p in problems:
            print(p)
        print(f"{list_path}: {n} lines checked, {len(problems)} problem(s) ({time.monotonic() - t0:.1f} s)",
              file=sys.stderr)
        total += len(problems)
    return 1 if total else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pspnet-cluster data", description="Data set tools.")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    p = sub.add_parser("synth", help="write a small VOC-format data set (JPEG images, palette PNG labels, lists)")
    p.add_argument("dir", help="directory to create (must be missing or empty unless --force)")
    p.add_argument("--images", type=int, default=48, help="number of images, train + val (default 48)")
    p.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same bytes (default 0)")
    p.add_argument("--size", type=_size, default=(160, 120), help="image size WIDTHxHEIGHT (default 160x120)")
    p.add_argument("--val-fraction", type=float, default=0.25, help="share of images in val.txt (default 0.25)")
    p.add_argument("--force", action="store_true", help="write into a non-empty directory")
    p.set_defaults(func=cmd_synth)
    p = sub.add_parser("check", help="validate every line of a config's train and val lists")
    p.add_argument("--config", default=None, help="config name or YAML path (default: smoke)")
    p.add_argument("--jobs", type=int, default=4, help="threads decoding in parallel (default 4)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data_root=/data/voc")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
