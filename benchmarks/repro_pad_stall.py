"""Minimal reproduction of a MindSpore 2.10 CPU stall: ``ops.pad`` inside a GRAPH_MODE training graph.

    .venv/bin/python benchmarks/repro_pad_stall.py                   # ops.pad: stalls after a few steps
    .venv/bin/python benchmarks/repro_pad_stall.py --pad concat      # zeros + concat: every step runs
    .venv/bin/python benchmarks/repro_pad_stall.py --pad Pad         # the ops.Pad primitive: every step runs

The network is ``--layers`` blocks of ``conv1x1(pad(x))`` (plain ``nn.Conv2d``), a mean-square loss,
gradients and ``nn.Momentum``: nothing of this project is imported.  Each step is watched: a step that does
not return within ``--step-timeout`` seconds is reported as a stall (with the step number and the time the
previous steps took) and the program exits 1; all steps done: exit 0.

What was seen on a 2-core x86 machine (MindSpore 2.10.0, CPU, GRAPH_MODE): with ``ops.pad`` (PadV3 behind
it) and two or more pads in the graph, 4-15 steps of ~15 ms, then one step never returns, the process
spinning at 100% of one core inside the CPU PadV3 kernel's index loop (seen with gdb and perf).  One pad,
a forward pass only, ``ops.Pad`` or zeros + concat: 150 steps and more.  This is the report for MindSpore;
the project keeps ``ops.pad`` out of its training graphs (trainer/model/conv.py pads with zeros + concat).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pad", choices=["ops.pad", "Pad", "concat"], default="ops.pad",
                    help="how each block pads its input by 1 pixel on every side")
    ap.add_argument("--layers", type=int, default=3, help="conv1x1(pad(x)) blocks in the graph (stall: >= 2)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--size", type=int, default=16, help="input height and width")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--step-timeout", type=float, default=60.0, help="seconds after which a step is a stall")
    args = ap.parse_args()

    import numpy as np
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")

    class Block(nn.Cell):
        def __init__(self, c: int, how: str) -> None:
            super().__init__()
            self.how = how
            self.conv = nn.Conv2d(c, c, 1, has_bias=False)
            self.pad_op = ops.Pad(((0, 0), (0, 0), (1, 1), (1, 1)))

        def construct(self, x):
            if self.how == "ops.pad":
                x = ops.pad(x, (1, 1, 1, 1))
            elif self.how == "Pad":
                x = self.pad_op(x)
            else:
                n, c, h, w = x.shape
                zr = ops.zeros((n, c, 1, w), x.dtype)
                x = ops.concat((zr, x, zr), 2)
                zc = ops.zeros((n, c, h + 2, 1), x.dtype)
                x = ops.concat((zc, x, zc), 3)
            return self.conv(x)

    class Net(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.SequentialCell([Block(args.channels, args.pad) for _ in range(args.layers)])

        def construct(self, x, y):
            return ((self.blocks(x) - y) ** 2).mean()

    net = Net()
    step = nn.TrainOneStepCell(net, nn.Momentum(net.trainable_params(), 0.01, 0.9))
    step.set_train(True)
    rng = np.random.default_rng(0)
    n, c, s = 2, args.channels, args.size
    x = Tensor(rng.standard_normal((n, c, s, s)).astype(np.float32))
    y = Tensor(rng.standard_normal((n, c, s + 2 * args.layers, s + 2 * args.layers)).astype(np.float32))

    state = {"step": 0, "since": time.monotonic(), "times": []}

    def watch() -> None:
        while True:
            time.sleep(0.5)
            waited = time.monotonic() - state["since"]
            if waited > args.step_timeout:
                done = state["times"]
                print(f"STALL: step {state['step'] + 1} did not return within {args.step_timeout:.0f} s "
                      f"(pad={args.pad}, layers={args.layers}); {len(done)} steps before it took "
                      f"{' '.join(f'{t * 1000:.0f}' for t in done[-8:])} ms (last 8)", flush=True)
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    print(f"MindSpore {ms.__version__}, pad={args.pad}, layers={args.layers}, {args.steps} steps, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for i in range(args.steps):
        state["since"] = time.monotonic()
        t0 = time.perf_counter()
        loss = float(step(x, y).asnumpy())
        state["times"].append(time.perf_counter() - t0)
        state["step"] = i + 1
        if i < 3 or (i + 1) % 10 == 0:
            print(f"step {i + 1}: {state['times'][-1] * 1000:.1f} ms, loss {loss:.5f}", flush=True)
    times = state["times"][1:] or state["times"]
    print(f"OK: {args.steps} steps (pad={args.pad}, layers={args.layers}), median after the first "
          f"{sorted(times)[len(times) // 2] * 1000:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
