"""Property: arbitrary bytes/text fed to every parser never raise (events, text log, chunks, tailer)."""
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitoring.aggregate import Aggregator
from monitoring.sources import JobMonitor
from cluster.contracts.events import parse_line
from monitoring.tailer import Tailer
from monitoring.textlog import TextLogParser, parse_text_line

# text that looks a bit like our lines, so the parsers get past their first checks
_alphabet = string.printable + "{}[]\":,@é中\x00\ufffd"
_fragments = st.sampled_from([
    '@pspnet ', '{"event":"step",', '"rank":', '"step_time_s":', '"loss":', 'null', 'NaN', '1e999', '-1',
    '"attempt":', '"ts":', '}', '\n', 'epoch: 1 step: 2, loss is ', 'per step time: ', ' ms',
    '=== epoch: ', 'device id: ', 'best miou: ', 'miou: ', 'mIoU/mAcc/allAcc ', 'Epoch: 3, val_loss: ',
    '"event":"epoch"', '"event":"error"', '"exit_codes":', '[', ']'])
lines_text = st.lists(st.one_of(st.text(_alphabet, max_size=40), _fragments), max_size=40).map("".join)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(st.one_of(st.binary(max_size=300), lines_text))
def test_line_parsers_never_raise(data):
    parse_line(data)
    parse_text_line(data)
    p = TextLogParser()
    for line in (data.split(b"\n") if isinstance(data, bytes) else data.split("\n")):
        p.feed(line)


@SETTINGS
@given(st.one_of(st.binary(max_size=2000), lines_text.map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_aggregator_chunks_never_raise(data):
    agg = Aggregator()
    agg.feed_lines(data)
    agg.feed_lines(data * 70)
    s = agg.snapshot()
    s.to_dict()
    for r in s.devices:
        agg.series(r)


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["event", "rank", "attempt", "ts", "step_time_s", "loss",
                                                  "epoch", "miou", "best_miou", "world_size", "device",
                                                  "message", "global_step", "steps_per_epoch"]),
                                st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                                          st.sampled_from(["step", "start", "epoch", "error", "finished",
                                                           "compiled", "resumed", "checkpoint"]))),
                max_size=30))
def test_aggregator_events_with_any_values_never_raise(events):
    agg = Aggregator()
    for ev in events:
        agg.feed_event(ev)
    agg.snapshot().to_dict()


@SETTINGS
@given(st.lists(st.binary(max_size=500), min_size=1, max_size=4))
def test_tailer_and_monitor_on_garbage_files(tmp_path, pieces):
    d = tmp_path / "garbage"
    d.mkdir(exist_ok=True)
    ev, log = d / "rank_0.jsonl", d / "worker_1.log"
    for p in (ev, log):
        p.write_bytes(b"")
    t = Tailer()
    t.add(ev)
    mon = JobMonitor([d])
    got = b""
    for piece in pieces:
        for p in (ev, log):
            with open(p, "ab") as fh:
                fh.write(piece)
        got += b"".join(c.data for c in t.poll())
        mon.poll()
        mon.summary().to_dict()
    whole = b"".join(pieces)
    assert got == whole[: whole.rfind(b"\n") + 1]     # exactly the complete lines, nothing else
