"""Drives the Slurm backend by hand inside an allocation (``salloc ... python slurm_step_driver.py JOB_DIR
[fake_worker args]``): discover, plan by hand, one supervised attempt of fake ranks; prints one JSON
line with what happened.  Tests the backend's side of the interface without the runner."""
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cluster.contracts.jobdir import JobPaths  # noqa: E402
from orchestrator.backends.slurm import SlurmBackend  # noqa: E402
from orchestrator.capture import RankSink  # noqa: E402
from orchestrator.jobspec import JobSpec  # noqa: E402
from orchestrator.plan import JobPlan, Placement, attempt_workers  # noqa: E402
from orchestrator.supervisor import Supervisor  # noqa: E402


def main() -> int:
    job, devices, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    spec = JobSpec(devices=devices, backend="cpu", cmd=["python", "x"], job_id="drv", job_dir=job,
                   cwd=str(Path(job).parent))
    with SlurmBackend(spec, print) as b:
        servers = b.discover()
        placements = [Placement(rank=r, local_rank=i, device=d.device_id, host=s.host)
                      for r, (s, i, d) in enumerate((s, i, d) for s in servers for i, d in enumerate(s.devices))]
        argv = [sys.executable, str(ROOT / "tests" / "workers" / "fake_worker.py"), *extra]
        plan = JobPlan(spec=spec, backend="cpu", mode="dynamic", placements=placements, base_argv=argv)
        host, port = b.rendezvous(plan, 0)
        b.prepare(plan)
        workers = attempt_workers(plan, 0, (host, port), node_view=b.node_view)
        paths = JobPaths(job).make()
        sinks = {w.name: RankSink(w.name, paths.rank_log(w.rank) if w.rank >= 0 else paths.scheduler_log,
                                  paths.rank_events(w.rank) if w.rank >= 0 else None) for w in workers}
        t0 = time.monotonic()
        handles = b.start_all(workers, sinks)
        stats = {}

        def sample():
            while not stats.get("done"):
                for r, st in b.stats().items():
                    stats[r] = st
                time.sleep(0.2)
        import threading
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        res = Supervisor(handles, sinks, failure_grace=0.3).run()
        stats["done"] = True
        for h in handles.values():
            h.join_output(5.0)
        print("RESULT " + json.dumps({
            "servers": [s.host for s in servers], "rendezvous": [host, port], "outcome": res.outcome,
            "exit_codes": res.exit_codes, "failure": res.failure.to_dict() if res.failure else None,
            "group_down_s": res.group_down_s, "wall_s": time.monotonic() - t0,
            "nodes": {n: h.node for n, h in handles.items()}, "srun": b.describe(plan, workers)[-1],
            "stats": {str(r): v for r, v in stats.items() if r != "done"}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
