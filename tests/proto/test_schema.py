"""Checks of dnntool's Caffe schema (proto/caffe.proto -> dnntool.proto.caffe_pb2).

* the checked-in generated module is what scripts/gen_proto.py produces;
* field numbers, types, enum values and defaults equal BVLC Caffe's (and the
  documented fork numbers);
* every real Caffe file in the zoo parses: text files strictly (no unknown
  fields allowed), binary files with blob counts checked against the
  collector's reference summary.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
from google.protobuf import text_format, unknown_fields
from google.protobuf.descriptor import FieldDescriptor as FD

from dnntool.proto import caffe_pb2
from tests.zoo import zoo_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
ZOO = zoo_dir()


# ---------------------------------------------------------------------------
# Generated code is up to date
# ---------------------------------------------------------------------------


def _load_gen_proto():
    spec = importlib.util.spec_from_file_location(
        "_dnntool_gen_proto", REPO_ROOT / "scripts" / "gen_proto.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_module_is_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed")
    gen_proto = _load_gen_proto()
    generated = gen_proto.generate(tmp_path)
    names = sorted(path.name for path in generated)
    assert names == ["caffe_pb2.py", "caffe_pb2.pyi"]
    for path in generated:
        checked_in = REPO_ROOT / "dnntool" / "proto" / path.name
        assert checked_in.read_bytes() == path.read_bytes(), (
            f"{checked_in} is stale; run: python scripts/gen_proto.py"
        )


def test_schema_identity():
    fd = caffe_pb2.DESCRIPTOR
    assert fd.name == "caffe.proto"
    assert fd.package == "caffe"
    # proto2: explicit presence on singular scalars.
    assert caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name["base_lr"].has_presence


# ---------------------------------------------------------------------------
# Field numbers (BVLC Caffe master 9b89154 unless marked as a fork field)
# ---------------------------------------------------------------------------

# fmt: off
FIELD_NUMBERS: dict[str, dict[str, int]] = {
    "BlobShape": {"dim": 1},
    "BlobProto": {
        "num": 1, "channels": 2, "height": 3, "width": 4, "data": 5, "diff": 6,
        "shape": 7, "double_data": 8, "double_diff": 9,
    },
    "BlobProtoVector": {"blobs": 1},
    "Datum": {
        "channels": 1, "height": 2, "width": 3, "data": 4, "label": 5,
        "float_data": 6, "encoded": 7,
    },
    "FillerParameter": {
        "type": 1, "value": 2, "min": 3, "max": 4, "mean": 5, "std": 6,
        "sparse": 7, "variance_norm": 8,
    },
    "NetParameter": {
        "name": 1, "layers": 2, "input": 3, "input_dim": 4, "force_backward": 5,
        "state": 6, "debug_info": 7, "input_shape": 8, "layer": 100,
    },
    "SolverParameter": {
        "train_net": 1, "test_net": 2, "test_iter": 3, "test_interval": 4,
        "base_lr": 5, "display": 6, "max_iter": 7, "lr_policy": 8, "gamma": 9,
        "power": 10, "momentum": 11, "weight_decay": 12, "stepsize": 13,
        "snapshot": 14, "snapshot_prefix": 15, "snapshot_diff": 16,
        "solver_mode": 17, "device_id": 18, "test_compute_loss": 19,
        "random_seed": 20, "train_net_param": 21, "test_net_param": 22,
        "debug_info": 23, "net": 24, "net_param": 25, "train_state": 26,
        "test_state": 27, "snapshot_after_train": 28, "regularization_type": 29,
        "solver_type": 30, "delta": 31, "test_initialization": 32,
        "average_loss": 33, "stepvalue": 34, "clip_gradients": 35,
        "iter_size": 36, "snapshot_format": 37, "rms_decay": 38,
        "momentum2": 39, "type": 40, "layer_wise_reduce": 41, "weights": 42,
        # SSD / NVCaffe
        "plateau_winsize": 43, "show_per_class_result": 44,
        "store_blobs_in_old_format": 45, "eval_type": 2041, "ap_version": 2042,
    },
    "SolverState": {
        "iter": 1, "learned_net": 2, "history": 3, "current_step": 4,
        "minimum_loss": 5, "iter_last_event": 6,
    },
    "NetState": {"phase": 1, "level": 2, "stage": 3},
    "NetStateRule": {"phase": 1, "min_level": 2, "max_level": 3, "stage": 4, "not_stage": 5},
    "ParamSpec": {"name": 1, "share_mode": 2, "lr_mult": 3, "decay_mult": 4},
    "LayerParameter": {
        "name": 1, "type": 2, "bottom": 3, "top": 4, "loss_weight": 5, "param": 6,
        "blobs": 7, "include": 8, "exclude": 9, "phase": 10, "propagate_down": 11,
        "transform_param": 100, "loss_param": 101, "accuracy_param": 102,
        "argmax_param": 103, "concat_param": 104, "contrastive_loss_param": 105,
        "convolution_param": 106, "data_param": 107, "dropout_param": 108,
        "dummy_data_param": 109, "eltwise_param": 110, "exp_param": 111,
        "hdf5_data_param": 112, "hdf5_output_param": 113, "hinge_loss_param": 114,
        "image_data_param": 115, "infogain_loss_param": 116,
        "inner_product_param": 117, "lrn_param": 118, "memory_data_param": 119,
        "mvn_param": 120, "pooling_param": 121, "power_param": 122,
        "relu_param": 123, "sigmoid_param": 124, "softmax_param": 125,
        "slice_param": 126, "tanh_param": 127, "threshold_param": 128,
        "window_data_param": 129, "python_param": 130, "prelu_param": 131,
        "spp_param": 132, "reshape_param": 133, "log_param": 134,
        "flatten_param": 135, "reduction_param": 136, "embed_param": 137,
        "tile_param": 138, "batch_norm_param": 139, "elu_param": 140,
        "bias_param": 141, "scale_param": 142, "input_param": 143,
        "crop_param": 144, "parameter_param": 145, "recurrent_param": 146,
        "swish_param": 147, "clip_param": 148,
        # SSD (weiliu89/caffe, ssd)
        "annotated_data_param": 200, "multibox_loss_param": 201,
        "permute_param": 202, "prior_box_param": 203,
        "detection_output_param": 204, "detection_evaluate_param": 205,
        "norm_param": 206, "video_data_param": 207,
        # Fast(er) R-CNN, R-FCN, FlowNet 2, PSPNet, ShuffleNet
        "roi_pooling_param": 8266711, "smooth_l1_loss_param": 8266712,
        "box_annotator_ohem_param": 10000, "psroi_pooling_param": 10001,
        "correlation_param": 150, "interp_param": 163,
        "shuffle_channel_param": 164,
        # relocated / assigned fork fields
        "upsample_param": 2137, "bbox_data_param": 2147, "squeezedet_param": 2148,
        "seg_accuracy_param": 2164, "proposal_param": 2201, "force_backward": 4000,
    },
    "TransformationParameter": {
        "scale": 1, "mirror": 2, "crop_size": 3, "mean_file": 4, "mean_value": 5,
        "force_color": 6, "force_gray": 7,
        # SSD
        "resize_param": 8, "noise_param": 9, "emit_constraint": 10, "crop_h": 11,
        "crop_w": 12, "distort_param": 13, "expand_param": 14,
    },
    "LossParameter": {
        "ignore_label": 1, "normalize": 2, "normalization": 3,
        "pre_fixed_normalizer": 4,
    },
    "AccuracyParameter": {"top_k": 1, "axis": 2, "ignore_label": 3},
    "ArgMaxParameter": {"out_max_val": 1, "top_k": 2, "axis": 3},
    "ClipParameter": {"min": 1, "max": 2},
    "ConcatParameter": {"concat_dim": 1, "axis": 2},
    "BatchNormParameter": {"use_global_stats": 1, "moving_average_fraction": 2, "eps": 3},
    "BiasParameter": {"axis": 1, "num_axes": 2, "filler": 3},
    "ContrastiveLossParameter": {"margin": 1, "legacy_version": 2},
    "ConvolutionParameter": {
        "num_output": 1, "bias_term": 2, "pad": 3, "kernel_size": 4, "group": 5,
        "stride": 6, "weight_filler": 7, "bias_filler": 8, "pad_h": 9, "pad_w": 10,
        "kernel_h": 11, "kernel_w": 12, "stride_h": 13, "stride_w": 14,
        "engine": 15, "axis": 16, "force_nd_im2col": 17, "dilation": 18,
    },
    "CropParameter": {"axis": 1, "offset": 2},
    "DataParameter": {
        "source": 1, "scale": 2, "mean_file": 3, "batch_size": 4, "crop_size": 5,
        "mirror": 6, "rand_skip": 7, "backend": 8, "force_encoded_color": 9,
        "prefetch": 10,
    },
    "DropoutParameter": {"dropout_ratio": 1, "scale_train": 2},
    "DummyDataParameter": {
        "data_filler": 1, "num": 2, "channels": 3, "height": 4, "width": 5, "shape": 6,
    },
    "EltwiseParameter": {"operation": 1, "coeff": 2, "stable_prod_grad": 3},
    "ELUParameter": {"alpha": 1},
    "EmbedParameter": {
        "num_output": 1, "input_dim": 2, "bias_term": 3, "weight_filler": 4,
        "bias_filler": 5,
    },
    "ExpParameter": {"base": 1, "scale": 2, "shift": 3},
    "FlattenParameter": {"axis": 1, "end_axis": 2},
    "HDF5DataParameter": {"source": 1, "batch_size": 2, "shuffle": 3},
    "HDF5OutputParameter": {"file_name": 1},
    "HingeLossParameter": {"norm": 1},
    "ImageDataParameter": {
        "source": 1, "scale": 2, "mean_file": 3, "batch_size": 4, "crop_size": 5,
        "mirror": 6, "rand_skip": 7, "shuffle": 8, "new_height": 9,
        "new_width": 10, "is_color": 11, "root_folder": 12,
        "ignore_label": 15, "label_type": 16,
    },
    "InfogainLossParameter": {"source": 1, "axis": 2},
    "InnerProductParameter": {
        "num_output": 1, "bias_term": 2, "weight_filler": 3, "bias_filler": 4,
        "axis": 5, "transpose": 6,
    },
    "InputParameter": {"shape": 1},
    "LogParameter": {"base": 1, "scale": 2, "shift": 3},
    "LRNParameter": {
        "local_size": 1, "alpha": 2, "beta": 3, "norm_region": 4, "k": 5, "engine": 6,
    },
    "MemoryDataParameter": {"batch_size": 1, "channels": 2, "height": 3, "width": 4},
    "MVNParameter": {"normalize_variance": 1, "across_channels": 2, "eps": 3},
    "ParameterParameter": {"shape": 1},
    "PoolingParameter": {
        "pool": 1, "kernel_size": 2, "stride": 3, "pad": 4, "kernel_h": 5,
        "kernel_w": 6, "stride_h": 7, "stride_w": 8, "pad_h": 9, "pad_w": 10,
        "engine": 11, "global_pooling": 12, "round_mode": 13, "ceil_mode": 1013,
    },
    "PowerParameter": {"power": 1, "scale": 2, "shift": 3},
    "PythonParameter": {"module": 1, "layer": 2, "param_str": 3, "share_in_parallel": 4},
    "RecurrentParameter": {
        "num_output": 1, "weight_filler": 2, "bias_filler": 3, "debug_info": 4,
        "expose_hidden": 5,
    },
    "ReductionParameter": {"operation": 1, "axis": 2, "coeff": 3},
    "ReLUParameter": {"negative_slope": 1, "engine": 2},
    "ReshapeParameter": {"shape": 1, "axis": 2, "num_axes": 3},
    "ScaleParameter": {"axis": 1, "num_axes": 2, "filler": 3, "bias_term": 4, "bias_filler": 5},
    "SigmoidParameter": {"engine": 1},
    "SliceParameter": {"slice_dim": 1, "slice_point": 2, "axis": 3},
    "SoftmaxParameter": {"engine": 1, "axis": 2},
    "SwishParameter": {"beta": 1},
    "TanHParameter": {"engine": 1},
    "TileParameter": {"axis": 1, "tiles": 2},
    "ThresholdParameter": {"threshold": 1},
    "WindowDataParameter": {
        "source": 1, "scale": 2, "mean_file": 3, "batch_size": 4, "crop_size": 5,
        "mirror": 6, "fg_threshold": 7, "bg_threshold": 8, "fg_fraction": 9,
        "context_pad": 10, "crop_mode": 11, "cache_images": 12, "root_folder": 13,
    },
    "SPPParameter": {"pyramid_height": 1, "pool": 2, "engine": 6},
    "PReLUParameter": {"filler": 1, "channel_shared": 2},
    "V1LayerParameter": {
        "layer": 1, "bottom": 2, "top": 3, "name": 4, "type": 5, "blobs": 6,
        "blobs_lr": 7, "weight_decay": 8, "concat_param": 9,
        "convolution_param": 10, "data_param": 11, "dropout_param": 12,
        "hdf5_data_param": 13, "hdf5_output_param": 14, "image_data_param": 15,
        "infogain_loss_param": 16, "inner_product_param": 17, "lrn_param": 18,
        "pooling_param": 19, "window_data_param": 20, "power_param": 21,
        "memory_data_param": 22, "argmax_param": 23, "eltwise_param": 24,
        "threshold_param": 25, "dummy_data_param": 26, "accuracy_param": 27,
        "hinge_loss_param": 29, "relu_param": 30, "slice_param": 31,
        "include": 32, "exclude": 33, "mvn_param": 34, "loss_weight": 35,
        "transform_param": 36, "tanh_param": 37, "sigmoid_param": 38,
        "softmax_param": 39, "contrastive_loss_param": 40, "exp_param": 41,
        "loss_param": 42, "param": 1001, "blob_share_mode": 1002,
    },
    "V0LayerParameter": {
        "name": 1, "type": 2, "num_output": 3, "biasterm": 4, "weight_filler": 5,
        "bias_filler": 6, "pad": 7, "kernelsize": 8, "group": 9, "stride": 10,
        "pool": 11, "dropout_ratio": 12, "local_size": 13, "alpha": 14, "beta": 15,
        "source": 16, "scale": 17, "meanfile": 18, "batchsize": 19, "cropsize": 20,
        "mirror": 21, "k": 22, "blobs": 50, "blobs_lr": 51, "weight_decay": 52,
        "rand_skip": 53, "det_fg_threshold": 54, "det_bg_threshold": 55,
        "det_fg_fraction": 56, "det_context_pad": 58, "det_crop_mode": 59,
        "new_num": 60, "new_channels": 61, "new_height": 62, "new_width": 63,
        "shuffle_images": 64, "concat_dim": 65, "hdf5_output_param": 1001,
    },
    # --- fork messages ---
    "LabelMapItem": {"name": 1, "label": 2, "display_name": 3},
    "LabelMap": {"item": 1},
    "Sampler": {"min_scale": 1, "max_scale": 2, "min_aspect_ratio": 3, "max_aspect_ratio": 4},
    "BatchSampler": {
        "use_original_image": 1, "sampler": 2, "sample_constraint": 3,
        "max_sample": 4, "max_trials": 5,
    },
    "NormalizedBBox": {
        "xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4, "label": 5, "difficult": 6,
        "score": 7, "size": 8,
    },
    "AnnotatedDatum": {"datum": 1, "type": 2, "annotation_group": 3},
    "AnnotatedDataParameter": {"batch_sampler": 1, "label_map_file": 2, "anno_type": 3},
    "ResizeParameter": {
        "prob": 1, "resize_mode": 2, "height": 3, "width": 4, "pad_mode": 5,
        "pad_value": 6, "interp_mode": 7, "height_scale": 8, "width_scale": 9,
    },
    "DetectionOutputParameter": {
        "num_classes": 1, "share_location": 2, "background_label_id": 3,
        "nms_param": 4, "save_output_param": 5, "code_type": 6, "keep_top_k": 7,
        "variance_encoded_in_target": 8, "confidence_threshold": 9,
    },
    "MultiBoxLossParameter": {
        "loc_loss_type": 1, "conf_loss_type": 2, "loc_weight": 3, "num_classes": 4,
        "share_location": 5, "match_type": 6, "overlap_threshold": 7,
        "neg_pos_ratio": 12, "neg_overlap": 13, "code_type": 14,
        "mining_type": 20, "nms_param": 21,
    },
    "PriorBoxParameter": {
        "min_size": 1, "max_size": 2, "aspect_ratio": 3, "flip": 4, "clip": 5,
        "variance": 6, "img_size": 7, "img_h": 8, "img_w": 9, "step": 10,
        "step_h": 11, "step_w": 12, "offset": 13, "offset_h": 14, "offset_w": 15,
        "width": 16, "height": 17,
    },
    "NormalizeParameter": {"across_spatial": 1, "scale_filler": 2, "channel_shared": 3, "eps": 4},
    "PermuteParameter": {"order": 1},
    "ROIPoolingParameter": {"pooled_h": 1, "pooled_w": 2, "spatial_scale": 3},
    "SmoothL1LossParameter": {"sigma": 1},
    "PSROIPoolingParameter": {"spatial_scale": 1, "output_dim": 2, "group_size": 3},
    "BoxAnnotatorOHEMParameter": {"roi_per_img": 1, "ignore_label": 2},
    "ShuffleChannelParameter": {"group": 1},
    "InterpParameter": {
        "height": 1, "width": 2, "zoom_factor": 3, "shrink_factor": 4, "pad_beg": 5,
        "pad_end": 6,
    },
    "UpsampleParameter": {
        "scale": 1, "scale_h": 2, "scale_w": 3, "pad_out_h": 4, "pad_out_w": 5,
        "upsample_h": 6, "upsample_w": 7,
    },
    "CorrelationParameter": {
        "pad": 2, "kernel_size": 3, "max_displacement": 4, "stride_1": 5,
        "stride_2": 6, "do_abs": 7, "single_direction": 8, "correlation_type": 15,
    },
    "SegAccuracyParameter": {"output_label": 1, "ignore_label": 2},
    "ProposalParameter": {
        "feat_stride": 1, "base_size": 2, "min_size": 3, "ratio": 4, "scale": 5,
        "pre_nms_topn": 6, "post_nms_topn": 7, "nms_thresh": 8,
    },
}
# fmt: on


@pytest.mark.parametrize("message", sorted(FIELD_NUMBERS))
def test_field_numbers(message):
    descriptor = getattr(caffe_pb2, message).DESCRIPTOR
    actual = {
        name: descriptor.fields_by_name[name].number
        for name in FIELD_NUMBERS[message]
        if name in descriptor.fields_by_name
    }
    missing = sorted(set(FIELD_NUMBERS[message]) - set(actual))
    assert not missing, f"{message} lacks fields {missing}"
    assert actual == FIELD_NUMBERS[message]


def test_bvlc_messages_are_complete():
    """BVLC messages carry exactly BVLC's fields plus the documented fork ones."""
    for message in (
        "BlobShape",
        "BlobProto",
        "BlobProtoVector",
        "Datum",
        "FillerParameter",
        "NetParameter",
        "NetState",
        "NetStateRule",
        "ParamSpec",
        "SolverState",
        "SolverParameter",
        "LayerParameter",
        "V1LayerParameter",
        "ConvolutionParameter",
        "PoolingParameter",
    ):
        names = set(getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name)
        assert names == set(FIELD_NUMBERS[message]), message


