"""`pspnet-cluster model` / `python -m trainer.model_info`: check a config's model before launching.

Prints the trainable parameter counts (total, backbone, heads) and the output shapes of layer3, layer4
and the main/aux logits for a dummy batch run through the real network (GRAPH_MODE on CPU by default).

    python -m trainer.model_info --config voc2012 --crop 97 --json
    python -m trainer.model_info --config smoke --no-aux classes=150
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, List, Optional


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pspnet-cluster model",
                                description="Parameter counts and output shapes of a config's PSPNet.")
    p.add_argument("--config", default=None, help="config name (voc2012, ade20k, smoke) or YAML path")
    p.add_argument("--no-aux", action="store_true", help="without the auxiliary head")
    p.add_argument("--crop", type=int, default=None, help="input size (default: the config's crop_size)")
    p.add_argument("--classes", type=int, default=None, help="number of classes (default: the config's)")
    p.add_argument("--batch", type=int, default=1, help="dummy batch size (default 1)")
    p.add_argument("--counts-only", action="store_true", help="only count parameters; run nothing")
    p.add_argument("--backend", default="cpu", choices=("cpu", "ascend", "gpu"), help="device (default cpu)")
    p.add_argument("--pynative", action="store_true", help="PYNATIVE_MODE instead of GRAPH_MODE")
    p.add_argument("--bench", type=int, default=0, metavar="STEPS",
                   help="also time STEPS training steps (forward + backward + momentum SGD) at --crop/--batch")
    p.add_argument("--conv-impl", default="auto", choices=("auto", "native", "im2col"),
                   help="how convolutions run (auto: im2col on CPU, where native KxK convs are very slow)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return p


def _probe_cell(net):
    from mindspore import nn, ops

    class ShapeProbe(nn.Cell):
        """Runs every part once and returns layer3, layer4, main and (if any) aux logits."""

        def __init__(self, psp):
            super().__init__()
            self.psp = psp
            self.use_aux = psp.use_aux

        def construct(self, x):
            size = x.shape[2:]
            c3, c4 = self.psp.backbone(x)
            seed = self.psp.dropout_seed
            main = ops.interpolate(self.psp.head(self.psp.ppm(c4), seed), size=size, mode="bilinear",
                                   align_corners=True)
            if self.use_aux:
                aux = ops.interpolate(self.psp.aux_head(c3, seed), size=size, mode="bilinear",
                                      align_corners=True)
                return c3, c4, main, aux
            return c3, c4, main

    return ShapeProbe(net)


def model_info(cfg: Dict[str, Any], crop: int, batch: int = 1, run: bool = True,
               conv_impl: str = "auto") -> Dict[str, Any]:
    """Counts (and shapes, when ``run``) for ``cfg``; MindSpore's context must already be set."""
    import numpy as np
    import mindspore as ms
    from trainer.model import build_model, count_params

    t0 = time.perf_counter()
    net = build_model({**cfg, "pretrained": ""}, sync_bn=False, conv_impl=conv_impl)
    info: Dict[str, Any] = {
        "config": cfg.get("_path", ""), "classes": int(cfg["classes"]), "aux": bool(cfg["aux"]),
        "backbone": cfg.get("backbone", "resnet50_v2"), "output_stride": 8,
        "params": count_params(net), "build_s": round(time.perf_counter() - t0, 3),
    }
    if run:
        probe = _probe_cell(net)
        probe.set_train(False)
        x = ms.Tensor(np.zeros((batch, 3, crop, crop), np.float32))
        t1 = time.perf_counter()
        outs = probe(x)
        names = ["layer3", "layer4", "main"] + (["aux"] if net.use_aux else [])
        info["shapes"] = {"input": [batch, 3, crop, crop]}
        info["shapes"].update({n: list(o.shape) for n, o in zip(names, outs)})
        info["first_forward_s"] = round(time.perf_counter() - t1, 3)
    return info


