"""End to end: `pspnet-cluster launch --metrics-port` serves the exporter while the ranks run (the
test's fake worker stands in for the trainer), with live process figures, and closes it at the end."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from test_mon_exporter import samples, value
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_launch_serves_live_metrics_of_its_ranks(tmp_path):
    port = free_port()
    worker = f"{sys.executable} {ROOT / 'tests' / 'workers' / 'fake_worker.py'} --steps 15 --step-time 0.4"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "launch", "--devices", "2",
                             "--job-dir", str(tmp_path / "job"), "--metrics-port", str(port), "--quiet",
                             "--cmd", worker], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=str(tmp_path))
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        seen = None
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    smp = samples(r.read())
            except OSError:
                time.sleep(0.2)
                continue
            ups = [v for (n, _), v in smp.items() if n == "pspnet_up"]
            cpus = [n for (n, _) in smp if n == "pspnet_process_cpu_seconds_total"]
            steps = [n for (n, _) in smp if n == "pspnet_step_time_seconds"]
            if len(ups) == 2 and all(ups) and len(cpus) == 2 and len(steps) == 2:
                seen = smp
                break
            time.sleep(0.2)
        assert seen is not None, "never saw both ranks up, stepping, with process figures while the job ran"
        assert value(seen, "pspnet_job_state", job="job", state="running") == 1
        assert value(seen, "pspnet_job_ranks", job="job") == 2
        assert value(seen, "pspnet_step_time_seconds", job="job", rank="1") == 0.4
        assert value(seen, "pspnet_process_resident_memory_bytes", job="job", rank="0") > 1e6
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert f"http://127.0.0.1:{port}" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:                                     # the launcher closed its exporter on the way out
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        listening = True
    except OSError:
        listening = False
    assert not listening