FIELD_TYPES = [
    ("BlobShape", "dim", FD.TYPE_INT64, True, True),
    ("BlobProto", "data", FD.TYPE_FLOAT, True, True),
    ("BlobProto", "diff", FD.TYPE_FLOAT, True, True),
    ("BlobProto", "double_data", FD.TYPE_DOUBLE, True, True),
    ("BlobProto", "double_diff", FD.TYPE_DOUBLE, True, True),
    ("BlobProto", "num", FD.TYPE_INT32, False, False),
    ("BlobProto", "width", FD.TYPE_INT32, False, False),
    ("Datum", "data", FD.TYPE_BYTES, False, False),
    ("Datum", "label", FD.TYPE_INT32, False, False),
    ("Datum", "float_data", FD.TYPE_FLOAT, True, False),
    ("NetParameter", "input_dim", FD.TYPE_INT32, True, False),
    ("NetParameter", "input", FD.TYPE_STRING, True, False),
    ("SolverParameter", "random_seed", FD.TYPE_INT64, False, False),
    ("SolverParameter", "test_iter", FD.TYPE_INT32, True, False),
    ("SolverParameter", "base_lr", FD.TYPE_FLOAT, False, False),
    ("SolverParameter", "type", FD.TYPE_STRING, False, False),
    ("SolverParameter", "weights", FD.TYPE_STRING, True, False),
    ("SolverState", "iter", FD.TYPE_INT32, False, False),
    ("LayerParameter", "loss_weight", FD.TYPE_FLOAT, True, False),
    ("LayerParameter", "propagate_down", FD.TYPE_BOOL, True, False),
    ("LayerParameter", "phase", FD.TYPE_ENUM, False, False),
    ("ConvolutionParameter", "kernel_size", FD.TYPE_UINT32, True, False),
    ("ConvolutionParameter", "num_output", FD.TYPE_UINT32, False, False),
    ("ConvolutionParameter", "axis", FD.TYPE_INT32, False, False),
    ("PoolingParameter", "kernel_size", FD.TYPE_UINT32, False, False),
    ("FillerParameter", "sparse", FD.TYPE_INT32, False, False),
    ("ReshapeParameter", "shape", FD.TYPE_MESSAGE, False, False),
    ("V1LayerParameter", "blobs_lr", FD.TYPE_FLOAT, True, False),
    ("V1LayerParameter", "param", FD.TYPE_STRING, True, False),
    ("V1LayerParameter", "type", FD.TYPE_ENUM, False, False),
    ("PoolingParameter", "ceil_mode", FD.TYPE_BOOL, False, False),
    ("ShuffleChannelParameter", "group", FD.TYPE_UINT32, False, False),
]


