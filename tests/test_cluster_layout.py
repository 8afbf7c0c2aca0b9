"""cluster/ stays below the orchestrator and the trainer: importing and using it pulls in neither,
nor MindSpore."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cluster_imports_nothing_upward(fixtures_dir):
    code = (
        "import sys, json\n"
        "from cluster import accelerators, hccn, npu_smi, ranktable, binding, cli\n"
        f"s = accelerators.ascend_server('10.0.0.1', hccn_conf_text=open({str(fixtures_dir / 'hccn.conf')!r}).read())\n"
        "ranktable.rank_table_json(ranktable.build_rank_table([s]))\n"
        f"npu_smi.parse_npu_smi_info(open({str(fixtures_dir / 'npu-smi-a3-2npu.txt')!r}).read())\n"
        "binding.make_binding_plan(8)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('orchestrator', 'trainer', 'mindspore', 'monitoring'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
