"""Training-step speed of the real PSPNet-ResNet50, broken into forward, backward and optimizer, per crop.

    .venv/bin/python benchmarks/train_step.py [--crops 97,225,473] [--batch 2] [--steps 5] [--isa ISA]
    .venv/bin/python benchmarks/train_step.py --crops 225 --loss-only     # the two loss formulations

For each crop it builds the trainer's own cells (trainer.train.build_cells: GRAPH_MODE, SGD momentum with the
two poly-LR groups), takes batches from the real data pipeline (the generated VOC-format set, made under
--data if missing) and times, each compiled once and then run ``--steps`` times (median):

- ``forward``: net + loss in training mode;
- ``fwd+bwd``: the gradients of the loss with respect to every trainable parameter;
- ``optimizer``: ``nn.Momentum`` applying a set of gradients (49 M parameters);
- ``step``: the compiled training step (``TrainOneStepCell``: all of the above in one graph), timed before and
  after the parts (the lower median counts: the load of a shared machine moves during a run).

backward = fwd+bwd - forward.  ``--loss-only`` times the loss alone (forward + backward on random logits of
the crop's size): the fused formulation the trainer uses against the log-softmax + gather one, side by side.
``--isa ''`` (or ``ALL``) runs oneDNN with its own ISA choice; by default the trainer's cap (AVX2) applies.
Figures on a shared machine are noisy: the load average is printed with them.
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


def median_time(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_crop(crop: int, args) -> dict:
    from mindspore import Tensor, nn, ops
    from trainer.config import load_config
    from trainer.data.loader import train_batches
    from trainer.train import build_cells
    from trainer.world import world_from_env

    cfg = load_config("smoke", {"crop_size": crop, "batch_size": args.batch, "data_root": args.data,
                                "synth_images": args.images, "max_steps_per_epoch": 1, "epochs": 1,
                                "workers": 2, "synthesize_if_missing": True})
    net, train_net, _, optimizer, _ = build_cells(cfg, world_from_env({}, "cpu"), total_steps=100000)
    with train_batches(cfg, 0, 1, 1) as it:
        images, labels = next(it)
    x, y = Tensor(images), Tensor(labels)
    net.set_dropout_seed(0, 0, 0)
    net_with_loss = train_net.network
    weights = train_net.weights

    class FwdBwd(nn.Cell):
        def __init__(self):
            super().__init__()
            self.net_with_loss = net_with_loss
            self.grad = ops.GradOperation(get_by_list=True)

        def construct(self, a, b):
            return self.grad(self.net_with_loss, weights)(a, b)

    class Apply(nn.Cell):
        def __init__(self):
            super().__init__()
            self.optimizer = optimizer

        def construct(self, grads):
            return self.optimizer(grads)

    fwd_bwd, apply = FwdBwd(), Apply()
    out = {"crop": crop}
    t0 = time.perf_counter()
    float(train_net(x, y).asnumpy())
    out["compile_step_s"] = time.perf_counter() - t0
    out["step"] = median_time(lambda: float(train_net(x, y).asnumpy()), args.steps)
    float(net_with_loss(x, y).asnumpy())
    out["forward"] = median_time(lambda: float(net_with_loss(x, y).asnumpy()), args.steps)
    grads = fwd_bwd(x, y)
    out["fwd+bwd"] = median_time(lambda: fwd_bwd(x, y)[-1].asnumpy(), args.steps)
    apply(grads)
    out["optimizer"] = median_time(lambda: apply(grads), args.steps)
    # the step again: on a shared machine the load moves during a run; the lower of the two medians counts
    out["step"] = min(out["step"], median_time(lambda: float(train_net(x, y).asnumpy()), args.steps))
    out["backward"] = out["fwd+bwd"] - out["forward"]
    return out


def bench_loss(crop: int, args) -> dict:
    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, nn, ops
    from trainer.model.loss import LogSoftmaxGatherCE, SegCrossEntropy

    class FwdBwd(nn.Cell):
        def __init__(self, loss):
            super().__init__()
            self.loss = loss
            self.grad = ops.GradOperation(get_all=True)

        def construct(self, a, b):
            return self.loss(a, b), self.grad(self.loss)(a, b)[0]

    rng = np.random.default_rng(0)
    logits = Tensor(rng.standard_normal((args.batch, 21, crop, crop)).astype(np.float32))
    lab = rng.integers(0, 21, (args.batch, crop, crop)).astype(np.int32)
    lab[rng.random(lab.shape) < 0.1] = 255
    labels = Tensor(lab)
    out = {"crop": crop}
    for name, cell in (("fused", FwdBwd(SegCrossEntropy(255))), ("log_softmax+gather", FwdBwd(LogSoftmaxGatherCE()))):
        cell(logits, labels)[1].asnumpy()
        out[name] = median_time(lambda: cell(logits, labels)[1].asnumpy(), args.steps)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", default="97,225,473", help="comma-separated crop sizes")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed runs of each part after its compile run")
    ap.add_argument("--data", default=str(Path.home() / ".cache" / "pspnet-cluster" / "bench-voc"))
    ap.add_argument("--images", type=int, default=24, help="images in the generated data set")
    ap.add_argument("--isa", default=None, help="ONEDNN_MAX_CPU_ISA ('' or ALL: oneDNN's own choice); "
                    "default: the trainer's (AVX2)")
    ap.add_argument("--loss-only", action="store_true", help="time the two loss formulations only")
    args = ap.parse_args()
    if args.isa is not None:
        # '' means "no cap": say so with oneDNN's own word for it, so that the trainer's start-up default
        # (which only fills in an unset variable) does not put the AVX2 cap back
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.isa or "ALL"
    from trainer.world import tune_cpu_env
    tune_cpu_env("cpu")
    import mindspore as ms
    from trainer.model.conv import resolve_impl
    from trainer.world import join, world_from_env
    join(world_from_env({}, "cpu"))
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    crops = [int(c) for c in args.crops.split(",") if c.strip()]
    print(f"MindSpore {ms.__version__}, batch {args.batch}, ONEDNN_MAX_CPU_ISA={isa}, {resolve_impl()} convs, "
          f"{os.cpu_count()} cores", flush=True)
    for crop in crops:
        load = os.getloadavg()
        if args.loss_only:
            r = bench_loss(crop, args)
            print(f"crop {crop}: loss forward+backward, median of {args.steps}: fused {r['fused'] * 1000:.1f} ms, "
                  f"log_softmax+gather {r['log_softmax+gather'] * 1000:.1f} ms "
                  f"(load average {load[0]:.2f})", flush=True)
            continue
        r = bench_crop(crop, args)
        print(f"crop {crop}: step {r['step']:.3f} s = forward {r['forward']:.3f} + backward {r['backward']:.3f} "
              f"+ optimizer {r['optimizer']:.3f} (+ {r['step'] - r['fwd+bwd'] - r['optimizer']:+.3f} rest); "
              f"{args.batch / r['step']:.2f} images/s; first step (compile) {r['compile_step_s']:.1f} s; "
              f"median of {args.steps}; load average {load[0]:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