@pytest.mark.parametrize(("message", "field", "ftype", "repeated", "packed"), FIELD_TYPES)
def test_field_types(message, field, ftype, repeated, packed):
    fd = getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field]
    assert fd.type == ftype
    assert fd.is_repeated == repeated
    assert fd.is_packed == packed


def test_required_fields():
    for message, fields in {
        "ClipParameter": ("min", "max"),
        "PSROIPoolingParameter": ("spatial_scale", "output_dim", "group_size"),
        "BoxAnnotatorOHEMParameter": ("roi_per_img",),
    }.items():
        descriptor = getattr(caffe_pb2, message).DESCRIPTOR
        for name in fields:
            assert descriptor.fields_by_name[name].is_required, (message, name)


# ---------------------------------------------------------------------------
# Enum values
# ---------------------------------------------------------------------------

# fmt: off
V1_LAYER_TYPES = {
    "NONE": 0, "ACCURACY": 1, "BNLL": 2, "CONCAT": 3, "CONVOLUTION": 4, "DATA": 5,
    "DROPOUT": 6, "EUCLIDEAN_LOSS": 7, "FLATTEN": 8, "HDF5_DATA": 9,
    "HDF5_OUTPUT": 10, "IM2COL": 11, "IMAGE_DATA": 12, "INFOGAIN_LOSS": 13,
    "INNER_PRODUCT": 14, "LRN": 15, "MULTINOMIAL_LOGISTIC_LOSS": 16, "POOLING": 17,
    "RELU": 18, "SIGMOID": 19, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22,
    "TANH": 23, "WINDOW_DATA": 24, "ELTWISE": 25, "POWER": 26,
    "SIGMOID_CROSS_ENTROPY_LOSS": 27, "HINGE_LOSS": 28, "MEMORY_DATA": 29,
    "ARGMAX": 30, "THRESHOLD": 31, "DUMMY_DATA": 32, "SLICE": 33, "MVN": 34,
    "ABSVAL": 35, "SILENCE": 36, "CONTRASTIVE_LOSS": 37, "EXP": 38,
    "DECONVOLUTION": 39,
    "CROP": 40,  # FCN-era fork value
}
# fmt: on

