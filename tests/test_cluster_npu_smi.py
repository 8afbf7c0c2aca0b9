"""`npu-smi info` parsing: 910B and A3 layouts, the process table, health fields, malformed tables."""
import pytest

from cluster.npu_smi import NpuSmiError, parse_npu_smi_info


def _read(fixtures_dir, name):
    return (fixtures_dir / name).read_text()


def test_910b_two_cards(fixtures_dir):
    chips = parse_npu_smi_info(_read(fixtures_dir, "npu-smi-910b4-2dev.txt"))
    assert [c.device_id for c in chips] == [0, 1]
    c0, c1 = chips
    assert (c0.npu_id, c0.chip_id, c0.phy_id) == (0, 0, None)
    assert c0.name == "910B4-1" and c0.health == "OK" and c0.healthy
    assert c0.power_w == pytest.approx(91.3) and c1.power_w == pytest.approx(88.1)
    assert c0.temp_c == 33 and c1.temp_c == 32
    assert c0.aicore_pct == 0
    assert (c0.hbm_used_mb, c0.hbm_total_mb) == (3197, 65536)
    assert (c0.memory_used_mb, c0.memory_total_mb) == (0, 0)
    assert (c0.hugepages_used, c0.hugepages_total) == (0, 0)
    assert c0.bus_id == "0000:xx:00.0"
    assert c0.processes == []


def test_a3_two_chips_per_npu_each_a_device(fixtures_dir):
    chips = parse_npu_smi_info(_read(fixtures_dir, "npu-smi-a3-2npu.txt"))
    assert [(c.npu_id, c.chip_id, c.phy_id, c.device_id) for c in chips] == [
        (0, 0, 0, 0), (0, 1, 1, 1), (1, 0, 2, 2), (1, 1, 3, 3)]
    assert [c.power_w for c in chips] == [pytest.approx(162.6), None, pytest.approx(186.3), None]
    assert [c.hbm_used_mb for c in chips] == [3419, 2874, 3415, 3195]
    assert chips[3].bus_id == "0000:9B:00.0"
    dev = chips[2].to_device()
    assert (dev.device_id, dev.npu_id, dev.chip_id, dev.phy_id, dev.name) == (2, 1, 0, 2, "Ascend910")
    d = chips[1].to_dict()
    assert d["device_id"] == 1 and d["healthy"] is True and d["power_w"] is None


PROCS = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.0                   Version: 23.0.0                                               |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | Warning       | 301.5       55                0    / 0             |
| 0                         | 0000:C1:00.0  | 87          0    / 0          51234/ 65536         |
+===========================+===============+====================================================+
| 1     910B3               | OK            | 95.0        40                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          3300 / 65536         |
+===========================+===============+====================================================+
+---------------------------+---------------+----------------------------------------------------+
| NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
+===========================+===============+====================================================+
| 0       0                 | 424242        | python3.9                | 48000                   |
| 0       0                 | 424243        | python3.9                | 60                      |
+===========================+===============+====================================================+
| No running processes found in NPU 1                                                            |
+===========================+===============+====================================================+
"""


def test_process_table_and_health():
    chips = parse_npu_smi_info(PROCS)
    c0, c1 = chips
    assert c0.health == "Warning" and not c0.healthy
    assert c0.aicore_pct == 87 and (c0.hbm_used_mb, c0.hbm_total_mb) == (51234, 65536)
    assert [(p.pid, p.name, p.memory_mb) for p in c0.processes] == [(424242, "python3.9", 48000),
                                                                    (424243, "python3.9", 60)]
    assert c1.processes == []


@pytest.mark.parametrize("mutate,line,words", [
    (lambda t: t.replace("301.5", "lots"), 7, "Power(W): 'lots' is not a number"),
    (lambda t: t.replace("| 0                         | 0000:C1", "| x                         | 0000:C1"), 8,
     "Chip: 'x' is not a non-negative integer"),
    (lambda t: t.replace("87          0    / 0", "87          0    / 0  7"), 8, "expected 3 values"),
    (lambda t: t.replace("| 0       0                 | 424242", "| 5       0                 | 424242"), 16,
     "NPU 5 chip 0, which the device table does not list"),
    (lambda t: t.replace("| 1     910B3 ", "| 0     910B3 "), 11, "listed twice"),
])
def test_malformed_tables_name_source_and_line(mutate, line, words):
    with pytest.raises(NpuSmiError) as err:
        parse_npu_smi_info(mutate(PROCS), source="saved.txt")
    assert str(err.value).startswith(f"saved.txt:{line}: "), str(err.value)
    assert words in str(err.value)


def test_text_without_a_table_is_an_error():
    with pytest.raises(NpuSmiError, match="no `npu-smi info` device table"):
        parse_npu_smi_info("command not found: npu-smi\n", source="npu-smi info")


def test_table_cut_after_first_row_is_an_error(fixtures_dir):
    text = _read(fixtures_dir, "npu-smi-910b4-2dev.txt")
    cut = "\n".join(text.splitlines()[:10])
    with pytest.raises(NpuSmiError) as err:
        parse_npu_smi_info(cut, source="cut.txt")
    assert str(err.value).startswith("cut.txt:10: NPU 1: the table ends before its second row")
