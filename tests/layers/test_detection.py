"""Detection and fork layers: SSD, R-CNN/R-FCN, Python, Correlation, segmentation, SqueezeDet, Netscope.

Expected values are worked out by hand from each fork's Reshape/setup (arithmetic in the comments).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

import dnntool.layers.netscope_compat  # noqa: F401
from dnntool.errors import NeedsInputShape, NetError, ShapeError
from dnntool.io.prototxt import parse_net_text
from dnntool.layers.detection import parse_param_str
from dnntool.net import Net
from tests.layers.util import build
from tests.zoo import zoo_dir


def build_net_with(layer_text: str, bottoms: Sequence[Sequence[int]],
                   input_shapes: Mapping[str, Sequence[int]], phase: str = "test") -> Net:
    """Like ``tests.layers.util.build_net`` (Input tops b0, b1...) but with ``--input-shape`` values."""
    names = [f"b{i}" for i in range(len(bottoms))]
    text = ""
    if names:
        shapes = "".join("  shape { " + " ".join(f"dim: {d}" for d in s) + " }\n" for s in bottoms)
        tops = "".join(f'  top: "{n}"\n' for n in names)
        text = f'layer {{\n  name: "input"\n  type: "Input"\n{tops}  input_param {{\n{shapes}  }}\n}}\n'
    src = parse_net_text(text + layer_text, "case.prototxt")
    return Net.from_param(src.param, phase, input_shapes=input_shapes, layer_locs=src.layer_locs,
                          path="case.prototxt")


def layer(type_: str, body: str = "", bottoms: int = 1, tops: Sequence[str] = ("out",), name: str = "L") -> str:
    b = "".join(f'  bottom: "b{i}"\n' for i in range(bottoms))
    t = "".join(f'  top: "{x}"\n' for x in tops)
    return f'layer {{\n  name: "{name}"\n  type: "{type_}"\n{b}{t}{body}\n}}\n'


# (id, layer text, bottom shapes, expected top shapes, expected param count, expected macs, expected flops)
# None for macs/flops means "not checked". Every layer here has no parameter blobs.
CASES = [
    # ---- SSD PriorBox: P = |{1, ratios, flips}| * |min_size| + |max_size|; top (1, 2, H*W*P*4)
    # MobileNet-SSD conv11: min 60, ar 2 flip -> {1, 2, 1/2} = 3; 19*19*3*4 = 4332
    ("priorbox-mobilenet-conv11",
     layer("PriorBox", "prior_box_param { min_size: 60 aspect_ratio: 2 flip: true clip: false"
           " variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5 }", 2),
     [(1, 512, 19, 19), (1, 3, 300, 300)], [(1, 2, 4332)], 0, 0, 0),
    # conv13: min 105 max 150, ar 2,3 flip -> 5 ratios + 1 max = 6; 10*10*6*4 = 2400
    ("priorbox-mobilenet-conv13",
     layer("PriorBox", "prior_box_param { min_size: 105 max_size: 150 aspect_ratio: 2 aspect_ratio: 3 flip: true }", 2),
     [(1, 1024, 10, 10), (1, 3, 300, 300)], [(1, 2, 2400)], 0, 0, 0),
    # two min sizes: 3 ratios * 2 + 2 max = 8; 5*5*8*4 = 800
    ("priorbox-two-min-sizes",
     layer("PriorBox", "prior_box_param { min_size: 30 min_size: 60 max_size: 60 max_size: 90 aspect_ratio: 2 }", 2),
     [(1, 64, 5, 5), (1, 3, 100, 100)], [(1, 2, 800)], 0, 0, 0),
    # duplicates and 1 skipped, no flip: {1, 2} = 2; 3*3*2*4 = 72
    ("priorbox-dedup-noflip",
     layer("PriorBox", "prior_box_param { min_size: 10 aspect_ratio: 2 aspect_ratio: 2 aspect_ratio: 1 flip: false }", 2),
     [(1, 8, 3, 3), (1, 3, 30, 30)], [(1, 2, 72)], 0, 0, 0),
    # OpenCV/TextBoxes offsets: (1 + 5 ratios) * max(1, 2*(2-1)) = 12; 38*38*12*4 = 69312
    ("priorbox-opencv-offsets",
     layer("PriorBox", "prior_box_param { min_size: 30 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 5"
           " aspect_ratio: 7 aspect_ratio: 10 flip: false offset_h: 0.5 offset_w: 0.5 offset_h: 1.0 offset_w: 0.5 }", 2),
     [(1, 512, 38, 38), (1, 3, 300, 300)], [(1, 2, 69312)], 0, 0, 0),
    # OpenCV explicit sizes: 2 boxes; 4*4*2*4 = 128
    ("priorbox-opencv-explicit",
     layer("PriorBox", "prior_box_param { width: 10 width: 20 height: 10 height: 40 }", 2),
     [(1, 8, 4, 4), (1, 3, 64, 64)], [(1, 2, 128)], 0, 0, 0),
    # ---- DetectionOutput: P = 7668/4 = 1917; loc 1917*4 = 7668, conf 1917*21 = 40257; (1,1,1,7) at setup
    ("detection-output-mobilenet-ssd",
     layer("DetectionOutput", "detection_output_param { num_classes: 21 share_location: true background_label_id: 0"
           " nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE keep_top_k: 100"
           " confidence_threshold: 0.25 }", 3),
     [(1, 7668), (1, 40257), (1, 2, 7668)], [(1, 1, 1, 7)], 0, 0, 0),
    # share_location false: P = 8/4 = 2; loc 2*3*4 = 24, conf 2*3 = 6
    ("detection-output-per-class-loc",
     layer("DetectionOutput", "detection_output_param { num_classes: 3 share_location: false }", 3),
     [(2, 24), (2, 6), (1, 2, 8)], [(1, 1, 1, 7)], 0, 0, 0),
    # ---- MultiBoxLoss: P = 16/4 = 4; loc 4*4 = 16, conf 4*3 = 12; flops 5*2*12 + 4*2*16 = 120 + 128 = 248
    ("multibox-loss",
     layer("MultiBoxLoss", "multibox_loss_param { num_classes: 3 }", 4),
     [(2, 16), (2, 12), (1, 2, 16), (1, 1, 3, 8)], [()], 0, 0, 248),
    # ---- DetectionEvaluate: (1, 1, (21 - 1) + 1 detection row, 5)
    ("detection-evaluate",
     layer("DetectionEvaluate", "detection_evaluate_param { num_classes: 21 background_label_id: 0 overlap_threshold: 0.5 }", 2),
     [(1, 1, 1, 7), (1, 1, 5, 8)], [(1, 1, 21, 5)], 0, 0, 0),
    # ---- AnnotatedData: resize 300x300 (WARP), batch 8, 3 channels; label (1, 1, 1, 8)
    ("annotated-data-resize",
     layer("AnnotatedData", "transform_param { resize_param { resize_mode: WARP height: 300 width: 300 } }"
           " data_param { source: 'none_lmdb' batch_size: 8 backend: LMDB }", 0, ("data", "label")),
     [], [(8, 3, 300, 300), (1, 1, 1, 8)], 0, 0, 0),
    # crop 224 without resize; force_gray -> 1 channel
    ("annotated-data-crop-gray",
     layer("AnnotatedData", "transform_param { crop_size: 224 force_gray: true } data_param { batch_size: 2 }", 0, ("data",)),
     [], [(2, 1, 224, 224)], 0, 0, 0),
    # ---- ROIPooling: (R, C, ph, pw) = (300, 512, 7, 7); flops = one per output = 300*512*49 = 7526400
    ("roi-pooling",
     layer("ROIPooling", "roi_pooling_param { pooled_h: 7 pooled_w: 7 spatial_scale: 0.0625 }", 2),
     [(1, 512, 38, 63), (300, 5)], [(300, 512, 7, 7)], 0, 0, 7526400),
    # py-R-FCN 4-D rois (R, 5, 1, 1): C*H*W = 5
    ("roi-pooling-4d-rois",
     layer("ROIPooling", "roi_pooling_param { pooled_h: 6 pooled_w: 6 spatial_scale: 0.0625 }", 2),
     [(1, 256, 14, 14), (128, 5, 1, 1)], [(128, 256, 6, 6)], 0, 0, 128 * 256 * 36),
    # ---- PSROIPooling: C = 21*7*7 = 1029 -> (300, 21, 7, 7); flops 300*1029 = 308700
    ("psroi-pooling",
     layer("PSROIPooling", "psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 }", 2),
     [(1, 1029, 38, 63), (300, 5)], [(300, 21, 7, 7)], 0, 0, 308700),
    # ---- SmoothL1Loss: count 1*36*38*63 = 86184; 4 flops each without weights, 6 with
    ("smooth-l1-2",
     layer("SmoothL1Loss", "", 2), [(1, 36, 38, 63)] * 2, [()], 0, 0, 4 * 86184),
    ("smooth-l1-4-sigma",
     layer("SmoothL1Loss", "smooth_l1_loss_param { sigma: 3 }", 4), [(1, 36, 38, 63)] * 4, [()], 0, 0, 6 * 86184),
    # rbg's fork compares channels/height/width only: (128, 84) vs (1, 84, 1, 1)
    ("smooth-l1-legacy-dims",
     layer("SmoothL1Loss", "", 4), [(128, 84), (1, 84, 1, 1), (1, 84, 1, 1), (1, 84, 1, 1)], [()], 0, 0, 6 * 128 * 84),
    # ---- R-FCN OHEM
    # SmoothL1LossOHEM: per-RoI loss = predictions with axis 1 -> 1; flops 5 * 128*8 = 5120
    ("smooth-l1-ohem",
     layer("SmoothL1LossOHEM", "", 3, ("loss", "per_roi")), [(128, 8, 1, 1)] * 3, [(), (128, 1, 1, 1)], 0, 0, 5120),
    # SoftmaxWithLossOHEM: outer*inner = 128 = count(labels); tops loss, prob, per-RoI loss
    ("softmax-ohem",
     layer("SoftmaxWithLossOHEM", "", 2, ("loss", "prob", "per_roi")),
     [(128, 21, 1, 1), (128, 1, 1, 1)], [(), (128, 21, 1, 1), (128, 1, 1, 1)], 0, 0, 5 * 128 * 21),
    # BoxAnnotatorOHEM: (R, 1, H, W) and (R, bbox channels, H, W), H = W = 1
    ("box-annotator-ohem",
     layer("BoxAnnotatorOHEM", "box_annotator_ohem_param { roi_per_img: 128 ignore_label: -1 }", 4,
           ("labels_ohem", "weights_ohem")),
     [(128, 5, 1, 1), (128, 1, 1, 1), (128, 1, 1, 1), (128, 8, 1, 1)], [(128, 1, 1, 1), (128, 8, 1, 1)], 0, 0, 0),
    # ---- Proposal (OpenCV): A = 3 ratios * 3 scales = 9; scores 2A = 18, deltas 4A = 36; rows = post_nms_topn
    ("proposal-defaults",
     layer("Proposal", "proposal_param { ratio: 0.5 ratio: 1 ratio: 2 scale: 8 scale: 16 scale: 32 }", 3,
           ("rois", "scores")),
     [(1, 18, 38, 63), (1, 36, 38, 63), (1, 3)], [(300, 5), (300, 1)], 0, 0, 0),
    # 2 ratios * 4 scales = 8 anchors -> 16 and 32 channels; post_nms_topn 100
    ("proposal-custom",
     layer("Proposal", "proposal_param { ratio: 1 ratio: 2 scale: 4 scale: 8 scale: 16 scale: 32 post_nms_topn: 100 }", 3,
           ("rois",)),
     [(1, 16, 10, 10), (1, 32, 10, 10), (1, 3)], [(100, 5)], 0, 0, 0),
    # ---- Python: py-faster-rcnn setup() shapes
    ("python-proposal",
     layer("Python", "python_param { module: 'rpn.proposal_layer' layer: 'ProposalLayer' param_str: \"'feat_stride': 16\" }",
           3, ("rois", "scores")),
     [(1, 18, 38, 63), (1, 36, 38, 63), (1, 3)], [(1, 5), (1, 1, 1, 1)], 0, 0, 0),
    # AnchorTargetLayer: A = 3 scales * 3 ratios = 9 -> labels (1, 1, 9*38, 63) = (1, 1, 342, 63), targets (1, 36, 38, 63)
    ("python-anchor-target",
     layer("Python", "python_param { module: 'rpn.anchor_target_layer' layer: 'AnchorTargetLayer'"
           " param_str: \"'feat_stride': 16\" }", 4, ("labels", "targets", "inside", "outside")),
     [(1, 18, 38, 63), (1, 4), (1, 3), (1, 3, 600, 1000)],
     [(1, 1, 342, 63), (1, 36, 38, 63), (1, 36, 38, 63), (1, 36, 38, 63)], 0, 0, 0),
    # scales (4, 8, 16, 32) in YAML with a python/tuple tag: A = 4 * 3 = 12 -> (1, 1, 12*10, 20), (1, 48, 10, 20)
    ("python-anchor-target-scales",
     layer("Python", "python_param { module: 'rpn.anchor_target_layer' layer: 'AnchorTargetLayer'"
           " param_str: \"'feat_stride': 16 \\n'scales': !!python/tuple [4, 8, 16, 32]\" }", 4,
           ("labels", "targets", "inside", "outside")),
     [(1, 24, 10, 20), (1, 4), (1, 3), (1, 3, 160, 320)],
     [(1, 1, 120, 20), (1, 48, 10, 20), (1, 48, 10, 20), (1, 48, 10, 20)], 0, 0, 0),
    # ProposalTargetLayer: 4K = 4*21 = 84 (py-R-FCN's 4-D form)
    ("python-proposal-target",
     layer("Python", "python_param { module: 'rpn.proposal_target_layer' layer: 'ProposalTargetLayer'"
           " param_str: \"'num_classes': 21\" }", 2, ("rois", "labels", "targets", "inside", "outside")),
     [(1, 5), (1, 4)], [(1, 5, 1, 1), (1, 1, 1, 1), (1, 84, 1, 1), (1, 84, 1, 1), (1, 84, 1, 1)], 0, 0, 0),
    # colorization NNEncLayer: Q = 313 bins
    ("python-colorization-nnenc",
     layer("Python", "python_param { module: 'caffe_traininglayers' layer: 'NNEncLayer' }", 1),
     [(40, 2, 44, 44)], [(40, 313, 44, 44)], 0, 0, 0),
    ("python-colorization-rebalance",
     layer("Python", "python_param { module: 'caffe_traininglayers' layer: 'ClassRebalanceMultLayer' }", 2),
     [(40, 313, 44, 44), (40, 1, 44, 44)], [(40, 313, 44, 44)], 0, 0, 0),
    # pycaffe example pyloss.EuclideanLossLayer: top (1,)
    ("python-pyloss",
     layer("Python", "python_param { module: 'pyloss' layer: 'EuclideanLossLayer' } loss_weight: 1", 2, ("loss",)),
     [(10, 10), (10, 10)], [(1,)], 0, 0, 0),
    # ---- FlowNet Correlation
    # OpenCV test: padded 2+2 = 4, border 1+0 = 1 -> ceil((4-2)/1) = 2; grid 2*(1/1)+1 = 3 -> 9 channels
    # MACs = 9*2*2 outputs * (1*1*3) taps = 108; flops = 2*108 + 36 = 252
    ("correlation-opencv",
     layer("Correlation", "correlation_param { pad: 1 kernel_size: 1 max_displacement: 1 stride_1: 1 stride_2: 1 }", 2),
     [(1, 3, 2, 2)] * 2, [(1, 9, 2, 2)], 0, 108, 252),
    # FlowNetC: d 20, s2 2 -> grid 2*10+1 = 21 -> 441 channels; 48+40-40 = 48, 64+40-40 = 64
    # MACs = 441*48*64*256 = 346816512
    ("correlation-flownetc",
     layer("Correlation", "correlation_param { pad: 20 kernel_size: 1 max_displacement: 20 stride_1: 1 stride_2: 2 }", 2),
     [(1, 256, 48, 64)] * 2, [(1, 441, 48, 64)], 0, 346816512, None),
    # stride_1 2, k 3: border 4 + 1 = 5, ceil((20 + 0 - 10) / 2) = 5; grid 2*(4/1)+1 = 9 -> 81
    ("correlation-stride",
     layer("Correlation", "correlation_param { kernel_size: 3 max_displacement: 4 stride_1: 2 }", 2),
     [(2, 8, 20, 20)] * 2, [(2, 81, 5, 5)], 0, 2 * 81 * 25 * 9 * 8, None),
    # ---- segmentation / SqueezeDet / colorization
    ("seg-accuracy",
     layer("SegAccuracy", "seg_accuracy_param { ignore_label: 255 }", 2),
     [(2, 21, 65, 65), (2, 1, 65, 65)], [(1, 1, 1, 3)], 0, 0, 2 * 21 * 65 * 65),
    ("image-seg-data-crop",
     layer("ImageSegData", "transform_param { crop_size: 513 } image_data_param { source: 'list.txt' batch_size: 2 }",
           0, ("data", "label", "data_dim")),
     [], [(2, 3, 513, 513), (2, 1, 513, 513), (2, 1, 1, 2)], 0, 0, 0),
    ("bbox-data-new-size",
     layer("BboxData", "bbox_data_param { source: 'src.txt' batch_size: 2 new_height: 416 new_width: 416 }",
           0, ("data", "bbox")),
     [], [(2, 3, 416, 416), (6, 1, 1, 1)], 0, 0, 0),
    # SqueezeDetLoss: flops 5 * (2*4761*20 + 2*23*23*9 + 2*23*23*36) = 5 * (190440 + 9522 + 38088) = 1190250
    ("squeezedet-loss",
     layer("SqueezeDetLoss", "squeezedet_param { classes: 20 anchors_per_grid: 2 anchor_shapes: 10 anchor_shapes: 20"
           " anchor_shapes: 30 anchor_shapes: 40 pos_conf: 75 neg_conf: 100 lambda_bbox: 5 }", 4, ("loss",)),
     [(2, 4761, 20), (2, 23, 23, 9), (2, 23, 23, 36), (6, 1, 1, 1)], [()], 0, 0, 1190250),
    ("softmax-cross-entropy",
     layer("SoftmaxCrossEntropyLoss", "", 2, ("loss",)),
     [(2, 313, 4, 4)] * 2, [()], 0, 0, 5 * 2 * 313 * 16),
    # ---- Netscope pseudo types
    ("netscope-data",
     layer("data", "input_param { shape { dim: 10 dim: 3 dim: 224 dim: 224 } }", 0, ("data",)),
     [], [(10, 3, 224, 224)], 0, 0, 0),
    ("netscope-implicit", layer("implicit", "", 2, ()), [(1, 4), (1, 5)], [], 0, 0, 0),
]


@pytest.mark.parametrize(("text", "bottoms", "tops", "params", "macs", "flops"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_shapes_params_cost(text, bottoms, tops, params, macs, flops):
    lay = build(text, bottoms)
    assert lay.top_shapes == tops
    assert sum(p.count for p in lay.params) == params
    if macs is not None:
        assert lay.cost.macs == macs
    if flops is not None:
        assert lay.cost.flops == flops


# (id, layer text, bottom shapes, exception type, text the one-line message must contain)
ERRORS = [
    ("priorbox-no-min", layer("PriorBox", "prior_box_param { aspect_ratio: 2 }", 2),
     [(1, 8, 4, 4), (1, 3, 32, 32)], NetError, "min_size is required"),
    ("priorbox-max-le-min", layer("PriorBox", "prior_box_param { min_size: 60 max_size: 50 }", 2),
     [(1, 8, 4, 4), (1, 3, 32, 32)], NetError, "max_size 50 must be greater than min_size 60"),
    ("priorbox-variance-2", layer("PriorBox", "prior_box_param { min_size: 6 variance: 0.1 variance: 0.2 }", 2),
     [(1, 8, 4, 4), (1, 3, 32, 32)], NetError, "1 or 4 variance values, got 2"),
    ("priorbox-img-size-both", layer("PriorBox", "prior_box_param { min_size: 6 img_size: 300 img_h: 300 img_w: 300 }", 2),
     [(1, 8, 4, 4), (1, 3, 32, 32)], NetError, "either img_size or img_h/img_w"),
    ("priorbox-step-h-only", layer("PriorBox", "prior_box_param { min_size: 6 step_h: 8 }", 2),
     [(1, 8, 4, 4), (1, 3, 32, 32)], NetError, "step_h and step_w must both be positive"),
    ("priorbox-one-bottom", layer("PriorBox", "prior_box_param { min_size: 6 }", 1),
     [(1, 8, 4, 4)], NetError, "takes 2 bottom blob(s), got 1"),
    ("detout-no-classes", layer("DetectionOutput", "detection_output_param { share_location: true }", 3),
     [(1, 16), (1, 8), (1, 2, 16)], NetError, "num_classes is required"),
    ("detout-conf-mismatch", layer("DetectionOutput", "detection_output_param { num_classes: 21 }", 3),
     [(1, 7668), (1, 40000), (1, 2, 7668)], ShapeError, "1917 priors x 21 classes = 40257"),
    ("detout-loc-mismatch", layer("DetectionOutput", "detection_output_param { num_classes: 2 }", 3),
     [(1, 20), (1, 8), (1, 2, 16)], ShapeError, "4 priors x 1 location classes x 4 = 16"),
    ("multibox-batch", layer("MultiBoxLoss", "multibox_loss_param { num_classes: 3 }", 4),
     [(2, 16), (3, 12), (1, 2, 16), (1, 1, 3, 8)], ShapeError, "differ in batch size"),
    ("deteval-width", layer("DetectionEvaluate", "detection_evaluate_param { num_classes: 21 }", 2),
     [(1, 1, 1, 6), (1, 1, 5, 8)], ShapeError, "detections must be (1, 1, rows, 7), got 1x1x1x6"),
    ("roi-not-5", layer("ROIPooling", "roi_pooling_param { pooled_h: 7 pooled_w: 7 }", 2),
     [(1, 512, 38, 63), (300, 4)], ShapeError, "rois 300x4 must hold 5 values"),
    ("roi-pooled-zero", layer("ROIPooling", "roi_pooling_param { pooled_w: 7 }", 2),
     [(1, 512, 38, 63), (300, 5)], NetError, "pooled_h and pooled_w must be > 0, got 0x7"),
    ("psroi-channels", layer("PSROIPooling", "psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 }", 2),
     [(1, 1000, 38, 63), (300, 5)], ShapeError, "1000 channels but output_dim 21 x group_size 7^2 = 1029"),
    ("psroi-missing", layer("PSROIPooling", "psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 }", 2),
     [(1, 1029, 38, 63), (300, 5)], NetError, "group_size is required"),
    ("smoothl1-mismatch", layer("SmoothL1Loss", "", 2),
     [(1, 36, 38, 63), (1, 36, 38, 62)], ShapeError, "bottom 1 1x36x38x62 must match"),
    ("softmax-ohem-labels", layer("SoftmaxWithLossOHEM", "", 2, ("loss",)),
     [(128, 21, 1, 1), (64,)], ShapeError, "label 64 has 64 values but scores 128x21x1x1 need 128"),
    ("box-annotator-labels", layer("BoxAnnotatorOHEM", "box_annotator_ohem_param { roi_per_img: 128 }", 4, ("a", "b")),
     [(128, 5, 1, 1), (128, 1, 1, 1), (64, 1, 1, 1), (128, 8, 1, 1)], ShapeError, "labels 64x1x1x1 must be (128, 1, 1, 1)"),
    ("proposal-channels", layer("Proposal", "proposal_param { ratio: 1 scale: 8 }", 3, ("rois",)),
     [(1, 18, 38, 63), (1, 36, 38, 63), (1, 3)], ShapeError, "1 anchors need 2x1 score and 4x1 delta channels"),
    ("proposal-batch", layer("Proposal", "", 3, ("rois",)),
     [(2, 18, 38, 63), (2, 36, 38, 63), (1, 3)], ShapeError, "only a batch of 1 image"),
    ("python-no-module", layer("Python", "python_param { layer: 'X' }", 1),
     [(1, 2)], NetError, "python_param.module and python_param.layer are required"),
    ("python-target-no-classes",
     layer("Python", "python_param { module: 'rpn.proposal_target_layer' layer: 'ProposalTargetLayer' }", 2,
           ("rois", "labels", "targets", "inside", "outside")),
     [(1, 5), (1, 4)], NetError, "param_str must set 'num_classes' to an integer"),
    ("python-bad-param-str",
     layer("Python", "python_param { module: 'rpn.proposal_target_layer' layer: 'ProposalTargetLayer'"
           " param_str: 'num_classes 21' }", 2, ("rois", "labels")),
     [(1, 5), (1, 4)], NetError, "cannot read python_param.param_str"),
    ("python-too-many-tops",
     layer("Python", "python_param { module: 'rpn.proposal_layer' layer: 'ProposalLayer' }", 3, ("a", "b", "c")),
     [(1, 18, 4, 4), (1, 36, 4, 4), (1, 3)], NetError, "produces at most 2 top(s) but 3 are named"),
    ("python-bgr2lab-channels",
     layer("Python", "python_param { module: 'caffe_traininglayers' layer: 'BGR2LabLayer' }", 1),
     [(1, 4, 8, 8)], ShapeError, "expects a 3-channel BGR image"),
    ("correlation-even-kernel", layer("Correlation", "correlation_param { kernel_size: 2 max_displacement: 4 }", 2),
     [(1, 8, 20, 20)] * 2, NetError, "kernel_size must be odd, got 2"),
    ("correlation-no-displacement", layer("Correlation", "correlation_param { kernel_size: 1 }", 2),
     [(1, 8, 20, 20)] * 2, NetError, "max_displacement is required"),
    ("correlation-too-small", layer("Correlation", "correlation_param { kernel_size: 1 max_displacement: 20 }", 2),
     [(1, 8, 10, 10)] * 2, ShapeError, "do not fit the padded 10x10 input"),
    ("correlation-mismatch", layer("Correlation", "correlation_param { kernel_size: 1 max_displacement: 1 }", 2),
     [(1, 8, 10, 10), (1, 4, 10, 10)], ShapeError, "equal channels, height and width"),
    ("seg-accuracy-label", layer("SegAccuracy", "", 2),
     [(2, 21, 65, 65), (2, 2, 65, 65)], ShapeError, "must have one channel"),
    ("squeezedet-anchor-shapes",
     layer("SqueezeDetLoss", "squeezedet_param { classes: 20 anchors_per_grid: 2 anchor_shapes: 10"
           " pos_conf: 75 neg_conf: 100 lambda_bbox: 5 }", 4, ("loss",)),
     [(1, 2)] * 4, NetError, "1 anchor_shapes values for 2 anchors"),
    ("softmax-ce-count", layer("SoftmaxCrossEntropyLoss", "", 2, ("loss",)),
     [(2, 313, 4, 4), (2, 313, 4, 3)], ShapeError, "differ in count"),
]


@pytest.mark.parametrize(("text", "bottoms", "exc", "needle"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors(text, bottoms, exc, needle):
    with pytest.raises(exc) as info:
        build(text, bottoms)
    msg = str(info.value)
    assert needle in msg
    assert "layer 'L' (" in msg
    assert "\n" not in msg


# ---- data layers that need --input-shape

def test_annotated_data_needs_input_shape_then_takes_it():
    text = layer("AnnotatedData", "transform_param { resize_param { resize_mode: FIT_SMALL_SIZE height: 300 width: 300 } }"
                 " data_param { source: 'x' batch_size: 4 }", 0, ("data", "label"))
    with pytest.raises(NeedsInputShape, match=r"--input-shape data=4,3,H,W"):
        build(text, [])
    net = build_net_with(text, [], {"data": (4, 3, 320, 480)})
    assert net.layers[-1].top_shapes == [(4, 3, 320, 480), (1, 1, 1, 8)]
    assert net.input_names() == ["data", "label"]


def test_unknown_python_data_layer_names_every_top():
    text = layer("Python", "python_param { module: 'voc_layers' layer: 'VOCSegDataLayer'"
                 " param_str: \"{'voc_dir': '../data', 'seed': 1337, 'mean': (104.0, 116.6, 122.6)}\" }",
                 0, ("data", "label"), name="data")
    with pytest.raises(NeedsInputShape) as info:
        build(text, [])
    msg = str(info.value)
    assert "layer 'data' (Python)" in msg and "voc_layers.VOCSegDataLayer" in msg
    assert "--input-shape data=N,C,H,W" in msg and "--input-shape label=N,C,H,W" in msg
    net = build_net_with(text, [], {"data": (1, 3, 500, 500), "label": (1, 1, 500, 500)})
    lay = net.layers[-1]
    assert lay.top_shapes == [(1, 3, 500, 500), (1, 1, 500, 500)]
    assert lay.params == [] and lay.impl.is_data and net.input_names() == ["data", "label"]


def test_unknown_python_layer_with_bottoms():
    text = layer("Python", "python_param { module: 'mylayers' layer: 'Mystery' }", 1, ("y", "z"))
    with pytest.raises(NeedsInputShape) as info:
        build(text, [(1, 3, 8, 8)])
    msg = str(info.value)
    assert "mylayers.Mystery" in msg and "--input-shape y=" in msg and "--input-shape z=" in msg
    net = build_net_with(text, [(1, 3, 8, 8)], {"y": (1, 3, 8, 8), "z": (1,)})
    assert net.layers[-1].top_shapes == [(1, 3, 8, 8), (1,)]
    assert not net.layers[-1].impl.is_data


def test_roi_data_layer_needs_only_the_data_shape():
    text = layer("Python", "python_param { module: 'roi_data_layer.layer' layer: 'RoIDataLayer'"
                 " param_str: \"'num_classes': 21\" }", 0, ("data", "im_info", "gt_boxes"), name="input-data")
    with pytest.raises(NeedsInputShape) as info:
        build(text, [])
    msg = str(info.value)
    assert "--input-shape data=1,3,600,1000" in msg and "im_info" not in msg.split("give")[1]
    net = build_net_with(text, [], {"data": (1, 3, 600, 1000)})
    assert net.layers[-1].top_shapes == [(1, 3, 600, 1000), (1, 3), (1, 4)]
    # Fast R-CNN form (cfg.TRAIN.HAS_RPN false): rois, labels, bbox targets / weights (1, 4K)
    fast = layer("Python", "python_param { module: 'roi_data_layer.layer' layer: 'RoIDataLayer'"
                 " param_str: \"'num_classes': 21\" }", 0, ("data", "rois", "labels", "t", "i", "o"))
    net = build_net_with(fast, [], {"data": (2, 3, 600, 1000)})
    assert net.layers[-1].top_shapes == [(2, 3, 600, 1000), (1, 5), (1,), (1, 84), (1, 84), (1, 84)]


def test_image_seg_and_bbox_data_need_a_size():
    seg = layer("ImageSegData", "image_data_param { source: 'x' batch_size: 2 }", 0, ("data", "label"))
    with pytest.raises(NeedsInputShape, match=r"--input-shape data=2,3,H,W --input-shape label=2,1,H,W"):
        build(seg, [])
    bbox = layer("BboxData", "bbox_data_param { source: 'x' batch_size: 2 is_color: false }", 0, ("data", "bbox"))
    with pytest.raises(NeedsInputShape, match=r"--input-shape data=2,1,H,W"):
        build(bbox, [])


def test_python_loss_weight_and_summary():
    lay = build(CASES[[c[0] for c in CASES].index("python-pyloss")][1], [(10, 10), (10, 10)])
    assert lay.loss_weights == [1.0]  # from the prototxt: Python layers are not losses by default
    assert lay.impl.summary() == "pyloss.EuclideanLossLayer"
    proposal = build(layer("Python", "python_param { module: 'rpn.proposal_layer' layer: 'ProposalLayer' }", 3, ("r",)),
                     [(1, 18, 4, 4), (1, 36, 4, 4), (1, 3)])
    assert proposal.loss_weights == [0.0]


def test_losses_weigh_first_top():
    lay = build(layer("SmoothL1LossOHEM", "", 3, ("loss", "per_roi")), [(8, 8, 1, 1)] * 3)
    assert lay.loss_weights == [1.0, 0.0]
    assert build(layer("MultiBoxLoss", "multibox_loss_param { num_classes: 3 }", 4),
                 [(2, 16), (2, 12), (1, 2, 16), (1, 1, 3, 8)]).loss_weights == [1.0]


@pytest.mark.parametrize(("text", "expected"), [
    ("'feat_stride': 16", {"feat_stride": 16}),
    ("'feat_stride': 16 \n'scales': !!python/tuple [4, 8, 16, 32]", {"feat_stride": 16, "scales": [4, 8, 16, 32]}),
    ("{'num_classes': 21, 'mean': (104.0, 116.5), 'tops': ['a', 'b']}",
     {"num_classes": 21, "mean": (104.0, 116.5), "tops": ["a", "b"]}),
    ("num_classes: 2\nflag: true\nname: hello", {"num_classes": 2, "flag": True, "name": "hello"}),
    ("", {}),
])
def test_param_str(text, expected):
    assert parse_param_str(text) == expected


def test_summaries():
    assert build(CASES[0][1], CASES[0][2]).impl.summary() == "3/cell, min 60"
    roi = build(layer("ROIPooling", "roi_pooling_param { pooled_h: 7 pooled_w: 7 spatial_scale: 0.0625 }", 2),
                [(1, 8, 4, 4), (3, 5)])
    assert roi.impl.summary() == "7x7, scale 1/16"
    corr = build(CASES[[c[0] for c in CASES].index("correlation-flownetc")][1], [(1, 256, 48, 64)] * 2)
    assert corr.impl.summary() == "d20 k1 s1/2 p20"


# ---- real networks from the zoo

def _zoo(rel: str):
    z = zoo_dir()
    if z is None or not (z / rel).exists():
        pytest.skip(f"zoo file {rel} not available")
    return z / rel


def test_mobilenet_ssd_has_1917_priors():
    # 19x19x3 + 10x10x6 + 5x5x6 + 3x3x6 + 2x2x6 + 1x1x6 = 1083 + 600 + 150 + 54 + 24 + 6 = 1917
    net = Net.from_prototxt(_zoo("mobilenet_ssd/voc/MobileNetSSD_deploy.prototxt"))
    per_layer = {ly.name: ly.top_shapes[0][2] // 4 for ly in net.layers if ly.type == "PriorBox"}
    assert per_layer == {
        "conv11_mbox_priorbox": 19 * 19 * 3, "conv13_mbox_priorbox": 10 * 10 * 6,
        "conv14_2_mbox_priorbox": 5 * 5 * 6, "conv15_2_mbox_priorbox": 3 * 3 * 6,
        "conv16_2_mbox_priorbox": 2 * 2 * 6, "conv17_2_mbox_priorbox": 1 * 1 * 6,
    }
    assert net.blob("mbox_priorbox").shape == (1, 2, 1917 * 4)
    assert net.blob("detection_out").shape == (1, 1, 1, 7)


def test_mobilenet_ssd_test_net_evaluates():
    net = Net.from_prototxt(_zoo("mobilenet_ssd/voc/MobileNetSSD_test.prototxt"), phase="test")
    assert net.layer("data").top_shapes == [(8, 3, 300, 300), (1, 1, 1, 8)]  # resize_param 300x300, batch 8
    assert net.blob("detection_eval").shape == (1, 1, 20 + 1, 5)


def test_rfcn_ohem_train_net_builds():
    net = Net.from_prototxt(_zoo("soeaver_caffe_model/det/rfcn/models/pascal_voc/resnet18/"
                                 "rfcn_voc_resnet18-priv-merge-ohem.prototxt"),
                            phase="train", input_shapes={"data": (1, 3, 600, 1000)})
    assert net.layer("annotator_detector").top_shapes == [(1, 1, 1, 1), (1, 8, 1, 1)]
    # rpn_cls_score (1, 18, 38, 63): A = 9 -> labels (1, 1, 342, 63)
    assert net.layer("rpn-data").top_shapes[0] == (1, 1, 342, 63)
