"""Pure ONNX helpers (graph building, running); no Caffe knowledge here."""