ENUMS = [
    (caffe_pb2.V1LayerParameter.LayerType, V1_LAYER_TYPES),
    (caffe_pb2.Phase, {"TRAIN": 0, "TEST": 1}),
    (caffe_pb2.SolverParameter.SnapshotFormat, {"HDF5": 0, "BINARYPROTO": 1}),
    (caffe_pb2.SolverParameter.SolverMode, {"CPU": 0, "GPU": 1}),
    (
        caffe_pb2.SolverParameter.SolverType,
        {"SGD": 0, "NESTEROV": 1, "ADAGRAD": 2, "RMSPROP": 3, "ADADELTA": 4, "ADAM": 5},
    ),
    (caffe_pb2.FillerParameter.VarianceNorm, {"FAN_IN": 0, "FAN_OUT": 1, "AVERAGE": 2}),
    (caffe_pb2.ParamSpec.DimCheckMode, {"STRICT": 0, "PERMISSIVE": 1}),
    (caffe_pb2.V1LayerParameter.DimCheckMode, {"STRICT": 0, "PERMISSIVE": 1}),
    (
        caffe_pb2.LossParameter.NormalizationMode,
        {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3, "PRE_FIXED": 2003},
    ),
    (caffe_pb2.PoolingParameter.PoolMethod, {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}),
    (caffe_pb2.PoolingParameter.RoundMode, {"CEIL": 0, "FLOOR": 1}),
    (caffe_pb2.ConvolutionParameter.Engine, {"DEFAULT": 0, "CAFFE": 1, "CUDNN": 2}),
    (caffe_pb2.EltwiseParameter.EltwiseOp, {"PROD": 0, "SUM": 1, "MAX": 2}),
    (caffe_pb2.LRNParameter.NormRegion, {"ACROSS_CHANNELS": 0, "WITHIN_CHANNEL": 1}),
    (caffe_pb2.HingeLossParameter.Norm, {"L1": 1, "L2": 2}),
    (caffe_pb2.DataParameter.DB, {"LEVELDB": 0, "LMDB": 1}),
    (caffe_pb2.ReductionParameter.ReductionOp, {"SUM": 1, "ASUM": 2, "SUMSQ": 3, "MEAN": 4}),
    (caffe_pb2.V0LayerParameter.PoolMethod, {"MAX": 0, "AVE": 1, "STOCHASTIC": 2}),
    (caffe_pb2.PriorBoxParameter.CodeType, {"CORNER": 1, "CENTER_SIZE": 2, "CORNER_SIZE": 3}),
    (caffe_pb2.EmitConstraint.EmitType, {"CENTER": 0, "MIN_OVERLAP": 1}),
    (
        caffe_pb2.ResizeParameter.Resize_mode,
        {"WARP": 1, "FIT_SMALL_SIZE": 2, "FIT_LARGE_SIZE_AND_PAD": 3},
    ),
    (caffe_pb2.MultiBoxLossParameter.MiningType, {"NONE": 0, "MAX_NEGATIVE": 1, "HARD_EXAMPLE": 2}),
]


