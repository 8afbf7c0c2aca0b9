"""Every convolution path the code offers (PSPNET_CONV_IMPL=native|im2col; ``auto`` resolves to one of them)
runs 6 real training steps without stalling.

A step that never returns fails the test at the subprocess timeout instead of hanging the suite.  The
im2col path runs under oneDNN's own ISA (the setting where ``auto`` picks it), the native path under the
trainer's AVX2 cap.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.contracts.events import parse_line

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("impl,isa", [("native", "AVX2"), ("im2col", "ALL")])
def test_six_training_steps_on_each_conv_path(tmp_path, impl, isa):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PSPNET_", "MS_", "RANK_", "ONEDNN_"))}
    env.update(PYTHONPATH=str(ROOT), PSPNET_CONV_IMPL=impl, ONEDNN_MAX_CPU_ISA=isa)
    args = [sys.executable, "-m", "trainer.train", "--config", "smoke", "crop_size=65", "base_size=80",
            "batch_size=2", "workers=1", f"data_root={tmp_path / 'data'}", "synth_images=16", "epochs=1",
            "max_steps_per_epoch=6", "val_every=0", f"output_dir={tmp_path / 'out'}"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"{impl} convolutions" in proc.stdout
    events = [e for e in (parse_line(l) for l in proc.stdout.splitlines() if l.startswith("@pspnet ")) if e]
    steps = [e["global_step"] for e in events if e["event"] == "step"]
    assert steps == [1, 2, 3, 4, 5, 6]