def bench_train_step(cfg: Dict[str, Any], crop: int, batch: int, steps: int,
                     conv_impl: str = "auto") -> Dict[str, Any]:
    """Time ``steps`` training steps (net + loss, backward, Momentum SGD update) on random data.

    The first step includes graph compilation and is reported apart; wall and process-CPU seconds of
    the others are reported as medians (CPU seconds are less disturbed by other processes on the host).
    """
    import statistics
    import numpy as np
    import mindspore as ms
    from mindspore import nn
    from trainer.model import build_loss, build_model

    net = build_model({**cfg, "pretrained": ""}, sync_bn=False, conv_impl=conv_impl)
    loss_fn = build_loss(cfg)

    class NetWithLoss(nn.Cell):
        def __init__(self, net, loss):
            super().__init__()
            self.net = net
            self.loss = loss

        def construct(self, x, y):
            return self.loss(self.net(x), y)

    opt = nn.Momentum(net.trainable_params(), learning_rate=1e-3, momentum=0.9)
    step = nn.TrainOneStepCell(NetWithLoss(net, loss_fn), opt)
    step.set_train(True)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((batch, 3, crop, crop)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, int(cfg["classes"]), (batch, crop, crop)).astype(np.int32))
    wall, cpu, losses = [], [], []
    for i in range(steps + 1):
        net.set_dropout_seed(int(cfg.get("seed", 0)), 0, i)
        t, c = time.perf_counter(), time.process_time()
        losses.append(float(step(x, y).asnumpy()))
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    rest_wall, rest_cpu = wall[1:] or wall, cpu[1:] or cpu
    from trainer.model.conv import resolve_impl
    return {"crop": crop, "batch": batch, "steps": steps, "conv_impl": resolve_impl(conv_impl),
            "first_step_s": round(wall[0], 3),
            "median_step_s": round(statistics.median(rest_wall), 3),
            "median_step_cpu_s": round(statistics.median(rest_cpu), 3),
            "images_per_s": round(batch / statistics.median(rest_wall), 3),
            "losses": [round(v, 5) for v in losses]}


def _table(info: Dict[str, Any]) -> str:
    p = info["params"]
    lines = [f"PSPNet-{info['backbone']}  classes={info['classes']}  aux={'on' if info['aux'] else 'off'}  "
             f"output stride {info['output_stride']}",
             f"  {'trainable parameters':<22}{p['total']:>14,}",
             f"  {'  backbone':<22}{p['backbone']:>14,}",
             f"  {'  heads (PPM+head+aux)':<22}{p['heads']:>14,}"]
    if "shapes" in info:
        lines.append(f"  output shapes (dummy batch, first forward incl. compile {info['first_forward_s']:.1f} s):")
        for name, shape in info["shapes"].items():
            lines.append(f"    {name:<8}{' x '.join(str(s) for s in shape)}")
    if "bench" in info:
        b = info["bench"]
        lines.append(f"  training step ({b['conv_impl']} convs) at crop {b['crop']} batch {b['batch']} "
                     f"({b['steps']} steps): median "
                     f"{b['median_step_s']:.3f} s wall, {b['median_step_cpu_s']:.3f} s CPU, "
                     f"{b['images_per_s']:.2f} images/s; first step (compile) {b['first_step_s']:.1f} s")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from trainer.config import ConfigError, load_config, parse_overrides
    try:
        overrides = parse_overrides(args.overrides)
        if args.no_aux:
            overrides["aux"] = "false"
        if args.classes is not None:
            overrides["classes"] = str(args.classes)
        if args.crop is not None:
            overrides["crop_size"] = str(args.crop)
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.batch < 1:
        print("error: --batch must be at least 1", file=sys.stderr)
        return 2
    import mindspore as ms
    ms.set_context(mode=ms.PYNATIVE_MODE if args.pynative else ms.GRAPH_MODE)
    ms.set_device(args.backend.upper() if args.backend != "ascend" else "Ascend")
    info = model_info(cfg, int(cfg["crop_size"]), args.batch, run=not args.counts_only, conv_impl=args.conv_impl)
    if args.bench > 0:
        info["bench"] = bench_train_step(cfg, int(cfg["crop_size"]), args.batch, args.bench, args.conv_impl)
    print(json.dumps(info) if args.json else _table(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
