"""Export a trained checkpoint for deployment: MINDIR (any backend), ONNX where MindSpore can.

    python -m trainer.export --config NAME --ckpt PATH [--format MINDIR|ONNX] [--batch 1] [--size N] [-o OUT]
    pspnet-cluster export ...   (the same)

The exported graph is the eval-mode PSPNet (main logits [batch, classes, size, size]; no aux head, no
dropout) with a fixed input of ``batch x 3 x size x size`` (size defaults to the config's crop_size), the
input being the normalised image (ImageNet mean/std on 0-255, CHW).  ONNX export depends on MindSpore's
operator coverage on the backend: when it fails, the command says so and exits 2 (MINDIR still works).
Exit codes: 0 written, 2 bad arguments/checkpoint or format not exportable here.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from trainer.config import ConfigError, load_config, parse_overrides
from trainer.world import tune_cpu_env

SUFFIX = {"MINDIR": ".mindir", "ONNX": ".onnx"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pspnet-cluster export", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--format", default="MINDIR", type=str.upper, choices=sorted(SUFFIX))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=0, help="input height = width (default: crop_size)")
    p.add_argument("-o", "--output", default=None, help="output file (default: next to the checkpoint)")
    p.add_argument("--backend", default="cpu", choices=["cpu", "ascend", "gpu"])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p


def export(cfg, ckpt: str, fmt: str, out: Path, batch: int, size: int) -> Path:
    import mindspore as ms
    import numpy as np
    from trainer.predict import load_net
    net = load_net(cfg, ckpt)
    dummy = ms.Tensor(np.zeros((batch, 3, size, size), np.float32))
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.with_suffix("")      # MindSpore appends the suffix itself
    ms.export(net, dummy, file_name=str(base), file_format=fmt)
    written = base.with_suffix(SUFFIX[fmt])
    if not written.is_file():
        raise RuntimeError(f"MindSpore reported no error but {written} was not written")
    return written


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    tune_cpu_env(args.backend)
    try:
        cfg = load_config(args.config, parse_overrides(args.overrides))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = args.size or int(cfg["crop_size"])
    out = Path(args.output) if args.output else Path(args.ckpt).with_suffix(SUFFIX[args.format])
    import mindspore as ms
    from trainer.world import BACKENDS
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(BACKENDS[args.backend])
    t0 = time.perf_counter()
    try:
        written = export(cfg, args.ckpt, args.format, out, args.batch, size)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - MindSpore raises RuntimeError/TypeError for unsupported ops
        if args.format != "ONNX":
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: MindSpore {ms.__version__} cannot export this PSPNet to ONNX on {args.backend}: {first}\n"
              f"(MINDIR export works: --format MINDIR)", file=sys.stderr)
        return 2
    print(f"exported {written} ({written.stat().st_size / 1e6:.1f} MB, input {args.batch}x3x{size}x{size}, "
          f"{time.perf_counter() - t0:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
