"""Evaluate a checkpoint on a validation list: mIoU / mAcc / allAcc and per-class IoU.

    python -m trainer.eval --config NAME --ckpt PATH [--flip] [--scales 0.5,0.75,1.0,1.25,1.5,1.75]
                           [--list val.txt] [--limit N] [--json OUT] [--backend cpu] [KEY=VALUE ...]
    pspnet-cluster eval ...   (the same)

Whole images at their own size (trainer/predict.py: base-size resize, sliding windows, flip, scales),
compared with their full-size labels; pixels labelled 255 are ignored.  Several ranks (launched like
training, with the same environment) each evaluate their shard of the list (entries r, r+W, ...) and the
confusion matrices are summed exactly across ranks, so every rank prints the same result.
Prints the seed's line, e.g. ``VOC2012-AUG-ss:mIoU/mAcc/allAcc 0.6929/0.8305/0.9232.`` (``-ms`` with
several scales).  Exit codes: 0 done, 2 bad arguments/config/checkpoint, 3 bad data, 1 other failure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from trainer.config import ConfigError, load_config, parse_overrides
from trainer.world import WorldError, tune_cpu_env, world_from_env

PREFIX = {"voc2012": "VOC2012-AUG", "ade20k": "ADE20K"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pspnet-cluster eval", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="config name or YAML path (the training config)")
    p.add_argument("--ckpt", required=True, help="checkpoint (.ckpt) written by the trainer")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--scales", default="1.0", help="comma-separated scales of base_size (default 1.0)")
    p.add_argument("--list", default=None, help="list file (default: the config's val_list)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N entries (0: all)")
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument("--backend", default="cpu", choices=["cpu", "ascend", "gpu"])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def evaluate(cfg: Dict[str, Any], ckpt: str, world, scales: List[float], flip: bool,
             list_file: Optional[str] = None, limit: int = 0) -> Dict[str, Any]:
    from trainer.data.lists import load_sample, read_list
    from trainer.data.synth import ensure_dataset
    from trainer.metrics import ConfusionMeter, scores
    from trainer.model import use_sync_bn
    from trainer.predict import Predictor, load_net
    from trainer.world import all_reduce_counts

    root = ensure_dataset(cfg) if cfg.get("synthesize_if_missing") else Path(cfg["data_root"])
    list_path = Path(list_file) if list_file else Path(root) / cfg["val_list"]
    items = read_list(list_path, root, cfg.get("dataset", "voc2012"))
    if limit > 0:
        items = items[:limit]
    mine = items[world.rank::world.size]
    net = load_net(cfg, ckpt, sync_bn=False if world.size == 1 else use_sync_bn(world.size, world.backend))
    pred = Predictor(net, cfg["classes"], cfg["crop_size"], cfg["base_size"], scales, flip)
    meter = ConfusionMeter(int(cfg["classes"]), int(cfg.get("ignore_label", 255)))
    t0 = time.perf_counter()
    for i, sample in enumerate(mine, 1):
        image, label = load_sample(sample, int(cfg["classes"]), cfg.get("dataset", "voc2012"),
                                   int(cfg.get("ignore_label", 255)))
        meter.update(pred.predict(image), label)
        if i % 10 == 0 or i == len(mine):
            print(f"rank {world.rank}: {i}/{len(mine)} images, {time.perf_counter() - t0:.1f} s", flush=True)
    cm = all_reduce_counts(world, meter.cm)
    s = scores(cm)
    mode = "ms" if len(scales) > 1 else "ss"
    prefix = f"{PREFIX.get(cfg.get('dataset'), 'EVAL')}-{mode}"
    return {"line": s.line(prefix), "miou": s.miou, "macc": s.macc, "allacc": s.allacc,
            "iou": [None if v != v else float(v) for v in s.iou],
            "acc": [None if v != v else float(v) for v in s.acc],
            "images": len(items), "pixels": s.pixels, "scales": scales, "flip": flip, "ckpt": str(ckpt),
            "seconds": round(time.perf_counter() - t0, 3), "per_class": s.per_class_lines(),
            "confusion": cm.tolist()}


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    tune_cpu_env(args.backend)
    from trainer.predict import parse_scales
    try:
        cfg = load_config(args.config, parse_overrides(args.overrides))
        scales = parse_scales(args.scales)
        world = world_from_env(backend=args.backend)
    except (ConfigError, WorldError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from trainer.world import join
    if world.is_scheduler:
        join(world)
        return 0
    try:
        world = join(world)
        result = evaluate(cfg, args.ckpt, world, scales, args.flip, args.list, args.limit)
    except (FileNotFoundError, ValueError) as exc:
        code = 3 if type(exc).__name__ == "DataError" else 2
        print(f"error: {exc}", file=sys.stderr)
        return code
    for line in result["per_class"]:
        print(line)
    print(result["line"], flush=True)
    if args.json and world.rank == 0:
        Path(args.json).write_text(json.dumps({k: v for k, v in result.items() if k != "per_class"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
