"""Training: Caffe's solvers and the training loop, running on ONNX Runtime."""
