"""The Net model (layers, blobs, shapes) built from a prototxt."""

from dnntool.net.net import TEST, TRAIN, Blob, Layer, Net, Param, parse_phase

__all__ = ["TEST", "TRAIN", "Blob", "Layer", "Net", "Param", "parse_phase"]
