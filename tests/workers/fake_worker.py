"""A stand-in for the trainer: speaks the event stream, writes checkpoints with sidecars, and can be
told to misbehave, so the launcher's failure handling is tested in seconds without MindSpore.

It reads the contract's environment (RANK_ID, RANK_SIZE, PSPNET_JOB_DIR, PSPNET_ATTEMPT,
PSPNET_RESUME, MS_ROLE) like the trainer does.  The loss is a pure function of the global step
(1 / (1 + global_step)), so a test can tell whether a resumed run continues where it left off.

Misbehaviour flags take effect only on ``--bad-rank`` (default: every rank) and, for the crash and
hang flags, only in attempt ``--bad-attempt`` (default 0), so a restarted group succeeds.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cluster.contracts.jobdir import JobPaths, checkpoint_name, read_sidecar, write_sidecar  # noqa: E402
from cluster.contracts.events import EventWriter  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="steps per epoch")
    p.add_argument("--step-time", type=float, default=0.01)
    p.add_argument("--compile-time", type=float, default=0.0)
    p.add_argument("--ckpt-every", type=int, default=0, help="checkpoint every N global steps")
    p.add_argument("--ckpt-time", type=float, default=0.0, help="seconds each checkpoint save takes")
    p.add_argument("--val-time", type=float, default=0.0, help="seconds of validation after each epoch")
    p.add_argument("--crash-at", type=int, default=0, help="exit with --exit-code at this global step")
    p.add_argument("--exit-code", type=int, default=3)
    p.add_argument("--kill-self-at", type=int, default=0, help="SIGKILL itself at this global step")
    p.add_argument("--hang-at", type=int, default=0, help="stop emitting (sleep) at this global step")
    p.add_argument("--silent-start", action="store_true", help="never send compiled/step (startup hang)")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--corrupt-at", type=int, default=0, help="damage the checkpoint of this global step after writing it")
    p.add_argument("--bad-rank", type=int, default=-1)
    p.add_argument("--bad-attempt", type=int, default=0, help="-1: every attempt")
    p.add_argument("--pid-file-dir", default="", help="write <dir>/<role>_<rank>.pid")
    p.add_argument("--sched-stay", action="store_true", help="as scheduler: run until SIGTERM")
    p.add_argument("--print-env", action="store_true")
    p.add_argument("--spawn-child", choices=("group", "session"), default="",
                   help="start a `sleep` child (in the rank's process group, or in a session of its own) "
                        "that outlives the rank unless someone ends it; its pid goes to "
                        "<pid-file-dir>/child_<rank>.pid")
    p.add_argument("--flood", type=int, default=0, help="print this many plain lines per step")
    p.add_argument("--big-line", type=int, default=0, help="print one line of this many bytes before crashing")
    args, _unknown = p.parse_known_args()

    env = os.environ
    rank = int(env.get("RANK_ID", "0"))
    attempt = int(env.get("PSPNET_ATTEMPT", "0"))
    role = env.get("MS_ROLE", "MS_WORKER")
    if args.pid_file_dir:
        name = "scheduler" if role == "MS_SCHED" else f"rank_{rank}"
        tmp = Path(args.pid_file_dir, f".{name}.tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, Path(args.pid_file_dir, f"{name}.pid"))
    bad = args.bad_rank in (-1, rank) and role != "MS_SCHED"
    if args.ignore_sigterm and bad:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if role == "MS_SCHED":
        print(f"fake scheduler on port {env.get('MS_SCHED_PORT')} for {env.get('MS_WORKER_NUM')} workers", flush=True)
        while args.sched_stay:
            time.sleep(0.05)
        return 0
    if args.print_env:
        keys = sorted(k for k in env if k.startswith(("RANK_", "DEVICE_", "PSPNET_", "MS_")))
        print("ENV " + json.dumps({k: env[k] for k in keys}), flush=True)

    if args.spawn_child and args.pid_file_dir and role != "MS_SCHED":
        import subprocess
        child = subprocess.Popen(["sleep", "300"], start_new_session=args.spawn_child == "session",
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tmp = Path(args.pid_file_dir, f".child_{rank}.tmp")
        tmp.write_text(str(child.pid))
        os.replace(tmp, Path(args.pid_file_dir, f"child_{rank}.pid"))

    ev = EventWriter.from_env()
    ev.emit("start", pid=os.getpid(), mode="dynamic" if "MS_ROLE" in env else "ranktable", backend="cpu",
            config_sha="fake", mindspore=None)
    print(f"rank {rank}: starting attempt {attempt}", flush=True)
    if args.silent_start and bad and args.bad_attempt in (-1, attempt):
        while True:
            time.sleep(0.05)
    time.sleep(args.compile_time)
    ev.emit("compiled", seconds=args.compile_time)

    global_step = 0
    job_dir = env.get("PSPNET_JOB_DIR")
    resume = env.get("PSPNET_RESUME")
    if resume:
        info = read_sidecar(resume)
        if info is None:
            print(f"error: resume checkpoint {resume} has no sidecar", file=sys.stderr, flush=True)
            return 2
        global_step = info.global_step
        ev.emit("resumed", path=resume, epoch=info.epoch, global_step=global_step)
        print(f"rank {rank}: resumed from {resume} at step {global_step}", flush=True)

    total = args.epochs * args.steps
    misbehave = bad and args.bad_attempt in (-1, attempt)
    while global_step < total:
        global_step += 1
        epoch = (global_step - 1) // args.steps + 1
        step = (global_step - 1) % args.steps + 1
        if misbehave and args.crash_at == global_step:
            if args.big_line:
                sys.stdout.write("z" * args.big_line + "\n")
            print(f"rank {rank}: crashing at step {global_step} as told", file=sys.stderr, flush=True)
            return args.exit_code
        if misbehave and args.kill_self_at == global_step:
            print(f"rank {rank}: SIGKILL myself at step {global_step} (t={time.time():.6f})", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if misbehave and args.hang_at == global_step:
            print(f"rank {rank}: hanging at step {global_step}", flush=True)
            while True:
                time.sleep(0.05)
        time.sleep(args.step_time)
        for i in range(args.flood):
            print(f"rank {rank} chatter {global_step}.{i} " + "." * 60)
        ev.emit("step", epoch=epoch, step=step, global_step=global_step, steps_per_epoch=args.steps,
                loss=1.0 / (1 + global_step), step_time_s=args.step_time, images_per_s=2 / max(args.step_time, 1e-6),
                lr=0.01)
        if args.ckpt_every and global_step % args.ckpt_every == 0 and job_dir:
            ev.emit("phase", phase="checkpoint", global_step=global_step)
            time.sleep(args.ckpt_time)
            d = JobPaths(job_dir).rank_ckpt_dir(rank)
            d.mkdir(parents=True, exist_ok=True)
            path = d / checkpoint_name(epoch, global_step)
            tmp = path.with_name(path.name + ".tmp")     # atomic, like the trainer's checkpoints
            tmp.write_bytes(f"fake weights rank {rank} step {global_step}\n".encode() * 8)
            os.replace(tmp, path)
            info = write_sidecar(path, epoch=epoch, global_step=global_step, config_sha="fake", rank=rank)
            ev.emit("checkpoint", path=str(path), epoch=epoch, global_step=global_step, bytes=info.bytes,
                    seconds=0.0, sha256=info.sha256)
            if args.corrupt_at == global_step and misbehave:
                with open(path, "r+b") as fh:
                    fh.write(b"XX")
        if step == args.steps:
            if args.val_time:
                ev.emit("phase", phase="validation", global_step=global_step)
                time.sleep(args.val_time)
            ev.emit("epoch", epoch=epoch, epoch_time_s=args.step_time * args.steps,
                    mean_step_time_s=args.step_time)
    ev.emit("finished", epochs=args.epochs, best_miou=None, wall_s=0.0)
    print(f"rank {rank}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