@pytest.mark.parametrize(
    ("enum", "expected"),
    ENUMS,
    ids=lambda v: getattr(v, "DESCRIPTOR", None) and v.DESCRIPTOR.full_name,
)
def test_enum_values(enum, expected):
    assert dict(enum.items()) == expected


# ---------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------

DEFAULTS = [
    ("BlobProto", "num", 0),
    ("Datum", "encoded", False),
    ("FillerParameter", "type", "constant"),
    ("FillerParameter", "max", 1.0),
    ("FillerParameter", "std", 1.0),
    ("FillerParameter", "sparse", -1),
    ("FillerParameter", "variance_norm", caffe_pb2.FillerParameter.FAN_IN),
    ("NetParameter", "force_backward", False),
    ("NetState", "phase", caffe_pb2.TEST),
    ("NetState", "level", 0),
    ("ParamSpec", "lr_mult", 1.0),
    ("ParamSpec", "decay_mult", 1.0),
    ("SolverParameter", "test_interval", 0),
    ("SolverParameter", "test_compute_loss", False),
    ("SolverParameter", "test_initialization", True),
    ("SolverParameter", "average_loss", 1),
    ("SolverParameter", "iter_size", 1),
    ("SolverParameter", "regularization_type", "L2"),
    ("SolverParameter", "clip_gradients", -1.0),
    ("SolverParameter", "snapshot", 0),
    ("SolverParameter", "snapshot_diff", False),
    ("SolverParameter", "snapshot_format", caffe_pb2.SolverParameter.BINARYPROTO),
    ("SolverParameter", "solver_mode", caffe_pb2.SolverParameter.GPU),
    ("SolverParameter", "device_id", 0),
    ("SolverParameter", "random_seed", -1),
    ("SolverParameter", "type", "SGD"),
    ("SolverParameter", "delta", 1e-8),
    ("SolverParameter", "momentum2", 0.999),
    ("SolverParameter", "rms_decay", 0.99),
    ("SolverParameter", "debug_info", False),
    ("SolverParameter", "snapshot_after_train", True),
    ("SolverParameter", "solver_type", caffe_pb2.SolverParameter.SGD),
    ("SolverParameter", "layer_wise_reduce", True),
    ("SolverParameter", "eval_type", "classification"),
    ("SolverParameter", "ap_version", "Integral"),
    ("SolverState", "current_step", 0),
    ("TransformationParameter", "scale", 1.0),
    ("TransformationParameter", "mirror", False),
    ("TransformationParameter", "crop_size", 0),
    ("LossParameter", "normalization", caffe_pb2.LossParameter.VALID),
    ("AccuracyParameter", "top_k", 1),
    ("AccuracyParameter", "axis", 1),
    ("ArgMaxParameter", "top_k", 1),
    ("ConcatParameter", "axis", 1),
    ("ConcatParameter", "concat_dim", 1),
    ("BatchNormParameter", "moving_average_fraction", 0.999),
    ("BatchNormParameter", "eps", 1e-5),
    ("BiasParameter", "axis", 1),
    ("BiasParameter", "num_axes", 1),
    ("ContrastiveLossParameter", "margin", 1.0),
    ("ConvolutionParameter", "bias_term", True),
    ("ConvolutionParameter", "group", 1),
    ("ConvolutionParameter", "pad_h", 0),
    ("ConvolutionParameter", "axis", 1),
    ("ConvolutionParameter", "engine", caffe_pb2.ConvolutionParameter.DEFAULT),
    ("ConvolutionParameter", "force_nd_im2col", False),
    ("CropParameter", "axis", 2),
    ("DataParameter", "backend", caffe_pb2.DataParameter.LEVELDB),
    ("DataParameter", "prefetch", 4),
    ("DataParameter", "scale", 1.0),
    ("DropoutParameter", "dropout_ratio", 0.5),
    ("EltwiseParameter", "operation", caffe_pb2.EltwiseParameter.SUM),
    ("EltwiseParameter", "stable_prod_grad", True),
    ("ELUParameter", "alpha", 1.0),
    ("EmbedParameter", "bias_term", True),
    ("ExpParameter", "base", -1.0),
    ("ExpParameter", "scale", 1.0),
    ("FlattenParameter", "axis", 1),
    ("FlattenParameter", "end_axis", -1),
    ("HingeLossParameter", "norm", caffe_pb2.HingeLossParameter.L1),
    ("ImageDataParameter", "batch_size", 1),
    ("ImageDataParameter", "is_color", True),
    ("ImageDataParameter", "root_folder", ""),
    ("InfogainLossParameter", "axis", 1),
    ("InnerProductParameter", "bias_term", True),
    ("InnerProductParameter", "axis", 1),
    ("InnerProductParameter", "transpose", False),
    ("LogParameter", "base", -1.0),
    ("LRNParameter", "local_size", 5),
    ("LRNParameter", "alpha", 1.0),
    ("LRNParameter", "beta", 0.75),
    ("LRNParameter", "k", 1.0),
    ("LRNParameter", "norm_region", caffe_pb2.LRNParameter.ACROSS_CHANNELS),
    ("MVNParameter", "normalize_variance", True),
    ("MVNParameter", "across_channels", False),
    ("MVNParameter", "eps", 1e-9),
    ("PoolingParameter", "pool", caffe_pb2.PoolingParameter.MAX),
    ("PoolingParameter", "pad", 0),
    ("PoolingParameter", "stride", 1),
    ("PoolingParameter", "global_pooling", False),
    ("PoolingParameter", "round_mode", caffe_pb2.PoolingParameter.CEIL),
    ("PoolingParameter", "ceil_mode", True),
    ("PowerParameter", "power", 1.0),
    ("PowerParameter", "scale", 1.0),
    ("PowerParameter", "shift", 0.0),
    ("PythonParameter", "param_str", ""),
    ("PythonParameter", "share_in_parallel", False),
    ("RecurrentParameter", "num_output", 0),
    ("ReductionParameter", "operation", caffe_pb2.ReductionParameter.SUM),
    ("ReductionParameter", "axis", 0),
    ("ReductionParameter", "coeff", 1.0),
    ("ReLUParameter", "negative_slope", 0.0),
    ("ReshapeParameter", "axis", 0),
    ("ReshapeParameter", "num_axes", -1),
    ("ScaleParameter", "axis", 1),
    ("ScaleParameter", "num_axes", 1),
    ("ScaleParameter", "bias_term", False),
    ("SliceParameter", "axis", 1),
    ("SliceParameter", "slice_dim", 1),
    ("SoftmaxParameter", "axis", 1),
    ("SwishParameter", "beta", 1.0),
    ("TileParameter", "axis", 1),
    ("ThresholdParameter", "threshold", 0.0),
    ("WindowDataParameter", "fg_threshold", 0.5),
    ("WindowDataParameter", "fg_fraction", 0.25),
    ("WindowDataParameter", "crop_mode", "warp"),
    ("SPPParameter", "pool", caffe_pb2.SPPParameter.MAX),
    ("PReLUParameter", "channel_shared", False),
    ("V0LayerParameter", "biasterm", True),
    ("V0LayerParameter", "group", 1),
    ("V0LayerParameter", "stride", 1),
    ("V0LayerParameter", "dropout_ratio", 0.5),
    ("V0LayerParameter", "local_size", 5),
    ("V0LayerParameter", "beta", 0.75),
    ("V0LayerParameter", "det_crop_mode", "warp"),
    ("V0LayerParameter", "concat_dim", 1),
    # forks
    ("BatchSampler", "use_original_image", True),
    ("BatchSampler", "max_trials", 100),
    ("Sampler", "min_scale", 1.0),
    ("ResizeParameter", "resize_mode", caffe_pb2.ResizeParameter.WARP),
    ("NoiseParameter", "jpeg", -1.0),
    ("ExpansionParameter", "max_expand_ratio", 1.0),
    ("NonMaximumSuppressionParameter", "nms_threshold", 0.3),
    ("NonMaximumSuppressionParameter", "eta", 1.0),
    ("DetectionOutputParameter", "share_location", True),
    ("DetectionOutputParameter", "keep_top_k", -1),
    ("DetectionOutputParameter", "code_type", caffe_pb2.PriorBoxParameter.CORNER),
    ("DetectionEvaluateParameter", "overlap_threshold", 0.5),
    ("MultiBoxLossParameter", "loc_loss_type", caffe_pb2.MultiBoxLossParameter.SMOOTH_L1),
    ("MultiBoxLossParameter", "match_type", caffe_pb2.MultiBoxLossParameter.PER_PREDICTION),
    ("MultiBoxLossParameter", "neg_pos_ratio", 3.0),
    ("MultiBoxLossParameter", "mining_type", caffe_pb2.MultiBoxLossParameter.MAX_NEGATIVE),
    ("MultiBoxLossParameter", "sample_size", 64),
    ("NormalizeParameter", "across_spatial", True),
    ("NormalizeParameter", "channel_shared", True),
    ("NormalizeParameter", "eps", 1e-10),
    ("PriorBoxParameter", "flip", True),
    ("PriorBoxParameter", "clip", False),
    ("PriorBoxParameter", "offset", 0.5),
    ("ROIPoolingParameter", "spatial_scale", 1.0),
    ("SmoothL1LossParameter", "sigma", 1.0),
    ("BoxAnnotatorOHEMParameter", "ignore_label", -1),
    ("ShuffleChannelParameter", "group", 1),
    ("InterpParameter", "zoom_factor", 1),
    ("InterpParameter", "shrink_factor", 1),
    ("UpsampleParameter", "scale", 2),
    ("CorrelationParameter", "stride_1", 1),
    ("ProposalParameter", "feat_stride", 16),
    ("ProposalParameter", "pre_nms_topn", 6000),
    ("ProposalParameter", "post_nms_topn", 300),
    ("ProposalParameter", "nms_thresh", 0.7),
    ("DropoutParameter", "scale_train", True),
    ("SolverState", "minimum_loss", 1e38),
]


