"""Units of the orchestrator that need no processes: the supervisor on in-memory workers (so it does
not care where a worker runs), the restart policy, the job spec, the plan's environment."""
import json
import time

import pytest

from cluster.contracts.jobdir import checkpoint_name, write_sidecar
from orchestrator.capture import RankSink
from orchestrator.jobspec import JobSpec, SpecError, resolve
from orchestrator.plan import Placement, JobPlan, attempt_workers
from orchestrator.restart_policy import RestartPolicy, local_checkpoint_lookup
from orchestrator.supervisor import AttemptResult, Failure, StopRequest, Supervisor
from orchestrator.workers import ROLE_SCHEDULER, WorkerSpec


class MemWorker:
    """A worker that lives only in memory (what a remote worker looks like to the supervisor)."""

    def __init__(self, spec, exit_at=None, code=0, ignores_term=False):
        self.spec, self.pid = spec, None
        self.t0 = time.monotonic()
        self.exit_at, self.code, self.ignores_term = exit_at, code, ignores_term
        self.rc = None
        self.signals = []

    def poll(self):
        if self.rc is None and self.exit_at is not None and time.monotonic() - self.t0 >= self.exit_at:
            self.rc = self.code
        return self.rc

    def terminate(self):
        self.signals.append("TERM")
        if self.rc is None and not self.ignores_term:
            self.rc = -15

    def kill(self):
        self.signals.append("KILL")
        if self.rc is None:
            self.rc = -9

    def wait(self, timeout=None):
        return self.poll()

    def wait_fd(self):
        return None

    def join_output(self, timeout=None):
        pass


def _spec(rank, role="worker"):
    return WorkerSpec(rank=rank, local_rank=rank, device=rank, argv=("x",), role=role, host="elsewhere")


def _sinks(tmp_path, names):
    return {n: RankSink(n, tmp_path / f"{n}.log", tmp_path / f"{n}.jsonl") for n in names}


def test_supervisor_first_failure_stops_all(tmp_path):
    ws = {"rank_0": MemWorker(_spec(0)), "rank_1": MemWorker(_spec(1), exit_at=0.05, code=4),
          "rank_2": MemWorker(_spec(2), ignores_term=True)}
    sinks = _sinks(tmp_path, ws)
    sinks["rank_1"].line("about to fail")
    res = Supervisor(ws, sinks, grace=30, failure_grace=0.2, poll_interval=0.005).run()
    assert res.outcome == "failed" and res.failure.rank == 1 and res.failure.exit_code == 4
    assert res.failure.last_lines == ["about to fail"]
    assert res.exit_codes == {"rank_0": -15, "rank_1": 4, "rank_2": -9}
    assert ws["rank_2"].signals[:2] == ["TERM", "KILL"]
    assert 0.2 <= res.group_down_s < 10        # killed after the failure grace (0.2 s), not the grace (30 s)


def test_supervisor_success_waits_for_scheduler_and_stop_request(tmp_path):
    ws = {"scheduler": MemWorker(_spec(-1, ROLE_SCHEDULER), exit_at=0.1),
          "rank_0": MemWorker(_spec(0), exit_at=0.02), "rank_1": MemWorker(_spec(1), exit_at=0.03)}
    res = Supervisor(ws, _sinks(tmp_path, ws), poll_interval=0.005).run()
    assert res.outcome == "succeeded" and set(res.exit_codes.values()) == {0}
    stop = StopRequest()
    stop.request("SIGINT")
    ws = {"rank_0": MemWorker(_spec(0)), "rank_1": MemWorker(_spec(1), ignores_term=True)}
    res = Supervisor(ws, _sinks(tmp_path, ws), stop=stop, grace=0.3, failure_grace=0.0, poll_interval=0.005).run()
    assert res.outcome == "stopped" and res.stop_reason == "SIGINT"
    assert res.exit_codes == {"rank_0": -15, "rank_1": -9}
    assert res.group_down_s >= 0.3          # a stop gives the full grace, not the failure grace


