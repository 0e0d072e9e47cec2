"""Generated protobuf bindings for dnntool's Caffe schema (proto/caffe.proto)."""

from dnntool.proto import caffe_pb2

__all__ = ["caffe_pb2"]
