"""Model slimming: fold BatchNorm into the layer before it, prune, quantize, decompose InnerProduct
layers, and compare two models blob by blob.

Each transform is a pure function on a built Net and its arrays that returns a new NetParameter
and blobs (or an ONNX model); :mod:`dnntool.slim.report` writes the result and measures params,
MACs, file size and ONNX Runtime forward time before and after on the same batches.
"""