def test_hang_clock_starts_after_compile(tmp_path):
    ws = {"rank_0": MemWorker(_spec(0))}
    sinks = _sinks(tmp_path, ws)
    sup = Supervisor(ws, sinks, hang_timeout=0.05, startup_timeout=10, poll_interval=0.005)
    assert sup._check_hang() is None              # still compiling: only the startup limit applies
    sinks["rank_0"].line('@pspnet {"event":"compiled","seconds":3}')
    time.sleep(0.08)
    f = sup._check_hang()
    assert f is not None and f.reason == "hang" and f.rank == 0


def _ckpt(job, rank, step, corrupt=False):
    d = job / "ckpt" / f"rank_{rank}"
    d.mkdir(parents=True, exist_ok=True)
    p = d / checkpoint_name(1, step)
    p.write_bytes(b"w" * (100 + step))
    write_sidecar(p, epoch=1, global_step=step, config_sha="c", rank=rank)
    if corrupt:
        p.write_bytes(b"x" * (100 + step))


def test_restart_policy_and_common_checkpoint(tmp_path):
    job = tmp_path / "job"
    for step in (2, 4, 6):
        _ckpt(job, 0, step)
    _ckpt(job, 1, 2)
    _ckpt(job, 1, 4, corrupt=True)                 # newest common step damaged on rank 1
    _ckpt(job, 1, 6)
    (job / "ckpt" / "rank_1" / (checkpoint_name(1, 6) + ".json")).unlink()   # no sidecar: does not count
    rp = local_checkpoint_lookup(str(job), [0, 1])
    assert rp.global_step == 2 and rp.paths[1].endswith("rank_1/" + checkpoint_name(1, 2))
    assert local_checkpoint_lookup(str(tmp_path / "none"), [0, 1]) is None
    pol = RestartPolicy(1)
    fail = AttemptResult("failed", {}, Failure("rank_0", 0, "exit", 1, None, 0.0, "x"))
    assert pol.decide(fail, 0).restart and not pol.decide(fail, 1).restart
    assert not pol.decide(AttemptResult("stopped", {}), 0).restart
    launch = AttemptResult("failed", {}, Failure("launcher", None, "launch", None, None, 0.0, "x"))
    assert not pol.decide(launch, 0).restart


def test_attempt_environment_and_resume_paths(tmp_path):
    spec = JobSpec(devices="2", job_id="j", job_dir=str(tmp_path), cwd=str(tmp_path), grace=20.0)
    plan = JobPlan(spec=spec, backend="cpu", mode="dynamic",
                   placements=[Placement(0, 0, 0), Placement(1, 1, 5)], base_argv=["prog"])
    ws = attempt_workers(plan, 3, ("127.0.0.1", 4242), resume={0: "/a.ckpt", 1: "/b.ckpt"})
    assert [w.name for w in ws] == ["scheduler", "rank_0", "rank_1"]
    assert ws[0].env["MS_ROLE"] == "MS_SCHED" and "RANK_ID" not in ws[0].env
    r1 = ws[2].env
    assert (r1["RANK_ID"], r1["DEVICE_ID"], r1["MS_NODE_ID"], r1["MS_SCHED_PORT"], r1["PSPNET_ATTEMPT"],
            r1["PSPNET_RESUME"]) == ("1", "5", "1", "4242", "3", "/b.ckpt")
    # a stopped rank may checkpoint its step within most of the grace before the launcher's SIGKILL
    assert r1["PSPNET_STOP_SAVE_S"] == "14"
    plan.mode = "ranktable"
    ws = attempt_workers(plan, 0)
    assert [w.name for w in ws] == ["rank_0", "rank_1"]
    assert ws[1].env["RANK_TABLE_FILE"] == str(tmp_path / "rank_table.json") and "MS_ROLE" not in ws[1].env


