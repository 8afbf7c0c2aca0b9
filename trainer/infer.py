"""Run a checkpoint on images and write colour masks (8-bit palette PNGs with the VOC colour map).

    python -m trainer.infer --config NAME --ckpt PATH -o OUT_DIR IMAGE_OR_DIR... [--flip] [--scales 1.0]
    pspnet-cluster infer ...   (the same)

For each input image ``x.jpg`` (directories are searched for .jpg/.jpeg/.png), ``OUT_DIR/x.png`` holds the
predicted class ids as palette indices, so it opens as a colour mask and reads back as ids (the VOC label
format).  Prediction is the evaluation's (base-size resize, sliding windows, optional flip and scales).
Exit codes: 0 written, 2 bad arguments/checkpoint, 3 unreadable image.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from trainer.config import ConfigError, load_config, parse_overrides
from trainer.world import tune_cpu_env

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pspnet-cluster infer", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None)
    p.add_argument("--ckpt", required=True)
    p.add_argument("-o", "--output", required=True, help="directory for the masks")
    p.add_argument("--flip", action="store_true")
    p.add_argument("--scales", default="1.0")
    p.add_argument("--backend", default="cpu", choices=["cpu", "ascend", "gpu"])
    p.add_argument("inputs", nargs="+", help="images or directories of images; KEY=VALUE items are overrides")
    return p


def find_images(inputs: List[str]) -> List[Path]:
    found: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"input {item}: no such file or directory")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(inputs)}")
    return found


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    tune_cpu_env(args.backend)
    overrides = [a for a in args.inputs if "=" in a and not Path(a).exists()]
    inputs = [a for a in args.inputs if a not in overrides]
    from trainer.predict import parse_scales
    try:
        cfg = load_config(args.config, parse_overrides(overrides))
        scales = parse_scales(args.scales)
        images = find_images(inputs)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import mindspore as ms
    import numpy as np
    from trainer.data.lists import DataError, read_image
    from trainer.data.synth import encode_palette_png
    from trainer.predict import Predictor, load_net
    from trainer.world import BACKENDS
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(BACKENDS[args.backend])
    try:
        net = load_net(cfg, args.ckpt)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    pred = Predictor(net, cfg["classes"], cfg["crop_size"], cfg["base_size"], scales, args.flip)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for path in images:
        try:
            image = read_image(str(path), str(path))
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3
        mask = pred.predict(image).astype(np.uint8)
        target = out / (path.stem + ".png")
        target.write_bytes(encode_palette_png(mask))
        present = ", ".join(str(int(c)) for c in np.unique(mask))
        print(f"{path} -> {target} (classes {present})", flush=True)
    print(f"wrote {len(images)} masks to {out} in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
