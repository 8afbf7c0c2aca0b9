"""The contract types of cluster/contracts: rank environment, states, exit codes, job.json schema."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.contracts.env import NAMES, RankEnv, RankEnvError
from cluster.contracts.exitcodes import ExitCode
from cluster.contracts.jobjson import JobJsonError, check_job, load_job_json, rank_exit_codes
from cluster.contracts.states import AttemptState, DeviceState, JobState

ROOT = Path(__file__).resolve().parent.parent


def test_rank_env_round_trips_through_the_environment():
    e = RankEnv(rank=3, rank_size=8, device_id=None, job_id="j", job_dir="/runs/j", attempt=2, backend="cpu",
                host="node1", local_rank=1, role="MS_WORKER", sched_host="10.0.0.1", sched_port=8118,
                worker_num=8, node_id=3, resume="/runs/j/ckpt/rank_3/a.ckpt")
    env = e.to_env()
    assert env["RANK_ID"] == "3" and env["MS_SCHED_PORT"] == "8118" and set(env) <= set(NAMES)
    assert env["DEVICE_ID"] == ""          # masks a DEVICE_ID the launcher itself may have inherited
    assert RankEnv.from_env(env) == e
    assert RankEnv.from_env({"RANK_ID": " 2 ", "PATH": "/bin"}) == RankEnv(rank=2)
    assert RankEnv.from_env({}) == RankEnv() and RankEnv().to_env() == {}


@pytest.mark.parametrize("env, words", [
    ({"RANK_ID": "two"}, "RANK_ID='two' is not an integer"),
    ({"MS_ROLE": "MS_BOSS"}, "MS_WORKER or MS_SCHED"),
    ({"MS_SCHED_PORT": "70000"}, "MS_SCHED_PORT=70000"),
    ({"RANK_SIZE": "0"}, "RANK_SIZE=0: must be at least 1"),
    ({"PSPNET_ATTEMPT": "-1"}, "PSPNET_ATTEMPT=-1"),
])
def test_rank_env_names_the_bad_variable(env, words):
    with pytest.raises(RankEnvError, match=words):
        RankEnv.from_env(env)


def test_states_read_and_write_as_plain_strings():
    assert json.dumps({"s": JobState.RUNNING}) == '{"s": "running"}'
    assert f"{AttemptState.LOST}" == "lost" and JobState("stopped").final and not JobState.RESTARTING.final
    assert DeviceState.FINISHED.terminal and not DeviceState.RUNNING.terminal
    assert [int(c) for c in ExitCode] == [0, 1, 2, 130]


def _job(**changes):
    data = {"schema": 1, "job_id": "j", "job_dir": "/r/j", "state": "failed", "spec": {}, "world_size": 2,
            "restarts": 0, "exit_code": 1, "launcher": None,
            "attempts": [{"attempt": 0, "state": "failed", "start": 1.0, "end": 2.0,
                          "ranks": {"0": {"pid": 10, "exit_code": 0}, "1": {"pid": 11, "exit_code": -9},
                                    "scheduler": {"pid": 9, "exit_code": 0}},
                          "failure": {"rank": 1, "message": "rank 1 was killed", "last_lines": []}}]}
    data.update(changes)
    return data


def test_job_json_checks_name_the_file_and_the_field(tmp_path):
    assert rank_exit_codes(check_job("f", _job())["attempts"][0]) == {0: 0, 1: -9}
    for changes, field in [({"spec": 5}, "spec"), ({"world_size": "abc"}, "world_size"),
                           ({"attempts": 7}, "attempts"), ({"state": "compiling"}, "state"),
                           ({"attempts": [{"attempt": 0, "state": "running", "ranks": {"x": {}}}]},
                            "attempts[0].ranks.x"),
                           ({"attempts": [{"attempt": 0, "state": "running", "ranks": {"0": {"pid": "p"}}}]},
                            "attempts[0].ranks.0.pid")]:
        with pytest.raises(JobJsonError) as exc:
            check_job(tmp_path / "job.json", _job(**changes))
        assert exc.value.field == field and str(tmp_path / "job.json") in str(exc.value)
    (tmp_path / "job.json").write_text("{not json")
    with pytest.raises(JobJsonError, match="not valid JSON"):
        load_job_json(tmp_path)
    with pytest.raises(JobJsonError, match="not a job dir"):
        load_job_json(tmp_path / "nothing-here")


@pytest.mark.parametrize("command", ["status", "logs", "stop", "resume"])
def test_commands_answer_a_broken_job_json_with_exit_2(tmp_path, command):
    (tmp_path / "job.json").write_text('{"spec":5,"world_size":"abc","attempts":7}')
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli", command, str(tmp_path)], cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and str(tmp_path / "job.json") in res.stderr and "'spec'" in res.stderr