def test_job_spec_checks_fields(tmp_path):
    with pytest.raises(SpecError, match="max_restarts"):
        resolve({"devices": "2", "max_restarts": -1})
    with pytest.raises(SpecError, match="backend"):
        resolve({"devices": "2", "backend": "tpu"})
    with pytest.raises(SpecError, match="job_id"):
        resolve({"devices": "2", "job_id": "a/b"})
    s = resolve({"devices": "2", "job_id": "abc", "cmd": "python x.py --a 1"}, runs_dir="runs")
    assert s.cmd == ["python", "x.py", "--a", "1"] and s.job_dir.endswith("runs/abc")
    assert JobSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_console_views_and_rank_filter():
    import io
    from orchestrator.console import Console
    step = {"event": "step", "epoch": 1, "step": 2, "steps_per_epoch": 6, "loss": 0.5, "step_time_s": 0.25}
    out = io.StringIO()
    c = Console("stream", ranks=[1], out=out, tty=False)
    c.listener("rank_0", "zero", None)
    c.listener("rank_1", "one", None)
    c.listener("rank_1", "@pspnet {}", step)
    assert out.getvalue() == "[rank_1] one\n"
    out = io.StringIO()
    c = Console("progress", out=out, tty=False)
    c.listener("rank_0", "log line", None)
    c.listener("rank_0", "", step)
    c.listener("rank_0", "", dict(step, step=3))          # throttled: within 2 s of the last line
    c.listener("rank_0", "", {"event": "finished"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "epoch 1 step 2/6  loss 0.5000  0.250 s/step" in lines[0]
    assert "step 3/6" in lines[1] and lines[1].endswith("finished")
    out = io.StringIO()
    c = Console("quiet", out=out, tty=False)
    c.listener("rank_0", "x", step)
    c.info("launcher says hi")
    assert out.getvalue() == "launcher says hi\n"
    out = io.StringIO()
    c = Console("progress", out=out, tty=True)
    c.start(["rank_0", "rank_1", "scheduler"])
    c.listener("rank_1", "", step)
    time.sleep(0.7)
    c.finish()
    text = out.getvalue()
    assert "\x1b[" in text and "rank_1  epoch 1 step 2/6" in text and "scheduler" not in text


def test_scheduler_ending_badly_after_every_rank_finished_is_still_success(tmp_path):
    ws = {"scheduler": MemWorker(_spec(-1, ROLE_SCHEDULER), exit_at=0.08, code=1),
          "rank_0": MemWorker(_spec(0), exit_at=0.01), "rank_1": MemWorker(_spec(1), exit_at=0.02)}
    res = Supervisor(ws, _sinks(tmp_path, ws), poll_interval=0.005).run()
    assert res.outcome == "succeeded" and res.exit_codes["scheduler"] == 1
    # ...but a scheduler that dies while ranks still work fails the attempt
    ws = {"scheduler": MemWorker(_spec(-1, ROLE_SCHEDULER), exit_at=0.01, code=1), "rank_0": MemWorker(_spec(0))}
    res = Supervisor(ws, _sinks(tmp_path, ws), poll_interval=0.005).run()
    assert res.outcome == "failed" and res.failure.name == "scheduler" and res.failure.rank is None
    # a lingering scheduler is stopped on request
    stop = StopRequest()
    ws = {"scheduler": MemWorker(_spec(-1, ROLE_SCHEDULER)), "rank_0": MemWorker(_spec(0), exit_at=0.0)}
    stop.request("SIGINT")
    res = Supervisor(ws, _sinks(tmp_path, ws), stop=stop, poll_interval=0.005, scheduler_linger=60).run()
    assert res.outcome == "succeeded" and res.exit_codes["scheduler"] == -15


def test_failure_block_is_readable():
    from orchestrator.runner import format_failure
    lines = ["[WARNING] ME(1) noise"] * 15 + ["Traceback (most recent call last):", "ValueError: " + "x" * 400]
    f = Failure("rank_1", 1, "exit", 1, None, time.time(), "rank 1 exited with code 1", lines)
    text = format_failure("/j", 0, AttemptResult("failed", {"rank_0": -15, "rank_1": 1}, f, group_down_s=0.05))
    assert "first failure: rank 1 exited with code 1" in text and "rank_0 SIGTERM" in text
    assert "noise" not in text and "  | Traceback" in text and "..." in text
    assert "/j/logs/rank_1.log" in text
