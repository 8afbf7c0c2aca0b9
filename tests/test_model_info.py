"""`python -m trainer.model_info` / `pspnet-cluster model`: counts and shapes as JSON."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, module="trainer.model_info"):
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    return proc


@pytest.mark.slow
def test_json_counts_and_shapes_at_crop_65():
    proc = run("--config", "smoke", "--crop", "65", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["params"] == {"total": 49_081_578, "backbone": 23_631_808, "heads": 25_449_770}
    assert info["shapes"] == {"input": [1, 3, 65, 65], "layer3": [1, 1024, 9, 9], "layer4": [1, 2048, 9, 9],
                              "main": [1, 21, 65, 65], "aux": [1, 21, 65, 65]}
    assert info["aux"] is True and info["classes"] == 21 and info["output_stride"] == 8


def test_counts_only_without_aux_through_the_cli_with_override():
    proc = run("model", "--config", "voc2012", "--no-aux", "--counts-only", "--json", "classes=21",
               module="orchestrator.cli")
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["params"]["total"] == 46_716_373 and info["aux"] is False
    assert "shapes" not in info


def test_table_output_and_classes_flag():
    proc = run("--config", "smoke", "--classes", "150", "--counts-only")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "classes=150" in proc.stdout
    assert f"{49_081_578 + 129 * 770:,}" in proc.stdout


def test_bad_override_is_a_clear_error():
    proc = run("--config", "smoke", "--counts-only", "clases=3")
    assert proc.returncode == 2
    assert "clases" in proc.stderr and "classes" in proc.stderr
