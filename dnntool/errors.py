"""Typed errors. Every message is one line that names the file, line/column, layer or key at fault."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLoc:
    """Where something came from: a file and optionally a 1-based line and column."""

    path: str | None = None
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        parts = [self.path or "<string>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)


class DnnToolError(Exception):
    """Base of every error dnntool reports to a user (exit status 1, no traceback)."""

    exit_code = 1

    def __init__(self, message: str, loc: SourceLoc | None = None, layer: str | None = None):
        self.message = " ".join(str(message).split())  # one line, always
        self.loc = loc
        self.layer = layer
        super().__init__(str(self))

    def __str__(self) -> str:
        prefix = f"{self.loc}: " if self.loc is not None else ""
        return prefix + self.message


class FormatError(DnnToolError):
    """A file that cannot be parsed (prototxt syntax, truncated caffemodel, bad binaryproto...)."""


class NetError(DnnToolError):
    """A net that parses but is wrong: unknown layer type, missing bottom, cycle, bad parameter."""


class ShapeError(NetError):
    """Shape inference failed: conflicting or impossible shapes."""


class NeedsInputShape(NetError):
    """A data layer's shape cannot be read (source absent): the user must give --input-shape."""


class WeightsError(DnnToolError):
    """A caffemodel that does not fit the net (missing blob, wrong shape)."""


class ThresholdExceeded(DnnToolError):
    """A CI check (--max) failed."""


class UsageError(DnnToolError):
    """Bad command-line usage (exit status 2)."""

    exit_code = 2
