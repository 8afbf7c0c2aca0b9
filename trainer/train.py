"""The PSPNet training program: what every rank of a job runs.

    python -m trainer.train --config NAME [--backend cpu|ascend|gpu] [--resume PATH] [KEY=VALUE ...]
    pspnet-cluster train ...   (the same)

The rank reads its place in the job from the environment (trainer/world.py), trains in GRAPH_MODE with
SGD (momentum, weight decay) and a per-iteration poly learning rate (heads at ``head_lr_mult`` x the
backbone), validates every ``val_every`` epochs (confusion matrix summed over ranks), checkpoints
(trainer/checkpoint.py) and writes the contract's event stream on stdout plus the seed's human lines.

Exit codes: 0 done (also a scheduler process); 1 training failed (exception, non-finite loss; an
``error`` event says what and where); 2 bad command line, config, environment or a refused resume;
3 bad data (list file / sample problem, named in the message); 130 SIGINT; 143 SIGTERM.

SIGTERM/SIGINT during training (after the first step): the rank finishes the step it is in, writes a
checkpoint, then exits 128+signal; ``PSPNET_STOP_SAVE_S`` (the launcher sets 0.7 x its grace; 7 s when
unset) bounds that, after which it exits at once without saving, as it does before training starts.

Fault injection for launcher tests: ``PSPNET_CRASH_AT_STEP=N`` makes the rank fail (exit 1, error event)
just before global step N runs, once; with ``PSPNET_CRASH_RANK=R`` only rank R does.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from cluster.contracts.env import RankEnv
from cluster.contracts.events import EventWriter
from trainer.config import ConfigError, config_sha, load_config, parse_overrides
from trainer.world import World, WorldError, tune_cpu_env, world_from_env

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DATA = 0, 1, 2, 3


class Terminated(Exception):
    """SIGTERM/SIGINT arrived: stop, say so, exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by signal {signal.Signals(signum).name}")
        self.signum = signum


class StopRequest:
    """A stop signal, shared by the watcher thread and the training loop.

    ``graceful`` is set while the loop checks ``signum`` after every step; outside it (start-up, compile,
    the end) the watcher ends the rank at once, as there is nothing newer than the last checkpoint."""

    def __init__(self, save_s: float) -> None:
        import threading
        self.save_s = save_s
        self.signum: Optional[int] = None
        self.graceful = False
        self.exiting = threading.Lock()     # whoever holds it ends the process: no double error event


def _stop_save_seconds() -> float:
    raw = os.environ.get("PSPNET_STOP_SAVE_S", "").strip()
    try:
        value = float(raw) if raw else 7.0
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        print(f"warning: PSPNET_STOP_SAVE_S={raw!r} is not a number of seconds >= 0; using 7", file=sys.stderr)
        value = 7.0
    return value


STOP = StopRequest(0.0)


class TrainingFailed(RuntimeError):
    """The run cannot go on (non-finite loss, injected crash, ...)."""


