"""The backend registry and the interface contract: by-name lookup, launcher detection, a clean error for
a backend this build lacks, and the local backend's side of the contract with real processes."""
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from orchestrator.backends import (Backend, BackendError, Registry, choose_launcher, get_backend, names,
                                   open_backend)
from orchestrator.backends.base import NodeView
from orchestrator.backends.local import LocalBackend
from orchestrator.jobspec import JobSpec
from orchestrator.plan import PlanError
from orchestrator.workers import WorkerSpec


class Lines:
    def __init__(self):
        self.lines, self.closed = [], False

    def line(self, text):
        self.lines.append(text)

    def close(self):
        self.closed = True


def test_builtin_names_and_lookup():
    assert {"local", "ssh", "slurm"} <= set(names())
    assert get_backend("local") is LocalBackend
    with pytest.raises(BackendError, match="unknown launcher; choose one of .*local"):
        get_backend("nomad")


def test_a_missing_backend_module_is_a_clear_error_not_an_import_crash():
    reg = Registry({"gone": "orchestrator.backends.not_in_this_build:Gone"})
    with pytest.raises(BackendError, match=r"no gone backend \(orchestrator/backends/not_in_this_build.py is missing\)"):
        reg.get("gone")


def test_a_missing_dependency_of_a_backend_is_not_reported_as_a_missing_backend(tmp_path, monkeypatch):
    (tmp_path / "needs_dep.py").write_text("import a_module_nobody_has\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="a_module_nobody_has"):
        Registry({"x": "needs_dep:X"}).get("x")


def test_register_checks_what_it_is_given():
    reg = Registry()
    with pytest.raises(TypeError):
        reg.register("bad", object)
    with pytest.raises(ValueError):
        reg.register("a b", LocalBackend)
    reg.register("mine", LocalBackend)
    assert reg.get("mine") is LocalBackend and reg.names() == ["mine"]


def test_launcher_detection_order():
    assert choose_launcher("local", "h1,h2", {"SLURM_JOB_ID": "7"}) == "local"     # explicit wins
    assert choose_launcher(None, "h1,h2", {"SLURM_JOB_ID": "7"}) == "ssh"
    assert choose_launcher(None, None, {"SLURM_JOB_ID": "7"}) == "slurm"
    assert choose_launcher(None, None, {"SLURM_JOB_ID": ""}) == "local"
    assert choose_launcher(None, None, {}) == "local"


def test_open_backend_uses_the_spec_launcher(tmp_path):
    spec = JobSpec(devices="2", job_id="j", job_dir=str(tmp_path), cwd=str(tmp_path), launcher="local")
    with open_backend(spec) as b:
        assert isinstance(b, LocalBackend) and b.spec is spec
        assert b.node_view("localhost") == NodeView(job_dir=str(tmp_path))


def test_an_incomplete_backend_cannot_be_made():
    class Half(Backend):
        name = "half"

        def discover(self):
            return []

    with pytest.raises(TypeError):
        Half(JobSpec())


def test_local_discover_maps_bad_devices_to_a_plan_error(tmp_path):
    b = LocalBackend(JobSpec(devices="0-3,x", job_dir=str(tmp_path), backend="cpu"))
    with pytest.raises(PlanError, match="--devices"):
        b.discover()
    servers = LocalBackend(JobSpec(devices="2", job_dir=str(tmp_path), backend="cpu")).discover()
    assert [d.device_id for d in servers[0].devices] == [0, 1]


def _sleeper(rank, job_id, tmp_path):
    code = "import sys,time; print('up', flush=True); time.sleep(60)"
    return WorkerSpec(rank=rank, local_rank=rank, device=None, argv=(sys.executable, "-c", code),
                      env={"PSPNET_JOB_ID": job_id, "RANK_ID": str(rank)}, cwd=str(tmp_path))


def test_local_start_stats_and_group_kill(tmp_path):
    spec = JobSpec(devices="2", job_id="jl", job_dir=str(tmp_path), cwd=str(tmp_path))
    b = LocalBackend(spec)
    sinks = {f"rank_{r}": Lines() for r in (0, 1)}
    live = b.start_all([_sleeper(r, "jl", tmp_path) for r in (0, 1)], sinks)
    try:
        deadline = time.monotonic() + 30
        while not all(s.lines for s in sinks.values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(s.lines == ["up"] for s in sinks.values())
        st = b.stats()
        assert sorted(st) == [0, 1] and all(v["rss_bytes"] > 0 and v["pid"] for v in st.values())
        live["rank_0"].kill()
        assert live["rank_0"].wait(10) == -signal.SIGKILL
        assert sorted(b.stats()) == [1]                 # a dead rank is not reported
    finally:
        for h in live.values():
            h.kill()
            h.wait(10)
    b.close()


def test_start_all_kills_what_started_when_one_cannot_start(tmp_path):
    b = LocalBackend(JobSpec(devices="2", job_id="jx", job_dir=str(tmp_path), cwd=str(tmp_path)))
    good = _sleeper(0, "jx", tmp_path)
    bad = WorkerSpec(rank=1, local_rank=1, device=None, argv=("/nonexistent/prog",), cwd=str(tmp_path))
    from orchestrator.workers import LaunchError
    with pytest.raises(LaunchError, match="command not found"):
        b.start_all([good, bad], {"rank_0": Lines(), "rank_1": Lines()})
    assert b.stats() == {}


def test_local_leftovers_are_the_processes_carrying_the_jobs_tag(tmp_path):
    from orchestrator.jobstate import JobState
    spec = JobSpec(devices="2", job_id="mine", job_dir=str(tmp_path / "mine"), cwd=str(tmp_path))

    def sleeper(job_id, job_dir):
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                                env={**os.environ, "PSPNET_JOB_ID": job_id, "PSPNET_JOB_DIR": job_dir})

    ours = sleeper("mine", spec.job_dir)
    same_id_elsewhere = sleeper("mine", str(tmp_path / "other"))     # another job dir: another job
    other = sleeper("someone-else", spec.job_dir)
    try:
        state = JobState.new(spec.to_dict(), 2, None)
        wait_for_env = time.monotonic() + 10
        lines = []
        while not lines and time.monotonic() < wait_for_env:   # /proc/PID/environ is there once exec'd
            lines = LocalBackend(spec).stop_leftovers(state)
            time.sleep(0.05)
        assert lines == [f"ended 1 leftover process(es) of the job: {ours.pid}"]
        assert ours.wait(10) == -signal.SIGKILL
        assert same_id_elsewhere.poll() is None and other.poll() is None
        assert LocalBackend(spec).stop_leftovers(state) == [] and LocalBackend(spec).end_strays(state) == []
    finally:
        for p in (ours, same_id_elsewhere, other):
            p.kill()
            p.wait(10)

class ElsewhereBackend(Backend):
    """Ranks on a pretend node "nodeA" that sees the job dir at another path (run here, as children)."""

    name = "elsewhere"

    def __init__(self, spec, log=None):
        super().__init__(spec, log)
        self.view_dir = os.path.join(os.path.dirname(spec.job_dir), "as-nodeA-sees-it")
        self.calls = []

    def discover(self):
        from cluster.accelerators import cpu_server
        self.calls.append("discover")
        return [replace(cpu_server(2), host="nodeA")]

    def prepare(self, plan):
        self.calls.append("prepare")
        os.makedirs(self.view_dir, exist_ok=True)

    def node_view(self, host):
        assert host == "nodeA"
        return NodeView(job_dir=self.view_dir, env={"VIEW": "nodeA"})

    def rendezvous(self, plan, attempt):
        self.calls.append(f"rendezvous {attempt}")
        return "127.0.0.1", 1234 + attempt

    def start(self, worker, sink):
        from orchestrator.workers import LocalLauncher
        assert worker.host == "nodeA"
        self.calls.append(f"start {worker.name}")
        return LocalLauncher().start(replace(worker, host="localhost"), sink)

    def checkpoints(self, ranks):
        from orchestrator.restart_policy import local_checkpoint_lookup
        self.calls.append(f"checkpoints {list(ranks)}")
        return local_checkpoint_lookup(self.view_dir, ranks)

    def stats(self):
        return {0: {"pid": 1, "cpu_seconds": 0.0, "rss_bytes": 0.0}}

    def stop_leftovers(self, job):
        return []


def test_the_runner_drives_any_backend_through_the_interface(tmp_path):
    import json
    from orchestrator.jobstate import JobState
    from orchestrator.plan import resolve_plan
    from orchestrator.runner import JobRunner
    fake = os.path.join(os.path.dirname(__file__), "workers", "fake_worker.py")
    spec = JobSpec(devices="2", backend="cpu", job_id="jr", job_dir=str(tmp_path / "job"), cwd=str(tmp_path),
                   cmd=["python", fake, "--steps", "4", "--ckpt-every", "1", "--crash-at", "3", "--bad-rank", "1",
                        "--print-env"], max_restarts=1, launcher="elsewhere")
    backend = ElsewhereBackend(spec)
    plan = resolve_plan(spec, backend.discover())
    state = JobState.new(spec.to_dict(), plan.world_size, None)
    state.save()
    assert JobRunner(plan, state, backend).run() == 0
    assert backend.calls == ["discover", "prepare", "rendezvous 0", "start scheduler", "start rank_0", "start rank_1",
                             "prepare", "checkpoints [0, 1]", "rendezvous 1", "start scheduler", "start rank_0",
                             "start rank_1"]
    data = json.loads((tmp_path / "job" / "job.json").read_text())
    a0, a1 = data["attempts"]
    assert a0["state"] == "failed" and a0["rendezvous"] == {"host": "127.0.0.1", "port": 1234}
    assert a1["state"] == "succeeded" and a1["resume"]["global_step"] == 2
    assert all(r["host"] == "nodeA" for r in a1["ranks"].values())
    # the ranks were told the node's view; their output still landed in the job dir on this machine
    env_lines = [l for l in (tmp_path / "job" / "logs" / "rank_1.log").read_text().splitlines() if l.startswith("ENV ")]
    env = json.loads(env_lines[-1][4:])
    assert env["PSPNET_JOB_DIR"] == backend.view_dir and env["PSPNET_ATTEMPT"] == "1"
    assert env["PSPNET_RESUME"].startswith(backend.view_dir + "/ckpt/rank_1/")
    assert os.listdir(os.path.join(backend.view_dir, "ckpt", "rank_0"))


def _launch(tmp_path, *args, env=None):
    fake = os.path.join(os.path.dirname(__file__), "workers", "fake_worker.py")
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "launch", "--job-dir", str(tmp_path / "j"),
                           "--quiet", *args, "--cmd", f"python {fake} --steps 2"],
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_launcher_choice_on_the_command_line(tmp_path):
    res = _launch(tmp_path, "--devices", "1", "--launcher", "nomad")
    assert res.returncode == 2 and "--launcher nomad: unknown launcher; choose one of" in res.stderr
    res = _launch(tmp_path, "--devices", "1", "--launcher", "ssh", "--dry-run")
    assert res.returncode == 2 and "--launcher ssh: needs --hosts" in res.stderr
    res = _launch(tmp_path, "--devices", "1", "--launcher", "local", "--hosts", "a,b", "--dry-run")
    assert res.returncode == 2 and "need --launcher ssh" in res.stderr
    assert not (tmp_path / "j" / "job.json").exists()
    # an explicit local launcher inside a Slurm allocation runs here, and job.json remembers the choice
    res = _launch(tmp_path, "--devices", "2", "--launcher", "local", env={"SLURM_JOB_ID": "4242"})
    assert res.returncode == 0, res.stdout + res.stderr
    import json
    assert json.loads((tmp_path / "j" / "job.json").read_text())["spec"]["launcher"] == "local"
    st = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", str(tmp_path / "j")],
                        cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and "launcher: local" in st.stdout, st.stdout + st.stderr
