"""Custom layers as plugins: the sample package in samples/plugin, found through its entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnntool.errors import NetError
from dnntool.layers import registry
from dnntool.net import Net

PLUGIN = Path(__file__).resolve().parents[1] / "samples" / "plugin"
NET = PLUGIN / "siamese_with_accuracy.prototxt"


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """Make the sample importable and visible to importlib.metadata, as `pip install` would."""
    dist = tmp_path / "dnntool_siamese-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: dnntool-siamese\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[dnntool.layers]\nsiamese = dnntool_siamese\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN))
    registry.unregister("ContrastiveAccuracy")
    registry.load_plugins(force=True)
    yield
    registry.unregister("ContrastiveAccuracy")


def test_unknown_without_plugin():
    registry.unregister("ContrastiveAccuracy")
    registry.load_plugins(force=True)  # nothing installed: the type stays unknown
    with pytest.raises(NetError, match=r"unknown layer type 'ContrastiveAccuracy'.*entry-point group 'dnntool\.layers'"):
        Net.from_prototxt(NET)


def test_plugin_layer_builds_and_counts(installed_plugin):
    net = Net.from_prototxt(NET)
    acc = net.layer("accuracy")
    assert acc.top_shapes == [()]
    assert acc.cost.macs == 64 * 2
    # the two InnerProducts share "ip1_w"/"ip1_b": 1*28*28*2 + 2 params counted once
    assert net.learnable_count == 28 * 28 * 2 + 2
    assert acc.loss_weights == [0.0]


def test_plugin_shape_check(installed_plugin, tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text(NET.read_text().replace("shape { dim: 64 } }", "shape { dim: 32 } }"))
    with pytest.raises(NetError, match=r"layer 'loss' \(ContrastiveLoss\)|layer 'accuracy'"):
        Net.from_prototxt(bad)