def _where(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    if not tb:
        return ""
    f = tb[-1]
    return f"{Path(f.filename).name}:{f.lineno} in {f.name}"


def say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------ cells

def build_cells(cfg: Dict[str, Any], world: World, total_steps: int):
    """The net, the compiled training cell (net + loss + SGD with two LR groups) and the eval cell."""
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from trainer.lr import group_schedules
    from trainer.model import SegCrossEntropy, build_loss, build_model, split_params, use_sync_bn

    net = build_model(cfg, sync_bn=use_sync_bn(world.size, world.backend))
    loss_fn = build_loss(cfg)
    schedules = group_schedules(cfg, total_steps)
    backbone, heads = split_params(net)
    groups = [{"params": backbone, "lr": Tensor(schedules["backbone"])},
              {"params": heads, "lr": Tensor(schedules["head"])}]
    # SGD with momentum, PyTorch semantics (v = m v + g + wd p; p -= lr v): MindSpore's fused Momentum op.
    # (nn.SGD would do the same maths but keeps one more buffer per parameter: +50% checkpoint bytes.)
    optimizer = nn.Momentum(groups, learning_rate=float(cfg["init_lr"]), momentum=float(cfg["momentum"]),
                            weight_decay=float(cfg["weight_decay"]))

    class NetWithLoss(nn.Cell):
        def __init__(self, network, loss):
            super().__init__()
            self.network = network
            self.loss = loss

        def construct(self, images, labels):
            return self.loss(self.network(images), labels)

    class EvalStep(nn.Cell):
        """Main logits -> (argmax prediction int32, summed CE over valid pixels, valid pixel count)."""

        def __init__(self, network, ignore):
            super().__init__()
            self.network = network
            self.ce = SegCrossEntropy(ignore)

        def construct(self, images, labels):
            logits = self.network(images)
            total, count = self.ce.sums(logits, labels)
            return ops.argmax(logits, 1).astype(ms.int32), total, count

    train_net = nn.TrainOneStepCell(NetWithLoss(net, loss_fn), optimizer)
    train_net.set_train(True)
    eval_net = EvalStep(net, cfg.get("ignore_label", 255))
    return net, train_net, eval_net, optimizer, schedules


# ------------------------------------------------------------------------------------ the loop

@dataclass
class EpochStats:
    steps: int = 0
    step_time: float = 0.0      # seconds of steps counted (compile step excluded)
    counted: int = 0
    data_wait: float = 0.0
    wall: float = 0.0


class Trainer:
    def __init__(self, cfg: Dict[str, Any], world: World, events: EventWriter, resume: Optional[str]) -> None:
        self.cfg, self.world, self.events, self.resume_arg = cfg, world, events, resume
        self.sha = config_sha(cfg)
        self.best_miou = 0.0
        self.global_step = 0
        self.saved_step = -1
        self.crash_at = self._crash_step()

    def _crash_step(self) -> Optional[int]:
        raw = os.environ.get("PSPNET_CRASH_AT_STEP", "").strip()
        only = os.environ.get("PSPNET_CRASH_RANK", "").strip()
        if not raw or (only and int(only) != self.world.rank):
            return None
        return int(raw)

    # -- setup
    def setup(self) -> None:
        import mindspore as ms
        from trainer.checkpoint import CheckpointManager, checkpoint_dir
        from trainer.data.loader import steps_per_epoch

        cfg, world = self.cfg, self.world
        ms.set_seed(int(cfg["seed"]))
        self.spe = steps_per_epoch(cfg, world.size)
        self.total_steps = int(cfg["epochs"]) * self.spe
        self.net, self.train_net, self.eval_net, self.optimizer, self.schedules = \
            build_cells(cfg, world, self.total_steps)
        from trainer.model.conv import resolve_impl
        say(f"model: PSPNet-ResNet50, {resolve_impl()} convolutions, {self.spe} steps per epoch, "
            f"{self.total_steps} steps in all")
        self.ckpt = CheckpointManager(checkpoint_dir(cfg, world.rank), rank=world.rank, config_sha=self.sha,
                                      keep=int(cfg["keep_checkpoints"]))
        self.start_epoch, self.skip_steps = 1, 0

    def restore(self) -> None:
        """Resume (``--resume`` or PSPNET_RESUME): weights, BN stats, momentum, global step / LR position,
        epoch and position in it, best mIoU."""
        from trainer.checkpoint import ResumeError, check_resume, load_into, resolve_resume_path, resume_point
        path = resolve_resume_path(self.resume_arg, self.world.rank)
        info = check_resume(path, self.sha)
        point = resume_point(path, info, self.spe)
        meta = info.sidecar or {}
        if int(meta.get("world_size", self.world.size)) != self.world.size or \
                int(meta.get("steps_per_epoch", self.spe)) != self.spe:
            say(f"warning: {path} was made with world size {meta.get('world_size')} and "
                f"{meta.get('steps_per_epoch')} steps per epoch, this run has {self.world.size} and {self.spe}: "
                f"training continues from global step {point.global_step}, but the data order differs from "
                f"the original run")
        missing = load_into(self.train_net, path)
        if missing:
            raise ResumeError(f"resume checkpoint {path} lacks {len(missing)} parameters of this model "
                              f"(e.g. {', '.join(missing[:3])})")
        step_now = int(self.optimizer.global_step.asnumpy().reshape(-1)[0])
        if step_now != point.global_step:
            raise ResumeError(f"resume checkpoint {path}: optimizer step {step_now} differs from its sidecar's "
                              f"global_step {point.global_step}")
        self.global_step = point.global_step
        self.best_miou = point.best_miou
        self.start_epoch, self.skip_steps = point.epoch, point.skip_steps
        self.events.emit("resumed", path=str(path), epoch=point.epoch, global_step=point.global_step,
                         skip_steps=point.skip_steps, best_miou=point.best_miou)
        say(f"resumed from {path}: epoch {point.epoch}, {point.skip_steps} steps of it done, "
            f"global step {point.global_step}, best miou {point.best_miou:.4f}")

    # -- one step
    def step(self, images: np.ndarray, labels: np.ndarray) -> float:
        from mindspore import Tensor
        if self.crash_at is not None and self.global_step + 1 == self.crash_at:
            raise TrainingFailed(f"injected crash before global step {self.crash_at} (PSPNET_CRASH_AT_STEP)")
        self.net.set_dropout_seed(int(self.cfg["seed"]), self.world.rank, self.global_step)
        loss = self.train_net(Tensor(images), Tensor(labels))
        return float(loss.asnumpy())   # the one host sync: the loss, for logging

    def compile(self, images: np.ndarray, labels: np.ndarray) -> float:
        from mindspore import Tensor
        t0 = time.perf_counter()
        self.train_net.compile(Tensor(images), Tensor(labels))
        seconds = time.perf_counter() - t0
        self.events.emit("compiled", seconds=round(seconds, 3))
        say(f"graph compiled in {seconds:.1f} s")
        return seconds

    # -- epochs
    def run_epoch(self, epoch: int, skip: int) -> EpochStats:
        from trainer.data.loader import train_batches
        from trainer.lr import lr_at
        cfg, batch, stats = self.cfg, int(self.cfg["batch_size"]), EpochStats()
        every = max(1, int(cfg["log_every"]))
        ckpt_steps = int(cfg["ckpt_every_steps"])
        t_epoch = time.perf_counter()
        with train_batches(cfg, self.world.rank, self.world.size, epoch, skip_steps=skip) as batches:
            for step in range(skip + 1, self.spe + 1):
                t0 = time.perf_counter()
                images, labels = next(batches)
                wait = batches.last_wait_s
                first = not getattr(self, "_compiled", False)
                if first:
                    self.compile(images, labels)
                    self._compiled = True
                    t0 = time.perf_counter() - wait
                lr = lr_at(self.schedules["backbone"], self.global_step)
                loss = self.step(images, labels)
                dt = time.perf_counter() - t0
                self.global_step += 1
                stats.steps += 1
                if not first:
                    stats.step_time += dt
                    stats.data_wait += wait
                    stats.counted += 1
                if not math.isfinite(loss):
                    raise TrainingFailed(f"loss is {loss} at epoch {epoch} step {step} (global step "
                                         f"{self.global_step}): training diverged; lower init_lr")
                self.losses.append(loss)
                if step % every == 0 or step == self.spe:
                    self.events.emit("step", epoch=epoch, step=step, global_step=self.global_step,
                                     steps_per_epoch=self.spe, loss=loss, step_time_s=round(dt, 4),
                                     images_per_s=round(batch / dt, 3) if dt > 0 else None, lr=lr,
                                     data_wait_s=round(wait, 4))
                    say(f"epoch {epoch} step {step}/{self.spe} global {self.global_step} loss {loss:.6f} "
                        f"lr {lr:.6g} time {dt:.3f} s")
                if ckpt_steps > 0 and self.global_step % ckpt_steps == 0 and step < self.spe:
                    self.save(epoch, step)
                STOP.graceful = STOP.save_s > 0
                self.stop_if_asked(epoch, step)
        stats.wall = time.perf_counter() - t_epoch
        return stats

    def validate(self) -> Dict[str, float]:
        from mindspore import Tensor
        from trainer.data.loader import val_batches
        from trainer.metrics import ConfusionMeter, scores
        from trainer.world import all_reduce_counts, all_reduce_float
        classes = int(self.cfg["classes"])
        meter = ConfusionMeter(classes, int(self.cfg.get("ignore_label", 255)))
        loss_sum, count = 0.0, 0.0
        self.eval_net.set_train(False)
        try:
            with val_batches(self.cfg, self.world.rank, self.world.size) as batches:
                for images, labels in batches:
                    pred, lsum, n = self.eval_net(Tensor(images), Tensor(labels))
                    meter.update(pred.asnumpy(), labels)
                    loss_sum += float(lsum.asnumpy())
                    count += float(n.asnumpy())
        finally:
            self.train_net.set_train(True)
        cm = all_reduce_counts(self.world, meter.cm)
        loss_sum, count = (float(v) for v in all_reduce_float(self.world, np.array([loss_sum, count])))
        s = scores(cm)
        return {"val_loss": loss_sum / max(count, 1.0), "miou": s.miou, "macc": s.macc, "allacc": s.allacc}

    def save(self, epoch: int, step_in_epoch: int, kind: str = "last") -> None:
        self.events.emit("phase", phase="checkpoint", global_step=self.global_step)
        extra = {"step_in_epoch": step_in_epoch, "steps_per_epoch": self.spe, "world_size": self.world.size,
                 "best_miou": self.best_miou, "total_steps": self.total_steps}
        ev = self.ckpt.save(self.train_net, epoch=epoch, global_step=self.global_step, extra=extra, kind=kind)
        if kind == "last":
            self.saved_step = self.global_step
        self.events.emit("checkpoint", **ev)
        say(f"saved {kind} checkpoint {ev['path']} ({ev['bytes'] / 1e6:.1f} MB, {ev['seconds']:.2f} s)")

    def stop_if_asked(self, epoch: int, step_in_epoch: int) -> None:
        """A stop signal arrived during training: checkpoint where the loop stands (unless that step is
        saved already), say so, and end the process with 128+signal."""
        if STOP.signum is None:
            return
        if self.saved_step != self.global_step:
            try:
                self.save(epoch, step_in_epoch)
            except Exception as exc:  # noqa: BLE001 - the stop still ends the rank as stopped, not failed
                say(f"warning: checkpoint on stop failed: {exc}")
        if STOP.exiting.acquire(blocking=False):     # else the watcher's deadline won and is exiting
            _report(self.events, Terminated(STOP.signum), 128 + STOP.signum)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + STOP.signum)     # no interpreter teardown: a collective there could block
        time.sleep(60)                      # the watcher ends the process meanwhile

    def run(self) -> int:
        cfg = self.cfg
        t_run = time.perf_counter()
        self.setup()
        if self.resume_arg:
            self.restore()
        self.losses: List[float] = []
        epochs = int(cfg["epochs"])
        device = self.world.device_id if self.world.device_id is not None else self.world.rank
        for epoch in range(self.start_epoch, epochs + 1):
            skip = self.skip_steps if epoch == self.start_epoch else 0
            st = self.run_epoch(epoch, skip)
            mean_step = st.step_time / st.counted if st.counted else st.wall / max(st.steps, 1)
            say(f"Train epoch time: {st.wall * 1000:5.3f} ms, per step time: {mean_step * 1000:5.3f} ms")
            fields: Dict[str, Any] = {
                "epoch": epoch, "epoch_time_s": round(st.wall, 3), "mean_step_time_s": round(mean_step, 4),
                "steps": st.steps, "data_wait_share": round(st.data_wait / st.step_time, 4) if st.step_time else None,
                "images_per_s": round(int(cfg["batch_size"]) / mean_step, 3) if mean_step else None}
            val_every = int(cfg["val_every"])
            if val_every > 0 and (epoch % val_every == 0 or epoch == epochs):
                t_val = time.perf_counter()
                self.events.emit("phase", phase="validation", global_step=self.global_step)
                m = self.validate()
                improved = m["miou"] > self.best_miou
                self.best_miou = max(self.best_miou, m["miou"])
                fields.update({k: round(v, 6) for k, v in m.items()}, best_miou=round(self.best_miou, 6),
                              val_time_s=round(time.perf_counter() - t_val, 3))
                say(f"Epoch: {epoch}, val_loss: {m['val_loss']:.8f}")
                say(f"=== epoch: {epoch:4d}, device id: {device:2d}, best miou: {self.best_miou:6.4f}, "
                    f"miou: {m['miou']:6.4f}")
                if improved:
                    self.save(epoch, self.spe, kind="best")
            self.events.emit("epoch", **fields)
            ckpt_every = int(cfg["ckpt_every"])
            if epoch == epochs or (ckpt_every > 0 and epoch % ckpt_every == 0):
                self.save(epoch, self.spe)
            self.stop_if_asked(epoch, self.spe)
        STOP.graceful = False
        wall = time.perf_counter() - t_run
        self.events.emit("finished", epochs=epochs, best_miou=round(self.best_miou, 6), wall_s=round(wall, 3),
                         global_step=self.global_step)
        say(f"finished: {epochs} epochs, {self.global_step} steps, best miou {self.best_miou:.4f}, "
            f"{wall:.1f} s")
        return EXIT_OK


