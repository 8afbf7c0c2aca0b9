"""`pspnet-cluster`: the command line.

Startup must stay well under a second, so this module imports only argparse and the small command
modules that register sub-commands; each handler imports what it needs when it runs.  The
orchestrator never imports MindSpore: the commands that need it (model, data, eval, export, infer,
train) are handed to the trainer package in a fresh Python process (``exec``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from cluster.contracts.exitcodes import ExitCode

#: Modules that add sub-commands: each has ``add_commands(subparsers)``; parsers set ``func``.
COMMAND_MODULES = (
    "orchestrator.commands",   # launch, resume, stop, status, logs
    "orchestrator.submit",     # submit (a Slurm batch job)
    "cluster.cli",             # ranktable, devices
    "monitoring.cli",          # summary, top, metrics, report
)

#: Sub-commands run by the trainer package in its own process: name -> (module, help).
TRAINER_COMMANDS = {
    "train": ("trainer.train", "run the PSPNet trainer in this process (what each rank runs)"),
    "model": ("trainer.model_info", "parameter counts and output shapes of a config's model"),
    "data": ("trainer.data.cli", "data set tools: `data synth DIR` makes a small VOC-format set, `data check`"),
    "eval": ("trainer.eval", "evaluate a checkpoint: sliding window, flip, multi-scale; mIoU/mAcc/allAcc"),
    "export": ("trainer.export", "export a checkpoint to MINDIR (or ONNX)"),
    "infer": ("trainer.infer", "run a checkpoint on images and write colour masks"),
}

EPILOG = """\
examples:
  pspnet-cluster launch --devices 2                       # embedded default: generated data, smoke config, CPU
  pspnet-cluster launch --devices 8 --config voc2012 -- data_root=/data/VOC2012 epochs=50
  pspnet-cluster launch --devices 0-3 --dry-run           # print the plan, start nothing
  pspnet-cluster submit --nodes 2 --devices 8 --time 4:00:00   # a Slurm batch job (sbatch)
  pspnet-cluster status                                   # jobs under ./runs
  pspnet-cluster top runs/<job>                           # live per-device dashboard
  pspnet-cluster summary runs/<job>                       # per-device table after the fact

`pspnet-cluster COMMAND --help` explains each command.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pspnet-cluster",
        description="Launch, supervise, restart and monitor PSPNet training with MindSpore on a cluster of cards.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    for name, (module, help_text) in TRAINER_COMMANDS.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=None, trainer_module=module)
    return parser


def _local_health_reader():
    """This host's accelerator health readings for a standalone exporter: monitoring is handed them,
    it does not find the hardware itself (it does not import cluster)."""
    from cluster.accelerators import resolve
    from monitoring.exporter import CachedReader
    reader = resolve("auto").health_reader()
    return CachedReader(reader, ttl_s=10.0) if reader else None


def exec_trainer(module: str, args: List[str]) -> int:
    """Replace this process by ``python -m MODULE ARGS`` (the trainer side imports MindSpore)."""
    argv = [sys.executable, "-m", module, *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # trainer commands: everything after the name goes to the trainer untouched (--help included)
    if argv and argv[0] in TRAINER_COMMANDS:
        return exec_trainer(TRAINER_COMMANDS[argv[0]][0], argv[1:])
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import PackageNotFoundError, version
        try:
            print(f"pspnet-cluster {version('pspnet-cluster')}")
        except PackageNotFoundError:
            print("pspnet-cluster (not installed)")
        return 0
    if not args.command:
        parser.print_help()
        return ExitCode.BAD_INPUT
    if getattr(args, "wants_health_reader", False):
        args.health_reader = _local_health_reader()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.STOPPED
    except BrokenPipeError:  # `pspnet-cluster status --json | head`: the reader left, nothing is wrong
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
