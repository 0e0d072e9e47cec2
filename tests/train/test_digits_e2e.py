"""Real data end to end: scikit-learn's digits -> PNG files -> convert-images (80/20 stratified
split) -> compute-image-mean -> train LeNet from samples/digits -> >= 97% on the held-out 20%."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "digits"


def make_digits(out: str) -> int:
    spec = importlib.util.spec_from_file_location("make_digits", SAMPLES / "make_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.write_digits(out)


def test_lenet_on_digits_reaches_97_percent(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    from dnntool.tools.evaluate import evaluate
    from dnntool.tools.images import ConvertOptions, compute_image_mean, convert_images, write_mean
    from dnntool.train.loop import train

    monkeypatch.chdir(tmp_path)  # the sample's data paths are opened here first, as Caffe does
    assert make_digits("digits") == 1797
    opts = ConvertOptions(resize_height=32, resize_width=32, gray=True, shuffle=True, val_split=0.2,
                          val_db="digits_val_lmdb", jobs=1)
    summary = convert_images("digits", None, "digits_train_lmdb", opts)
    held_out = summary.dbs[1].written
    assert summary.dbs[0].written + held_out == 1797 and held_out == 359
    write_mean(compute_image_mean(["digits_train_lmdb"], jobs=1), "digits_mean.binaryproto")

    res = train(SAMPLES / "lenet_solver.prototxt", device="cpu", handle_signals=False)
    assert res.iteration == 400 and res.snapshots[-1][0] == "lenet_digits_iter_400.caffemodel"
    final = {o.name: o.value for o in res.tests[-1].outputs}
    assert final["accuracy"] >= 0.97, res.tests[-1]

    # every held-out image exactly once: one batch of all of them
    score = evaluate(SAMPLES / "lenet_train_test.prototxt", res.snapshots[-1][0], iterations=1, device="cpu",
                     input_shapes={"data": (held_out, 1, 28, 28), "label": (held_out,)})
    accuracy = next(s.values[0] for s in score.scores if s.name == "accuracy")
    assert accuracy >= 0.97, score.scores
