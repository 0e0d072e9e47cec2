"""Data feeding shared by ``test``, ``featuremap-dump`` and training: Caffe's DataTransformer,
record sources (LMDB of Datums, ImageData list files) and a prefetching batch feeder."""