# ------------------------------------------------------------------------------------ entry point

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer.train",
        description="Train PSPNet on this rank (the world comes from the environment: single process, "
                    "MindSpore dynamic cluster MS_*, or HCCL rank table RANK_TABLE_FILE).",
        epilog="exit codes: 0 done, 1 training failed, 2 bad config/environment/refused resume, 3 bad data, "
               "130/143 interrupted")
    p.add_argument("--config", default=None, help="config name (smoke, voc2012, ade20k) or YAML path")
    p.add_argument("--backend", default="cpu", choices=["cpu", "ascend", "gpu"], help="device backend")
    p.add_argument("--resume", default=None,
                   help="checkpoint to resume from (or a job/ckpt dir: its newest); also PSPNET_RESUME")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. epochs=2")
    return p


_STOP_SOCKETS = None


def install_stop_handlers(events: EventWriter) -> None:
    """SIGTERM/SIGINT end the rank with an ``error`` event and exit 128+signal, even while the main
    thread sits in a MindSpore kernel or collective (where a Python-level handler would never run): the
    signal number arrives on a wakeup socket that a watcher thread reads.  During training the watcher
    gives the loop ``STOP.save_s`` seconds to finish its step and checkpoint it (Trainer.stop_if_asked),
    then ends the rank itself: a rank whose peers are gone never finishes its collective.  Checkpoints
    are written atomically, so ending during a save leaves the previous one intact.
    SIGUSR1 dumps every thread's Python stack to stderr (for a rank that seems stuck)."""
    import faulthandler
    import socket
    import threading

    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, ValueError):
        pass
    global _STOP_SOCKETS
    rsock, wsock = socket.socketpair()
    _STOP_SOCKETS = (rsock, wsock)      # kept alive: a collected socket would close the wakeup fd
    wsock.setblocking(False)
    signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)   # the watcher acts; the main thread carries on

    def watch() -> None:
        while True:
            data = rsock.recv(1)
            if not data:
                return
            signum = data[0]
            if signum in (signal.SIGTERM, signal.SIGINT):
                if STOP.signum is not None:
                    continue            # a second signal changes nothing: the deadline already runs
                STOP.signum = signum
                if STOP.graceful:
                    time.sleep(STOP.save_s)
                if not STOP.exiting.acquire(blocking=False):
                    return              # the loop saved in time and is exiting
                exc = Terminated(signum)
                _report(events, exc, 128 + signum)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(128 + signum)

    threading.Thread(target=watch, name="pspnet-stop", daemon=True).start()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    tune_cpu_env(args.backend)      # before MindSpore loads (see trainer/world.py)
    try:
        cfg = load_config(args.config, parse_overrides(args.overrides))
        world = world_from_env(backend=args.backend)
    except (ConfigError, WorldError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    events = EventWriter.from_env()
    if world.is_scheduler:
        from trainer.world import join
        join(world)      # returns when the workers have finished
        return EXIT_OK
    STOP.save_s = _stop_save_seconds()
    install_stop_handlers(events)
    resume = args.resume or RankEnv.from_env().resume
    code = EXIT_FAILED
    try:
        import mindspore as ms
        from trainer.world import join
        world = join(world)
        events.base.update(rank=world.rank, world_size=world.size, device=world.device_id)
        events.emit("start", pid=os.getpid(), mode=world.mode, backend=world.backend, config_sha=config_sha(cfg),
                    mindspore=ms.__version__, config=cfg.get("_path"), resume=resume)
        say(f"PSPNet trainer: {world.describe()}, config {cfg.get('_path')} ({config_sha(cfg)})")
        return Trainer(cfg, world, events, resume).run()
    except BaseException as exc:  # noqa: BLE001 - every failure leaves an error event and a code
        code = _exit_code(exc)
        _report(events, exc, code)
    return code


def _exit_code(exc: BaseException) -> int:
    from trainer.checkpoint import ResumeError
    if isinstance(exc, (ResumeError, ConfigError, WorldError)):
        return EXIT_USAGE
    if type(exc).__name__ == "DataError":
        return EXIT_DATA
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, Terminated):
        return 128 + exc.signum
    return EXIT_FAILED


def _report(events: EventWriter, exc: BaseException, code: int) -> None:
    if code == EXIT_FAILED:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"error: {exc}", file=sys.stderr, flush=True)
    try:
        events.emit("error", message=f"{type(exc).__name__}: {exc}", where=_where(exc), exit_code=code)
    except Exception:  # noqa: BLE001 - stdout gone: the exit code still tells
        pass


if __name__ == "__main__":
    sys.exit(main())
