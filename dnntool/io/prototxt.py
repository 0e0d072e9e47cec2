"""Text-format Caffe files: net and solver prototxts, read with file:line:col errors, written atomically."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from google.protobuf import message as pb_message
from google.protobuf import text_format

from dnntool.errors import FormatError, SourceLoc
from dnntool.io.atomic import write_text
from dnntool.proto import caffe_pb2

M = TypeVar("M", bound=pb_message.Message)

_PARSE_ERR = re.compile(r"^(?:.*?:)?(\d+):(\d+) ?:\s*(.*)$", re.S)


def read_text_file(path: str | os.PathLike[str], what: str = "prototxt") -> str:
    """Read a text file, refusing missing, empty and binary files with a one-line error."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise FormatError(f"no such file (expected a {what})", SourceLoc(str(path))) from None
    except IsADirectoryError:
        raise FormatError(f"is a directory, expected a {what} file", SourceLoc(str(path))) from None
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", SourceLoc(str(path))) from None
    if not data.strip():
        raise FormatError(f"empty file (expected a {what})", SourceLoc(str(path)))
    nul = data.find(b"\0")
    if nul >= 0:
        raise FormatError(
            f"binary data at byte {nul}: this is not a text {what} (a .caffemodel or .binaryproto?)",
            SourceLoc(str(path)),
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise FormatError(
            f"invalid UTF-8 byte 0x{data[e.start]:02x}: not a text {what}",
            SourceLoc(str(path), line, col),
        ) from None


def parse_text(text: str, msg: M, path: str | None = None, allow_unknown: bool = False) -> M:
    """Parse protobuf text format into ``msg``; syntax errors become FormatError(file:line:col)."""
    try:
        text_format.Parse(text, msg, allow_unknown_field=allow_unknown)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        detail = str(e)
        m = _PARSE_ERR.match(detail)
        if m:
            detail = m.group(3)
            if line is None:
                line, col = int(m.group(1)), int(m.group(2))
        raise FormatError(detail, SourceLoc(path, line, col)) from None
    except (ValueError, TypeError) as e:  # protobuf raises these for some malformed values
        raise FormatError(str(e), SourceLoc(path)) from None
    return msg


@dataclass(frozen=True)
class LayerBlock:
    """A top-level ``layer {`` / ``layers {`` block: its keyword and 1-based line and column."""

    keyword: str
    line: int
    col: int


_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<str>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<open>[{<])|(?P<close>[}>])|(?P<ident>[A-Za-z_][A-Za-z0-9_.]*)|(?P<other>.)""",
    re.S,
)


def scan_layer_blocks(text: str) -> list[LayerBlock]:
    """Find the top-level ``layer``/``layers`` blocks in file order (for line numbers in errors)."""
    blocks: list[LayerBlock] = []
    depth = 0
    line, line_start = 1, 0
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth = max(0, depth - 1)
        elif kind == "ident" and depth == 0 and m.group() in ("layer", "layers"):
            blocks.append(LayerBlock(m.group(), line, m.start() - line_start + 1))
        newlines = m.group().count("\n")
        if newlines:
            line += newlines
            line_start = m.start() + m.group().rfind("\n") + 1
    return blocks


@dataclass
class NetSource:
    """A net as read from a file: the upgraded NetParameter and where each layer was defined."""

    param: caffe_pb2.NetParameter
    path: str | None
    layer_locs: list[SourceLoc]
    notes: list[str]


def read_net(path: str | os.PathLike[str]) -> NetSource:
    """Read a net prototxt (any Caffe era) and upgrade it to the current ``layer {}`` form."""
    from dnntool.io.upgrade import upgrade_net

    text = read_text_file(path, "net prototxt")
    return parse_net_text(text, str(path), upgrade_net)


def parse_net_text(text: str, path: str | None = None, upgrade=None) -> NetSource:
    """Parse net prototxt text; see :func:`read_net`."""
    if upgrade is None:
        from dnntool.io.upgrade import upgrade_net as upgrade
    param = parse_text(text, caffe_pb2.NetParameter(), path)
    blocks = scan_layer_blocks(text)
    order = [b.keyword for b in blocks]
    param, notes = upgrade(param, order)
    # After upgrade, layers keep file order, possibly preceded by a synthesised Input layer.
    locs = [SourceLoc(path, b.line, b.col) for b in blocks]
    extra = len(param.layer) - len(locs)
    if extra > 0:  # synthesised layers (legacy input fields) come first; point at the file
        locs = [SourceLoc(path, 1)] * extra + locs
    return NetSource(param, path, locs[: len(param.layer)], notes)


def read_solver(path: str | os.PathLike[str]) -> caffe_pb2.SolverParameter:
    """Read a solver prototxt and upgrade its deprecated fields (``solver_type`` enum -> ``type``)."""
    from dnntool.io.upgrade import upgrade_solver

    text = read_text_file(path, "solver prototxt")
    param = parse_text(text, caffe_pb2.SolverParameter(), str(path))
    return upgrade_solver(param, str(path))


def to_text(msg: pb_message.Message) -> str:
    """Render a message in Caffe's prototxt style (deterministic)."""
    return text_format.MessageToString(msg)


def write_prototxt(msg: pb_message.Message, path: str | os.PathLike[str]) -> None:
    """Write a message as prototxt, atomically."""
    write_text(path, to_text(msg))