@pytest.mark.parametrize(("message", "field", "expected"), DEFAULTS)
def test_defaults(message, field, expected):
    value = getattr(getattr(caffe_pb2, message)(), field)
    if isinstance(expected, float):
        # float fields hold float32 values
        assert value == pytest.approx(expected, rel=1e-6)
    else:
        assert value == expected
        assert type(value) is type(expected)


def _next_id_comment(message: str) -> int:
    text = (REPO_ROOT / "proto" / "caffe.proto").read_text(encoding="utf-8")
    match = re.search(rf"{message} next available (?:layer-specific )?ID: (\d+)", text)
    assert match, f"no 'next available ID' comment for {message}"
    return int(match.group(1))


@pytest.mark.parametrize(
    ("message", "block_end"), [("LayerParameter", 200), ("SolverParameter", 1000)]
)
def test_next_available_id_comment(message, block_end):
    """The "next available ID" comment names a free number right after the last used one."""
    next_id = _next_id_comment(message)
    numbers = {f.number for f in getattr(caffe_pb2, message).DESCRIPTOR.fields}
    assert next_id not in numbers
    assert next_id - 1 in numbers
    assert not [n for n in numbers if next_id < n < block_end]


# ---------------------------------------------------------------------------
# Text files in the zoo
# ---------------------------------------------------------------------------

