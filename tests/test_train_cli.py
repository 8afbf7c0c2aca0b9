"""The trainer's command line refuses bad input before MindSpore loads: exit 2 and a message naming it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def trainer(*args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PSPNET_", "MS_", "RANK_"))}
    base["PYTHONPATH"] = str(ROOT)
    base.update(env)
    return subprocess.run([sys.executable, "-m", "trainer.train", *args], capture_output=True, text=True,
                          env=base, timeout=120)


@pytest.mark.parametrize("args, env, words", [
    (["--config", "smoke", "epochz=3"], {}, "unknown key 'epochz' (did you mean 'epochs'?)"),
    (["--config", "nosuch"], {}, "config 'nosuch' not found"),
    (["--config", "smoke", "epochs=two"], {}, "epochs='two' is not a valid int"),
    (["--config", "smoke"], {"RANK_SIZE": "2"}, "neither MS_ROLE"),
    (["--config", "smoke"], {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "2"}, "MS_SCHED_HOST"),
])
def test_bad_input_exits_2_with_a_clear_message(args, env, words):
    proc = trainer(*args, **env)
    assert proc.returncode == 2
    assert words in proc.stderr
    assert "@pspnet" not in proc.stdout      # refused before the rank started


def test_resume_of_a_missing_file_is_refused(tmp_path):
    proc = trainer("--config", "smoke", f"data_root={tmp_path / 'd'}", "synth_images=8", "--resume",
                   str(tmp_path / "none.ckpt"), PSPNET_JOB_DIR=str(tmp_path / "job"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    assert '"event":"error"' in proc.stdout
