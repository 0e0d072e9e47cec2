"""``dnntool demo`` end to end: every artifact it lists exists and loads."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.prototxt import read_net
from dnntool.net import Net


def test_demo_artifacts_exist_and_load(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out)])
    assert res.exit_code == 0, res.output
    listed = [Path(line.strip()) for line in res.output.split("artifacts:")[1].splitlines() if line.strip()]
    assert listed
    for path in listed:
        assert path.exists(), path
        if path.suffix == ".json":
            data = json.loads(path.read_text())
            assert data["totals"]["params"] > 0 and data["layers"]
        elif path.suffix == ".prototxt":
            assert not read_net(path).param.layers  # upgraded: no V1 blocks left
            assert Net.from_prototxt(path).learnable_count > 0
    # Deterministic: a second run writes the same bytes.
    before = {p: p.read_bytes() for p in listed}
    assert CliRunner().invoke(cli, ["demo", "--out", str(out)]).exit_code == 0
    assert {p: p.read_bytes() for p in listed} == before
