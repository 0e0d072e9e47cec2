"""Readers and writers for every Caffe file format (prototxt, caffemodel, binaryproto, solverstate, LMDB)."""
