"""Training-step speed of the real PSPNet-ResNet50 on this machine: median step time, images/s, data wait.

    .venv/bin/python benchmarks/train_step.py [--crop 225] [--batch 2] [--steps 6] [--data DIR] [--threads N]

Builds the same cells as the trainer (trainer.train.build_cells: GRAPH_MODE, TrainOneStepCell, SGD momentum
with two poly-LR groups), feeds batches from the real data pipeline (trainer.data.loader on the generated
VOC-format set, made under --data if missing), compiles once, then times ``--steps`` steps.  Prints the
compile time, the median / min step time, images/s, the share of step time spent waiting for data, and
the ratio to the reference figure of the issue (3.7 s per step at crop 225, batch 2, same kind of machine).
Figures on a shared machine are noisy: run it when the machine is quiet and quote the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REFERENCE_S = 3.7   # s/step at crop 225, batch 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crop", type=int, default=225)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps after the compile step")
    ap.add_argument("--data", default=str(Path.home() / ".cache" / "pspnet-cluster" / "bench-voc"))
    ap.add_argument("--images", type=int, default=24, help="images in the generated data set")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--isa", default=None, help="ONEDNN_MAX_CPU_ISA to use ('' for oneDNN's own choice); "
                    "default: the trainer's (AVX2)")
    args = ap.parse_args()
    if args.isa is not None:
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.isa
        if not args.isa:
            del os.environ["ONEDNN_MAX_CPU_ISA"]
    from trainer.world import tune_cpu_env
    tune_cpu_env("cpu")

    from mindspore import Tensor
    from trainer.config import load_config
    from trainer.data.loader import train_batches
    from trainer.train import build_cells
    from trainer.world import join, world_from_env

    steps = args.steps + 1
    cfg = load_config("smoke", {"crop_size": args.crop, "batch_size": args.batch, "data_root": args.data,
                                "synth_images": args.images, "max_steps_per_epoch": steps, "epochs": 1,
                                "workers": args.workers, "synthesize_if_missing": True})
    world = join(world_from_env({}, "cpu"))
    net, train_net, _, _, _ = build_cells(cfg, world, total_steps=1000)
    times, waits = [], []
    epoch = 1
    load = os.getloadavg()[0]
    with train_batches(cfg, 0, 1, epoch) as it:
        images, labels = next(it)
        t0 = time.perf_counter()
        train_net.compile(Tensor(images), Tensor(labels))
        compile_s = time.perf_counter() - t0
        net.set_dropout_seed(0, 0, 0)
        train_net(Tensor(images), Tensor(labels)).asnumpy()   # first run (allocations)
        for i in range(args.steps):
            t0 = time.perf_counter()
            images, labels = next(it) if len(it) else (images, labels)
            wait = time.perf_counter() - t0
            net.set_dropout_seed(0, 0, i + 1)
            loss = float(train_net(Tensor(images), Tensor(labels)).asnumpy())
            times.append(time.perf_counter() - t0)
            waits.append(wait)
            print(f"step {i + 1}: {times[-1]:.3f} s (data wait {wait * 1000:.1f} ms) loss {loss:.4f}", flush=True)
    med = statistics.median(times)
    print(f"crop {args.crop} batch {args.batch}: compile {compile_s:.1f} s; step median {med:.3f} s, "
          f"min {min(times):.3f} s over {len(times)} steps; {args.batch / med:.2f} images/s; "
          f"data wait share {sum(waits) / sum(times):.4f}; load average at start {load:.2f} on "
          f"{os.cpu_count()} cores; ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(unset)')}")
    if args.crop == 225 and args.batch == 2:
        print(f"reference 3.7 s/step: this run is {REFERENCE_S / med:.2f}x the reference speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
