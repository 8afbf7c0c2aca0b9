"""Property tests: the parsers raise nothing but their own error type, whatever text they get;
device lists and binding plans keep their invariants."""
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.binding import make_binding_plan
from cluster.devices import DeviceListError, parse_visible_devices
from cluster.hccn import HccnError, parse_hccn_conf, parse_hccn_tool_ip
from cluster.npu_smi import NpuSmiError, parse_npu_smi_info
from cluster.ranktable import RankTableError, validate_rank_table

FIXTURES = Path(__file__).resolve().parent / "fixtures"

SMI = (FIXTURES / "npu-smi-a3-2npu.txt").read_text()
CONF = (FIXTURES / "hccn.conf").read_text()

# text built from the pieces real inputs are made of, so the parsers get past their first checks
_pieces = st.sampled_from(["|", "+", "=", "-", "/", " ", "  ", "\n", "NPU", "Name", "Chip", "Phy-ID", "Bus-Id",
                           "Health", "Power(W)", "Temp(C)", "AICore(%)", "HBM-Usage(MB)", "Process id", "0", "1",
                           "12", "3.5", "OK", "NA", "address_", "netmask_", "ipaddr:", "192.168.0.1", "x", "_",
                           "#", "é", "\t", "\r", "\x00"])
_texty = st.one_of(st.text(), st.lists(_pieces, max_size=60).map("".join))


def _mutations(base):
    lines = base.splitlines()
    return st.tuples(st.integers(0, max(0, len(lines) - 1)), _texty).map(
        lambda t: "\n".join(lines[:t[0]] + [t[1]] + lines[t[0] + 1:]))


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(_texty, _mutations(SMI)))
def test_npu_smi_parser_raises_only_its_error(text):
    try:
        chips = parse_npu_smi_info(text, source="t")
    except NpuSmiError as exc:
        assert str(exc).startswith("t")
        return
    assert all(c.device_id >= 0 for c in chips)


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(_texty, _mutations(CONF)))
def test_hccn_conf_parser_raises_only_its_error(text):
    try:
        entries = parse_hccn_conf(text, source="t")
    except HccnError as exc:
        assert str(exc).startswith("t")
        return
    assert all(isinstance(k, int) and k >= 0 for k in entries)


@settings(max_examples=200, deadline=None, database=None)
@given(_texty)
def test_hccn_tool_parser_raises_only_its_error(text):
    try:
        ip, _ = parse_hccn_tool_ip(text, source="t")
    except HccnError:
        return
    assert ip.count(".") == 3


@settings(max_examples=300, deadline=None, database=None)
@given(st.one_of(st.text(max_size=30), st.lists(st.sampled_from(["0", "3", "7", "12", "65535", "99999999999", "-", ",", " ", "x"]),
                                                 max_size=12).map("".join)))
def test_device_list_parser_raises_only_its_error(spec):
    try:
        ids = parse_visible_devices(spec, range(8))
    except DeviceListError:
        return
    assert ids and len(set(ids)) == len(ids) and all(0 <= i < 8 for i in ids)


_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
                     lambda kids: st.one_of(st.lists(kids, max_size=4),
                                            st.dictionaries(st.sampled_from(
                                                ["version", "server_count", "server_list", "status", "device",
                                                 "server_id", "device_id", "device_ip", "rank_id",
                                                 "super_pod_list", "super_device_id", "host_ip"]), kids,
                                                max_size=6)), max_leaves=20)


@settings(max_examples=300, deadline=None, database=None)
@given(_json)
def test_rank_table_validator_raises_only_its_error(obj):
    try:
        validate_rank_table(obj, source="t")
    except RankTableError:
        return
    json.dumps(obj)


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(1, 64), st.sets(st.integers(0, 255), min_size=1, max_size=64), st.integers(0, 8))
def test_binding_never_gives_an_empty_set(ranks, cores, reserve):
    plan = make_binding_plan(ranks, cores=sorted(cores), reserve=reserve)
    assert sorted(plan.cores_by_rank) == list(range(ranks))
    assert all(plan.cores_by_rank[r] for r in range(ranks))
    used = {c for cs in plan.cores_by_rank.values() for c in cs}
    assert used <= set(cores) and not (used & set(plan.reserved))
    if not plan.shared:   # an even split: sizes differ by at most one, every core used once
        sizes = [len(cs) for cs in plan.cores_by_rank.values()]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(cores) - len(plan.reserved)


_any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=6)),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=5), kids, max_size=4)),
    max_leaves=25)


@settings(max_examples=300, deadline=None, database=None)
@given(_any_json)
def test_rank_table_writer_is_json_dumps_indent_4(obj):
    from cluster.ranktable import rank_table_json
    assert rank_table_json(obj) == json.dumps(obj, indent=4) + "\n"
