"""Images/s of ``trainer.data.loader.train_batches`` with 1 and 2 workers (threads, and processes), side by side.

    .venv/bin/python benchmarks/data_loader.py [--crop 97] [--batch 2] [--size 500x375] [--images 200] [--epochs 3]

Generates a synthetic VOC-format set in a temporary directory (``--size`` 500x375 is the typical
VOC2012 image size; 160x120 is what the smoke config trains on), then times whole epochs of
``train_batches`` on one rank, including the pipeline start and stop, as the training loop sees them.
Prints one line per setting and the ratio to one worker.  Figures on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer.config import load_config          # noqa: E402
from trainer.data import loader, synth          # noqa: E402


def run(cfg, epochs: int) -> dict:
    rates, waits = [], []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        it = loader.train_batches(cfg, 0, 1, epoch)
        n = sum(x.shape[0] for x, _ in it)
        dt = time.perf_counter() - t0
        rates.append(n / dt)
        waits.append(it.first_wait_s)
    return {"images_per_s": statistics.median(rates), "start_s": statistics.median(waits), "images": n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crop", type=int, default=97)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", default="500x375", help="generated image size WIDTHxHEIGHT")
    ap.add_argument("--images", type=int, default=200, help="generated images (75%% train)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs timed per setting (median reported)")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="pspnet-bench-data-") as tmp:
        synth.generate(tmp, images=args.images, size=(w, h), log=None)
        base = {"data_root": tmp, "crop_size": str(args.crop), "batch_size": str(args.batch),
                "max_steps_per_epoch": "0", "synthesize_if_missing": "false"}
        print(f"train_batches, crop {args.crop}, batch {args.batch}, images {w}x{h}, "
              f"{os.cpu_count()} CPU cores; median of {args.epochs} epochs")
        results = []
        for workers, processes in ((1, False), (2, False), (2, True)):
            os.environ[loader.PROCESSES_ENV] = "1" if processes else "0"
            cfg = load_config("smoke", dict(base, workers=str(workers)))
            r = run(cfg, args.epochs)
            results.append(r)
            kind = "processes" if processes else "threads"
            print(f"  workers {workers} ({kind:9s}): {r['images_per_s']:7.1f} images/s "
                  f"({r['images']} images per epoch, first batch after {r['start_s'] * 1000:.0f} ms)  "
                  f"x{r['images_per_s'] / results[0]['images_per_s']:.2f} vs 1 worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
