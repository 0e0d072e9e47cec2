"""What the tools write, byte for byte, against records built by hand from Caffe's caffe.proto.

Datum: channels=1, height=2, width=3 (int32 varints), data=4 (bytes), label=5 (int32 varint),
float_data=6, encoded=7 (bool). BlobProto: num=1, channels=2, height=3, width=4, data=5 (packed
float). The expected bytes are assembled here from those field numbers with raw protobuf wire
encoding, not with dnntool's generated module; that module must then parse them to the same message.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from dnntool.proto import caffe_pb2
from dnntool.tools.image_mean import compute_image_mean, write_mean
from dnntool.tools.images import ConvertOptions, convert_images
from tests.sample_images import crops, read_db


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int32 negatives are sign-extended to ten bytes
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def field(number: int, wire: int, payload: bytes) -> bytes:
    return varint(number << 3 | wire) + payload


def vfield(number: int, value: int) -> bytes:
    return field(number, 0, varint(value))


def bfield(number: int, data: bytes) -> bytes:
    return field(number, 2, varint(len(data)) + data)


def caffe_datum(c: int, h: int, w: int, data: bytes, label: int, encoded: bool) -> bytes:
    """CVMatToDatum / ReadFileToDatum + set_label, serialised (fields in number order)."""
    return (vfield(1, c) + vfield(2, h) + vfield(3, w) + bfield(4, data) + vfield(5, label)
            + vfield(7, int(encoded)))


def test_raw_and_encoded_datums_match_hand_built_bytes(tmp_path):
    img = crops(1, 2, 3, seed=11)[0]  # 2 x 3 BGR
    cv2.imwrite(str(tmp_path / "a.png"), img)
    (tmp_path / "list.txt").write_text("a.png -1\n")
    convert_images(tmp_path, tmp_path / "list.txt", tmp_path / "raw", ConvertOptions())
    convert_images(tmp_path, tmp_path / "list.txt", tmp_path / "enc", ConvertOptions(encoded=True))

    planes = b"".join(img[:, :, ch].tobytes() for ch in range(3))  # B plane, G plane, R plane
    want_raw = caffe_datum(3, 2, 3, planes, -1, False)
    assert want_raw[:8] == bytes([0x08, 3, 0x10, 2, 0x18, 3, 0x22, 18])
    assert want_raw[-13:] == bytes([0x28, *([0xFF] * 9), 0x01, 0x38, 0x00])
    [(key, value)] = read_db(tmp_path / "raw")
    assert key == b"00000000_a.png" and value == want_raw
    assert caffe_pb2.Datum.FromString(value) == caffe_pb2.Datum(
        channels=3, height=2, width=3, data=planes, label=-1, encoded=False)

    want_enc = caffe_datum(3, 2, 3, (tmp_path / "a.png").read_bytes(), -1, True)
    [(key, value)] = read_db(tmp_path / "enc")
    assert key == b"00000000_a.png" and value == want_enc


def test_mean_binaryproto_matches_hand_built_blob(tmp_path):
    imgs = crops(3, 2, 3, seed=5)
    for i, im in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"{i}.png"), im)
    (tmp_path / "list.txt").write_text("".join(f"{i}.png 0\n" for i in range(3)))
    convert_images(tmp_path, tmp_path / "list.txt", tmp_path / "db", ConvertOptions())
    write_mean(compute_image_mean([tmp_path / "db"]), str(tmp_path / "mean.binaryproto"))

    mean = np.stack(imgs).astype(np.float64).mean(axis=0).transpose(2, 0, 1).astype(np.float32)
    floats = struct.pack(f"<{mean.size}f", *mean.ravel())
    want = vfield(1, 1) + vfield(2, 3) + vfield(3, 2) + vfield(4, 3) + bfield(5, floats)
    assert (tmp_path / "mean.binaryproto").read_bytes() == want
    blob = caffe_pb2.BlobProto.FromString(want)
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 2, 3)
    assert np.array_equal(np.array(blob.data, np.float32), mean.ravel())
