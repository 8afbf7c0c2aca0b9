"""Reading a rank's place from the environment (pure: no cluster is started here)."""
import numpy as np
import pytest

from trainer.world import (WorldError, World, all_reduce_counts, join_limbs, split_limbs, tune_cpu_env,
                           world_from_env)

DYN = {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118", "MS_WORKER_NUM": "2",
       "MS_NODE_ID": "1", "RANK_ID": "1", "RANK_SIZE": "2", "DEVICE_ID": "1"}


def test_single_process_by_default():
    w = world_from_env({}, "cpu")
    assert (w.mode, w.rank, w.size, w.role) == ("single", 0, 1, "worker")
    assert not w.distributed and not w.is_scheduler


def test_dynamic_worker_and_scheduler():
    w = world_from_env(DYN, "cpu")
    assert (w.mode, w.rank, w.size, w.device_id, w.sched) == ("dynamic", 1, 2, 1, "127.0.0.1:8118")
    s = world_from_env({**DYN, "MS_ROLE": "MS_SCHED", "MS_NODE_ID": ""}, "cpu")
    assert s.is_scheduler and s.mode == "dynamic"


def test_rank_table(tmp_path):
    table = tmp_path / "rank_table.json"
    table.write_text("{}")
    w = world_from_env({"RANK_TABLE_FILE": str(table), "RANK_ID": "3", "RANK_SIZE": "8", "DEVICE_ID": "3"}, "ascend")
    assert (w.mode, w.rank, w.size, w.device_id, w.backend) == ("ranktable", 3, 8, 3, "ascend")


@pytest.mark.parametrize("env, words", [
    ({**DYN, "MS_ROLE": "MS_BOSS"}, "MS_WORKER or MS_SCHED"),
    ({k: v for k, v in DYN.items() if k != "MS_SCHED_PORT"}, "MS_SCHED_PORT"),
    ({**DYN, "RANK_SIZE": "4"}, "must agree"),
    ({**DYN, "MS_NODE_ID": "2"}, "MS_NODE_ID=2"),
    ({**DYN, "MS_WORKER_NUM": "two"}, "not an integer"),
    ({"RANK_SIZE": "2"}, "neither MS_ROLE"),
    ({"RANK_TABLE_FILE": "/nonexistent/rank_table.json", "RANK_SIZE": "2"}, "no such file"),
])
def test_inconsistent_environments_are_named(env, words):
    with pytest.raises(WorldError, match=words):
        world_from_env(env, "cpu")


def test_unknown_backend():
    with pytest.raises(WorldError, match="--backend"):
        world_from_env({}, "tpu")


def test_limbs_carry_large_counts_exactly():
    counts = np.array([[0, 1, 65535], [65536, 2**40 + 12345, 2**48 - 1]], np.int64)
    parts = split_limbs(counts)
    assert parts.dtype == np.float32 and parts.max() < 2**16
    np.testing.assert_array_equal(join_limbs(parts), counts)
    # what an AllReduce over 256 ranks does to each limb: float32 sums stay exact
    summed = np.sum([parts] * 256, axis=0, dtype=np.float32)
    np.testing.assert_array_equal(join_limbs(summed), counts * 256)
    with pytest.raises(ValueError):
        split_limbs(np.array([-1]))


def test_single_world_reduce_is_identity():
    w = World("single", "cpu", 0, 1, None)
    c = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(all_reduce_counts(w, c), c)


def test_cpu_env_defaults_keep_user_values():
    env = {}
    assert tune_cpu_env("cpu", env) == {"ONEDNN_MAX_CPU_ISA": "AVX2", "MS_CPU_COMM_OP_TIMEOUT": "900"} == env
    env = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    assert tune_cpu_env("cpu", env) == {"MS_CPU_COMM_OP_TIMEOUT": "900"}
    assert env["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    env = {}
    assert tune_cpu_env("ascend", env) == {} and env == {}
