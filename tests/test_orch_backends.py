"""The backend registry and the interface contract: by-name lookup, launcher detection, a clean error for
a backend this build lacks, and the local backend's side of the contract with real processes."""
import os
import signal
import subprocess
import sys
import time

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


def test_local_stop_leftovers_kills_only_the_jobs_processes(tmp_path):
    from orchestrator.jobstate import JobState
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                            env={**os.environ, "PSPNET_JOB_ID": "mine"})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                             env={**os.environ, "PSPNET_JOB_ID": "someone-else"})
    try:
        spec = JobSpec(devices="2", job_id="mine", job_dir=str(tmp_path), cwd=str(tmp_path))
        state = JobState.new(spec.to_dict(), 2, None)
        state.begin_attempt({"attempt": 0, "ranks": {"0": {"pid": ours.pid, "host": "localhost"},
                                                     "1": {"pid": other.pid, "host": "localhost"}}})
        lines = LocalBackend(spec).stop_leftovers(state)
        assert lines == [f"killed 1 leftover rank process(es): {ours.pid}"]
        assert ours.wait(10) == -signal.SIGKILL
        assert other.poll() is None
        assert LocalBackend(spec).stop_leftovers(state) == []
    finally:
        for p in (ours, other):
            p.kill()
            p.wait(10)
