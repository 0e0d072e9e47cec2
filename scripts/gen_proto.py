#!/usr/bin/env python3
"""Regenerate dnntool/proto/caffe_pb2.py(.pyi) from proto/caffe.proto.

    python scripts/gen_proto.py           # write the checked-in files
    python scripts/gen_proto.py --check   # exit 1 if they are out of date

Uses the protoc bundled with grpcio-tools (``grpc_tools.protoc``) so the
output only depends on the pinned grpcio-tools version.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO_ROOT / "proto"
PROTO_FILE = PROTO_DIR / "caffe.proto"
OUT_DIR = REPO_ROOT / "dnntool" / "proto"
GENERATED = ("caffe_pb2.py", "caffe_pb2.pyi")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on proto/caffe.proto, writing into ``out_dir``.

    Returns the paths of the generated files. Raises RuntimeError when protoc
    fails. The output depends only on the schema and the grpcio-tools version.
    """
    from grpc_tools import protoc

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    # protoc names the file by its path relative to the -I root ("caffe.proto"),
    # so absolute paths here give the same output from any working directory.
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        str(PROTO_FILE),
    ]
    status = protoc.main(args)
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}: {' '.join(args)}")
    return [out_dir / name for name in GENERATED]


def check() -> int:
    """Compare freshly generated files with the checked-in ones."""
    with tempfile.TemporaryDirectory(prefix="dnntool-proto-") as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            current = OUT_DIR / path.name
            if not current.is_file() or current.read_bytes() != path.read_bytes():
                stale.append(current)
    for path in stale:
        print(f"out of date: {path.relative_to(REPO_ROOT)}", file=sys.stderr)
    if stale:
        print("run: python scripts/gen_proto.py", file=sys.stderr)
        return 1
    print("generated protobuf modules are up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temporary directory and fail if the checked-in files differ",
    )
    opts = parser.parse_args(argv)
    if opts.check:
        return check()
    for path in generate(OUT_DIR):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
