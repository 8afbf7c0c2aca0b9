"""Follow many files at once, reading only the bytes added since the last poll.

Per file the tailer keeps the offset read so far, the file's identity (device, inode) and the
incomplete last line.  ``poll()`` returns, per file that grew, one ``Chunk`` of complete lines
(ending with ``\\n``); a partial last line is held back until its newline arrives.  A file that
shrinks (truncated) or is replaced (rotated: a new inode at the same path) is re-read from its
start and its chunk carries ``reset=True`` (the held-back partial line of the old file is dropped).
A "line" longer than ``max_line`` (4 MiB) is dropped up to its newline instead of being buffered.
A file that does not exist yet is simply waited for.  Nothing here raises on I/O errors: a file
that cannot be read is skipped for this poll.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

PathLike = Union[str, os.PathLike]

#: Most bytes read from one file in one poll (a huge backlog is consumed over several polls).
MAX_READ = 64 << 20
#: A "line" longer than this is not a log line: it is dropped (up to its newline), not buffered.
MAX_LINE = 4 << 20


@dataclass
class Chunk:
    path: Path
    data: bytes          # complete lines, each ending with b"\n"
    reset: bool = False  # the file was truncated or replaced: data starts at its beginning
    mtime: float = 0.0


class _Followed:
    __slots__ = ("path", "offset", "ident", "partial", "pending_reset", "skipping")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.ident: Optional[tuple] = None
        self.partial = b""
        self.pending_reset = False
        self.skipping = False      # inside an over-long line: drop bytes up to the next newline


class Tailer:
    """Incremental reader of many files; see the module docstring."""

    def __init__(self, max_read: int = MAX_READ, max_line: int = MAX_LINE) -> None:
        self.max_read = int(max_read)
        self.max_line = int(max_line)
        self._files: Dict[Path, _Followed] = {}
        self.last_bytes = 0          # bytes read by the last poll (0: every file is consumed)

    def add(self, path: PathLike) -> None:
        p = Path(path)
        if p not in self._files:
            self._files[p] = _Followed(p)

    def remove(self, path: PathLike) -> None:
        self._files.pop(Path(path), None)

    @property
    def paths(self) -> List[Path]:
        return list(self._files)

    def offset(self, path: PathLike) -> int:
        """Bytes consumed from ``path`` so far (complete lines plus the held-back partial line)."""
        f = self._files.get(Path(path))
        return 0 if f is None else f.offset

    def pending(self, path: PathLike) -> bytes:
        """The held-back last line of ``path`` that has no newline yet."""
        f = self._files.get(Path(path))
        return b"" if f is None else f.partial

    def poll(self) -> List[Chunk]:
        self.last_bytes = 0
        out = []
        for f in list(self._files.values()):
            chunk = self._poll_one(f)
            if chunk is not None:
                out.append(chunk)
        return out

    def _poll_one(self, f: _Followed) -> Optional[Chunk]:
        # one stat() first: an unchanged file (same identity, size == offset) costs no open/read
        try:
            st = os.stat(f.path)
        except OSError:
            return None
        ident = (st.st_dev, st.st_ino)
        if ident == f.ident and st.st_size == f.offset:
            return None
        try:
            fd = os.open(f.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                st = os.fstat(fd)       # the file actually opened (it may have been replaced meanwhile)
            except OSError:
                return None
            ident = (st.st_dev, st.st_ino)
            reset = False
            if f.ident is not None and (ident != f.ident or st.st_size < f.offset):
                f.offset, f.partial, f.skipping, reset = 0, b"", False, True
            f.ident = ident
            if st.st_size == f.offset and not reset:
                return None
            try:
                data = os.pread(fd, min(self.max_read, max(st.st_size - f.offset, 0) or self.max_read), f.offset)
            except OSError:
                return None
        finally:
            os.close(fd)
        if not data and not reset:
            return None
        f.offset += len(data)
        self.last_bytes += len(data)
        if f.skipping:
            nl = data.find(b"\n")
            if nl < 0:
                return None
            data, f.skipping = data[nl + 1:], False
        buf = f.partial + data if f.partial else data
        cut = buf.rfind(b"\n") + 1
        f.partial = buf[cut:]
        if len(f.partial) > self.max_line:
            f.partial, f.skipping = b"", True
        reset = reset or f.pending_reset
        if cut == 0:
            f.pending_reset = reset
            return None
        f.pending_reset = False
        return Chunk(f.path, buf[:cut], reset, st.st_mtime)