_SKIP_NO_ZOO = pytest.mark.skip(reason="Caffe zoo not found (set DNNTOOL_ZOO)")

# chuanqi305/MobileNet-SSD ships templates with placeholders ("cls3x" means
# 3 x number of classes) in place of some integers; its gen script fills them.
_PLACEHOLDER = re.compile(r"(:\s*)cls(\d+)x\b")

_SOLVER_ONLY = set(caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name) - set(
    caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name
)
_TOKEN = re.compile(
    r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[{}:]|[A-Za-z_]\w*|[^\s{}:#]+'
)


def top_level_fields(text: str) -> set[str]:
    """Names of the fields set at the outermost level of a text-format file."""
    depth, names, previous = 0, set(), None
    for token in _TOKEN.findall(text):
        if token.startswith("#"):
            continue
        if token in ("{", ":"):
            if depth == 0 and previous:
                names.add(previous)
            depth += token == "{"
            previous = None
        elif token == "}":
            depth -= 1
            previous = None
        else:
            previous = token if token[0].isalpha() or token[0] == "_" else None
    return names


def message_class_for(text: str):
    """Pick the top-level message of a Caffe text file from its field names."""
    fields = top_level_fields(text)
    if "item" in fields:
        return caffe_pb2.LabelMap
    if fields & _SOLVER_ONLY:
        return caffe_pb2.SolverParameter
    return caffe_pb2.NetParameter


def _rel(path: Path) -> str:
    return path.relative_to(ZOO).as_posix()


def _prototxt_params():
    if ZOO is None:
        return [pytest.param(None, marks=_SKIP_NO_ZOO, id="no-zoo")]
    return [pytest.param(path, id=_rel(path)) for path in sorted(ZOO.rglob("*.prototxt"))]


def test_top_level_field_scanner():
    text = 'name: "x" # layer { }\nlayer { name: "a{" convolution_param { num_output: 1 } }\ninput: "d"'
    assert top_level_fields(text) == {"name", "layer", "input"}
    assert message_class_for('net: "a.prototxt"\nbase_lr: 0.1') is caffe_pb2.SolverParameter
    assert message_class_for('item { name: "bg" label: 0 }') is caffe_pb2.LabelMap


@pytest.mark.parametrize("path", _prototxt_params())
def test_zoo_prototxt_parses(path):
    text = path.read_text(encoding="utf-8")
    text = _PLACEHOLDER.sub(lambda m: f"{m.group(1)}{21 * int(m.group(2))}", text)
    cls = message_class_for(text)
    message = text_format.Parse(text, cls())  # strict: unknown fields are errors
    if cls is caffe_pb2.NetParameter:
        assert len(message.layer) + len(message.layers) > 0
    elif cls is caffe_pb2.SolverParameter:
        assert message.HasField("base_lr") or message.HasField("net_param")
    else:
        assert len(message.item) > 0


def test_zoo_has_fork_and_legacy_text_files():
    if ZOO is None:
        pytest.skip("Caffe zoo not found (set DNNTOOL_ZOO)")
    lenet = text_format.Parse(
        (ZOO / "bvlc/examples/mnist/lenet_consolidated_solver.prototxt").read_text(),
        caffe_pb2.SolverParameter(),
    )
    assert lenet.net_param.layers  # inline V1 net
    mixed = text_format.Parse(
        (ZOO / "netscope/dgschwend/presets/vgg-16.prototxt").read_text(),
        caffe_pb2.NetParameter(),
    )
    assert mixed.layer and mixed.layers  # V2 `layer` and V1 `layers` in one file
    assert mixed.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION
    shufflenet = text_format.Parse(
        (ZOO / "shufflenet/shufflenet_1x_g3_deploy.prototxt").read_text(),
        caffe_pb2.NetParameter(),
    )
    groups = {
        lp.shuffle_channel_param.group for lp in shufflenet.layer if lp.type == "ShuffleChannel"
    }
    assert groups == {3}


# ---------------------------------------------------------------------------
# Binary files in the zoo
# ---------------------------------------------------------------------------

# Fork fields in binary files that our schema cannot read, keyed by file:
# {(message, field number)}. They are kept as unknown fields, never misread.
# fmt: off
EXPECTED_UNKNOWN = {
    # Trained with NVCaffe 0.17: per-layer forward/backward type and math
    # (NVCaffe LayerParameter 145..148, varints where BVLC has messages) and
    # NVCaffe's renumbered SSD transform fields (208 resize, 210 emit, 213 distort).
    "libfacedetection/models/caffe/yufacedetectnet-open-v1.caffemodel": {
        ("caffe.LayerParameter", 145), ("caffe.LayerParameter", 146),
        ("caffe.LayerParameter", 147), ("caffe.LayerParameter", 148),
        ("caffe.TransformationParameter", 208), ("caffe.TransformationParameter", 210),
        ("caffe.TransformationParameter", 213),
    },
    "libfacedetection/models/caffe/yufacedetectnet-open-v2.caffemodel": {
        ("caffe.LayerParameter", 145), ("caffe.LayerParameter", 146),
        ("caffe.LayerParameter", 147), ("caffe.LayerParameter", 148),
        ("caffe.TransformationParameter", 208), ("caffe.TransformationParameter", 210),
        ("caffe.TransformationParameter", 213),
    },
    # MTCNN's training fork: a float SoftmaxParameter field 3 and an integer
    # LossParameter field 4 (R-FCN's field 4 is a float, so it stays unknown).
    "mtcnn/MTCNNv2/model/det1.caffemodel": {("caffe.SoftmaxParameter", 3)},
    "mtcnn/MTCNNv2/model/det2.caffemodel": {("caffe.LossParameter", 4)},
    "mtcnn/MTCNNv2/model/det3.caffemodel": {("caffe.LossParameter", 4)},
    # cnn_3dobj's fork stores its TripletLoss parameters at BVLC's embed_param (137).
    "opencv_contrib/modules/cnn_3dobj/testdata/cv/3d_triplet_iter_30000.caffemodel": {
        ("caffe.EmbedParameter", 1),
    },
}
# fmt: on


def unknown_field_set(message) -> set[tuple[str, int]]:
    found = {
        (message.DESCRIPTOR.full_name, field.field_number)
        for field in unknown_fields.UnknownFieldSet(message)
    }
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        for item in value if descriptor.is_repeated else (value,):
            found |= unknown_field_set(item)
    return found


def blob_shape(blob) -> list[int]:
    if blob.HasField("shape"):
        return list(blob.shape.dim)
    return [blob.num, blob.channels, blob.height, blob.width]


def blob_count(blob) -> int:
    count = math.prod(blob_shape(blob))
    stored = len(blob.data) or len(blob.double_data)
    assert count == stored, f"blob shape {blob_shape(blob)} does not match {stored} values"
    return count


def _reference_models() -> dict[str, dict]:
    summary = json.loads((ZOO / "reference" / "caffemodel_blob_summary.json").read_text())
    return {model["file"]: model for model in summary["models"]}


def _model_files() -> list[str]:
    """All *.caffemodel files plus extensionless weight files from the manifest."""
    files = {_rel(p) for p in ZOO.rglob("*.caffemodel")}
    manifest = (ZOO / "MANIFEST_files.csv").read_text(encoding="utf-8").splitlines()
    for line in manifest[1:]:
        local = line.split(",", 1)[0]
        if local and not Path(local).suffix and (ZOO / local).is_file():
            files.add(local)
    return sorted(files)


def _model_params():
    if ZOO is None:
        return [pytest.param(None, marks=_SKIP_NO_ZOO, id="no-zoo")]
    return [pytest.param(rel, id=rel) for rel in _model_files()]


def test_reference_covers_every_model():
    if ZOO is None:
        pytest.skip("Caffe zoo not found (set DNNTOOL_ZOO)")
    assert set(_model_files()) == set(_reference_models())


@pytest.mark.parametrize("rel", _model_params())
def test_zoo_caffemodel(rel):
    data = (ZOO / rel).read_bytes()
    net = caffe_pb2.NetParameter()
    net.ParseFromString(data)
    reference = _reference_models()[rel]

    is_v1 = reference["format"].startswith("V1")
    layers = net.layers if is_v1 else net.layer
    assert len(net.layers if not is_v1 else net.layer) == 0
    assert net.name == reference["net_name"]
    assert len(layers) == reference["n_layers"]

    with_blobs = [layer for layer in layers if layer.blobs]
    assert len(with_blobs) == reference["n_layers_with_blobs"]
    assert [
        {"layer": layer.name, "shapes": [blob_shape(b) for b in layer.blobs]}
        for layer in with_blobs
    ] == [{"layer": e["layer"], "shapes": e["shapes"]} for e in reference["blob_shapes"]]
    total = sum(blob_count(blob) for layer in with_blobs for blob in layer.blobs)
    assert total == reference["total_blob_elements"]

    unknown = unknown_field_set(net)
    assert unknown == EXPECTED_UNKNOWN.get(rel, set())
    if not unknown:
        # Wire compatibility: re-serialising gives back Caffe's exact bytes.
        assert net.SerializeToString(deterministic=True) == data


def _binary_params(pattern):
    if ZOO is None:
        return [pytest.param(None, marks=_SKIP_NO_ZOO, id="no-zoo")]
    return [pytest.param(p, id=_rel(p)) for p in sorted(ZOO.rglob(pattern))]


@pytest.mark.parametrize("path", _binary_params("*.binaryproto"))
def test_zoo_binaryproto(path):
    data = path.read_bytes()
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString(data)
    assert blob_count(blob) > 0
    assert unknown_field_set(blob) == set()
    assert blob.SerializeToString(deterministic=True) == data


@pytest.mark.parametrize("path", _binary_params("*.solverstate"))
def test_zoo_solverstate(path):
    data = path.read_bytes()
    state = caffe_pb2.SolverState()
    state.ParseFromString(data)
    assert state.iter > 0
    assert state.learned_net.endswith(".caffemodel")
    assert unknown_field_set(state) == set()
    assert state.SerializeToString(deterministic=True) == data
    # SGD keeps one history blob per learnable blob of the matching model.
    model = path.with_suffix(".caffemodel")
    if model.is_file():
        net = caffe_pb2.NetParameter()
        net.ParseFromString(model.read_bytes())
        params = [blob_shape(b) for layer in (net.layer or net.layers) for b in layer.blobs]
        assert [blob_shape(h) for h in state.history] == params
        assert all(blob_count(h) > 0 for h in state.history)
