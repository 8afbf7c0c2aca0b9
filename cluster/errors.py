"""The root of every bad-input error of ``cluster/``.

Each module's own error derives from ``ClusterInputError`` (``DeviceListError``, ``HccnError``,
``NpuSmiError``, ``RankTableError``, ``HostfileError``, ``BindingError``); a caller that only wants
"bad input, exit 2" catches this one class.  It lives apart from the modules that raise it so that
they need not import each other for it.
"""
from __future__ import annotations

from typing import Optional


class ClusterInputError(ValueError):
    """Bad input to cluster/: names the source (file, option) and, when known, the line.

    ``str(err)`` reads ``SOURCE:LINE: MESSAGE`` (or ``SOURCE: MESSAGE``); the parts are also the
    attributes ``source``, ``line`` and ``message``.
    """

    def __init__(self, message: str, source: Optional[str] = None, line: Optional[int] = None) -> None:
        self.message = message
        self.source = source
        self.line = line
        super().__init__(self._text())

    def _text(self) -> str:
        if self.source and self.line is not None:
            return f"{self.source}:{self.line}: {self.message}"
        if self.source:
            return f"{self.source}: {self.message}"
        return self.message
