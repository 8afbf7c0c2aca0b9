"""The incremental tailer: only new bytes, partial lines held back, truncation and rotation re-read."""
import os

from monitoring.tailer import Tailer


def _data(chunks):
    return b"".join(c.data for c in chunks)


def test_reads_only_new_bytes_of_many_files(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"a1\na2\n")
    b.write_bytes(b"b1\n")
    t = Tailer()
    t.add(a)
    t.add(b)
    first = {c.path.name: c.data for c in t.poll()}
    assert first == {"a.log": b"a1\na2\n", "b.log": b"b1\n"}
    assert t.poll() == []                       # nothing new: nothing returned
    with open(a, "ab") as fh:
        fh.write(b"a3\n")
    chunks = t.poll()
    assert [(c.path.name, c.data, c.reset) for c in chunks] == [("a.log", b"a3\n", False)]
    assert t.offset(a) == len(b"a1\na2\na3\n")


def test_partial_last_line_is_held_back_until_completed(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"event":"step"}\n{"event":"st')
    t = Tailer()
    t.add(p)
    assert _data(t.poll()) == b'{"event":"step"}\n'
    with open(p, "ab") as fh:
        fh.write(b'ep","x":1')
    assert t.poll() == []                       # still no newline
    with open(p, "ab") as fh:
        fh.write(b'}\nnext')
    assert _data(t.poll()) == b'{"event":"step","x":1}\n'


def test_truncated_file_is_reread_from_start(tmp_path):
    p = tmp_path / "x.log"
    p.write_bytes(b"one\ntwo\nthree\n")
    t = Tailer()
    t.add(p)
    t.poll()
    p.write_bytes(b"new\n")                     # shrinks (same inode)
    chunks = t.poll()
    assert len(chunks) == 1 and chunks[0].reset and chunks[0].data == b"new\n"


def test_rotated_file_is_reread_from_start(tmp_path):
    p = tmp_path / "x.log"
    p.write_bytes(b"old line 1\nold line 2\n")
    t = Tailer()
    t.add(p)
    t.poll()
    os.rename(p, tmp_path / "x.log.1")
    p.write_bytes(b"rotated but longer than before\nsecond\nthird\n")   # new inode, bigger
    chunks = t.poll()
    assert len(chunks) == 1 and chunks[0].reset
    assert chunks[0].data == b"rotated but longer than before\nsecond\nthird\n"


def test_missing_file_is_waited_for_and_huge_backlog_comes_in_pieces(tmp_path):
    p = tmp_path / "later.log"
    t = Tailer(max_read=10)
    t.add(p)
    assert t.poll() == []
    p.write_bytes(b"".join(b"line %02d\n" % i for i in range(20)))
    got = b""
    for _ in range(40):
        got += _data(t.poll())
    assert got == p.read_bytes()


def test_an_overlong_line_is_dropped_not_buffered(tmp_path):
    p = tmp_path / "bin.log"
    p.write_bytes(b"ok 1\n" + b"x" * 5000)
    t = Tailer(max_line=1000)
    t.add(p)
    assert _data(t.poll()) == b"ok 1\n"
    with open(p, "ab") as fh:
        fh.write(b"y" * 3000)
    assert t.poll() == []
    with open(p, "ab") as fh:
        fh.write(b"z\nok 2\n")
    assert _data(t.poll()) == b"ok 2\n"          # the rest of the long line is skipped
    assert t.offset(p) == p.stat().st_size
