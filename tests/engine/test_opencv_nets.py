"""Every layer output of our ONNX translation (ONNX Runtime) against OpenCV's Caffe importer
(cv2.dnn.readNetFromCaffe), within 1e-4 relative: small nets written here with random weights, the
zoo's deploy nets with random weights, and the zoo's real caffemodels. Layers are compared by
name (OpenCV's forward takes layer names); layers we do not translate (DetectionOutput) are left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dnntool.io.caffemodel import Weights, load_weights, save_caffemodel
from dnntool.io.prototxt import parse_net_text, write_prototxt
from dnntool.net import Net
from dnntool.net.weights import layer_arrays
from dnntool.translate.forward import to_onnx
from tests.engine.oracle import assert_close, has_opencv_caffe, random_weights
from tests.zoo import zoo_dir

pytestmark = pytest.mark.skipif(not has_opencv_caffe(), reason="needs opencv-python with cv2.dnn")
ZOO = zoo_dir()
needs_zoo = pytest.mark.skipif(ZOO is None, reason="the zoo (../shared/zoo) is absent")


def compare_with_opencv(net: Net, arrays, tmp: Path, seed: int = 1) -> int:
    """Run every translatable single-top layer both ways; assert each output; return how many."""
    import cv2
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    inputs = {t: rng.standard_normal(s).astype(np.float32)
              for layer in net.layers if layer.impl.is_data for t, s in zip(layer.tops, layer.top_shapes, strict=True)}
    tr = to_onnx(net, layer_arrays(net, Weights(blobs={k: list(v) for k, v in arrays.items()})), outputs="all")
    sess = ort.InferenceSession(tr.model.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = dict(zip(tr.outputs, sess.run(None, {k: inputs[k] for k in tr.inputs}), strict=True))

    param = type(net.param_proto)()
    param.CopyFrom(net.param_proto)
    kept = {layer.name for layer in net.layers}
    layers = [lp for lp in param.layer if lp.name in kept]
    del param.layer[:]
    param.layer.extend(layers)
    write_prototxt(param, tmp / "net.prototxt")
    save_caffemodel(tmp / "net.caffemodel", layers, arrays, name=net.name)
    cvnet = cv2.dnn.readNetFromCaffe(str(tmp / "net.prototxt"), str(tmp / "net.caffemodel"))
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    for name, x in inputs.items():
        cvnet.setInput(x, name)
    compared = [layer for layer in net.layers
                if not layer.impl.is_data and layer.impl.translatable and len(layer.tops) == 1]
    refs = cvnet.forward([layer.name for layer in compared])
    for layer, ref in zip(compared, refs, strict=True):
        assert ours[layer.tops[0]].size == ref.size, f"{layer.name}: shapes {ours[layer.tops[0]].shape} vs {ref.shape}"
        assert_close(ours[layer.tops[0]], ref, 1e-4, f"{layer.name} ({layer.type})")
    return len(compared)


def _text_net(text: str) -> Net:
    src = parse_net_text(text, "case.prototxt")
    return Net.from_param(src.param, "test", layer_locs=src.layer_locs, path="case.prototxt")


# -- small nets written for this test -----------------------------------------------------------

def inp(shape, top="data"):
    return f'layer {{ name: "{top}" type: "Input" top: "{top}" input_param {{ shape {{ ' + \
        " ".join(f"dim: {d}" for d in shape) + " } } }\n"


def lay(name, typ, bottoms, tops=None, params=""):
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [name] if tops is None else ([tops] if isinstance(tops, str) else tops)
    return (f'layer {{ name: "{name}" type: "{typ}" ' + "".join(f'bottom: "{b}" ' for b in bottoms)
            + "".join(f'top: "{t}" ' for t in tops) + params + " }\n")


def conv(name, bottom, n, k, s=1, p=0, extra="", typ="Convolution"):
    return lay(name, typ, bottom, params=f"convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} "
               f"pad: {p} {extra} }}")


def pool(name, bottom, kind, k, s, p=0):
    return lay(name, "Pooling", bottom, params=f"pooling_param {{ pool: {kind} kernel_size: {k} stride: {s} pad: {p} }}")


def relu(name, blob):
    return lay(name, "ReLU", blob, blob)


def ip(name, bottom, n, extra=""):
    return lay(name, "InnerProduct", bottom, params=f"inner_product_param {{ num_output: {n} {extra} }}")


def bn_scale(blob):
    return lay(f"{blob}/bn", "BatchNorm", blob, blob) + lay(f"{blob}/scale", "Scale", blob, blob,
                                                            "scale_param { bias_term: true }")


LENET = (inp((1, 1, 28, 28)) + conv("conv1", "data", 20, 5) + pool("pool1", "conv1", "MAX", 2, 2)
         + conv("conv2", "pool1", 50, 5) + pool("pool2", "conv2", "MAX", 2, 2) + ip("ip1", "pool2", 500)
         + ip("ip_axis2", "pool2", 3, "axis: 2")
         + relu("relu1", "ip1") + ip("ip2", "ip1", 10) + lay("prob", "Softmax", "ip2"))
CIFAR10_QUICK = (inp((1, 3, 32, 32)) + conv("conv1", "data", 32, 5, p=2) + pool("pool1", "conv1", "MAX", 3, 2)
                 + relu("relu1", "pool1") + conv("conv2", "pool1", 32, 5, p=2) + relu("relu2", "conv2")
                 + pool("pool2", "conv2", "AVE", 3, 2) + conv("conv3", "pool2", 64, 5, p=2) + relu("relu3", "conv3")
                 + pool("pool3", "conv3", "AVE", 3, 2) + ip("ip1", "pool3", 64) + ip("ip2", "ip1", 10)
                 + lay("prob", "Softmax", "ip2"))
LRN = 'lrn_param {{ local_size: {} alpha: 0.0001 beta: 0.75 {} }}'
CAFFENET = (inp((1, 3, 99, 99)) + conv("conv1", "data", 24, 11, s=4) + relu("relu1", "conv1")
            + pool("pool1", "conv1", "MAX", 3, 2) + lay("norm1", "LRN", "pool1", params=LRN.format(5, ""))
            + conv("conv2", "norm1", 32, 5, p=2, extra="group: 2") + relu("relu2", "conv2")
            + pool("pool2", "conv2", "MAX", 3, 2)
            + lay("norm2", "LRN", "pool2", params=LRN.format(3, "norm_region: WITHIN_CHANNEL"))
            + conv("conv3", "norm2", 48, 3, p=1) + conv("conv4", "conv3", 48, 3, p=1, extra="group: 2")
            + conv("conv5", "conv4", 32, 3, p=1, extra="group: 4") + pool("pool5", "conv5", "MAX", 3, 2)
            + ip("fc6", "pool5", 64) + relu("relu6", "fc6") + lay("drop6", "Dropout", "fc6", "fc6")
            + ip("fc7", "fc6", 10) + lay("prob", "Softmax", "fc7"))
INCEPTION = (inp((1, 16, 15, 15)) + conv("1x1", "data", 8, 1) + conv("3x3_reduce", "data", 6, 1)
             + relu("relu_3x3_reduce", "3x3_reduce") + conv("3x3", "3x3_reduce", 8, 3, p=1)
             + conv("5x5_reduce", "data", 4, 1) + conv("5x5", "5x5_reduce", 4, 5, p=2)
             + pool("pool", "data", "MAX", 3, 1, 1) + conv("pool_proj", "pool", 4, 1)
             + lay("output", "Concat", ["1x1", "3x3", "5x5", "pool_proj"])
             + pool("pool_ceil", "output", "MAX", 3, 2) + pool("pool_ave", "output", "AVE", 3, 2)
             + lay("prelu", "PReLU", "pool_ave", params="prelu_param { channel_shared: true }")
             + lay("glob", "Pooling", "prelu", params="pooling_param { pool: AVE global_pooling: true }"))
BOTTLENECK = (inp((1, 32, 14, 14)) + conv("branch1", "data", 64, 1, s=2, extra="bias_term: false") + bn_scale("branch1")
              + conv("branch2a", "data", 16, 1, s=2, extra="bias_term: false") + bn_scale("branch2a")
              + relu("branch2a_relu", "branch2a") + conv("branch2b", "branch2a", 16, 3, p=1) + bn_scale("branch2b")
              + relu("branch2b_relu", "branch2b") + conv("branch2c", "branch2b", 64, 1) + bn_scale("branch2c")
              + lay("res", "Eltwise", ["branch1", "branch2c"]) + relu("res_relu", "res")
              + lay("coeff", "Eltwise", ["res", "branch1"], params="eltwise_param { coeff: 0.5 coeff: -2 }")
              + lay("prod", "Eltwise", ["coeff", "branch2c"], params="eltwise_param { operation: PROD }")
              + lay("max", "Eltwise", ["prod", "res"], params="eltwise_param { operation: MAX }")
              + lay("gate", "Pooling", "max", params="pooling_param { pool: AVE global_pooling: true }")
              + lay("gate_flat", "Flatten", "gate")
              + lay("gated", "Scale", ["max", "gate_flat"], params="scale_param { axis: 0 }")
              + lay("scale_hw", "Scale", "gated", params="scale_param { axis: 2 num_axes: 2 bias_term: true }")
              + lay("power", "Power", "scale_hw",
                                                   params="power_param { power: 2 scale: 0.5 shift: 3 }"))
MOBILENET = (inp((1, 3, 32, 32)) + conv("conv1", "data", 8, 3, s=2, p=1, extra="bias_term: false")
             + bn_scale("conv1") + relu("relu1", "conv1")
             + conv("conv2_1/dw", "conv1", 8, 3, p=1, extra="group: 8 bias_term: false") + bn_scale("conv2_1/dw")
             + relu("relu2_1/dw", "conv2_1/dw") + conv("conv2_1/sep", "conv2_1/dw", 16, 1) + bn_scale("conv2_1/sep")
             + relu("relu2_1/sep", "conv2_1/sep")
             + conv("conv2_2/dw", "conv2_1/sep", 16, 3, s=2, p=1, extra="group: 16") + relu("relu2_2/dw", "conv2_2/dw")
             + conv("conv2_2/sep", "conv2_2/dw", 24, 1))
FIRE = (inp((1, 16, 13, 13)) + conv("fire/squeeze1x1", "data", 8, 1) + relu("fire/relu_squeeze1x1", "fire/squeeze1x1")
        + conv("fire/expand1x1", "fire/squeeze1x1", 16, 1) + relu("fire/relu_expand1x1", "fire/expand1x1")
        + conv("fire/expand3x3", "fire/squeeze1x1", 16, 3, p=1) + relu("fire/relu_expand3x3", "fire/expand3x3")
        + lay("fire/concat", "Concat", ["fire/expand1x1", "fire/expand3x3"])
        + lay("drop", "Dropout", "fire/concat", "fire/concat") + conv("conv10", "fire/concat", 10, 1)
        + lay("pool10", "Pooling", "conv10", params="pooling_param { pool: AVE global_pooling: true }")
        + lay("prob", "Softmax", "pool10"))
PRIOR = ('prior_box_param {{ min_size: {} max_size: {} aspect_ratio: 2 {} flip: true clip: {} variance: 0.1 '
         'variance: 0.1 variance: 0.2 variance: 0.2 {} }}')
PERMUTE = "permute_param { order: 0 order: 2 order: 3 order: 1 }"


def _head(i, feat, p, prior):
    return (conv(f"f{i}_loc", feat, 4 * p, 3, p=1) + lay(f"f{i}_loc_perm", "Permute", f"f{i}_loc", params=PERMUTE)
            + lay(f"f{i}_loc_flat", "Flatten", f"f{i}_loc_perm") + conv(f"f{i}_conf", feat, 3 * p, 3, p=1)
            + lay(f"f{i}_conf_perm", "Permute", f"f{i}_conf", params=PERMUTE)
            + lay(f"f{i}_conf_flat", "Flatten", f"f{i}_conf_perm") + lay(f"f{i}_prior", "PriorBox", [feat, "data"],
                                                                         params=prior))


SSD_HEAD = (inp((1, 3, 64, 64)) + conv("conv1", "data", 8, 3, s=2, p=1) + relu("relu1", "conv1")
            + lay("conv1_norm", "Normalize", "conv1", params="norm_param { across_spatial: false channel_shared: false }")
            + conv("conv2", "conv1", 8, 3, s=2, p=1) + relu("relu2", "conv2")
            + _head(1, "conv1_norm", 4, PRIOR.format(8, 16, "", "false", "step: 2 offset: 0.5"))
            + _head(2, "conv2", 6, PRIOR.format(16, 32, "aspect_ratio: 3", "true", ""))
            + lay("mbox_loc", "Concat", ["f1_loc_flat", "f2_loc_flat"])
            + lay("mbox_conf", "Concat", ["f1_conf_flat", "f2_conf_flat"])
            + lay("mbox_priorbox", "Concat", ["f1_prior", "f2_prior"], params="concat_param { axis: 2 }")
            + lay("conf_reshape", "Reshape", "mbox_conf", params="reshape_param { shape { dim: 0 dim: -1 dim: 3 } }")
            + lay("conf_softmax", "Softmax", "conf_reshape", params="softmax_param { axis: 2 }")
            + lay("conf_flatten", "Flatten", "conf_softmax")
            + lay("detection_out", "DetectionOutput", ["mbox_loc", "conf_flatten", "mbox_priorbox"],
                  params="detection_output_param { num_classes: 3 share_location: true background_label_id: 0"
                  " code_type: CENTER_SIZE nms_param { nms_threshold: 0.45 } keep_top_k: 10 }"))
FCN = (inp((1, 3, 21, 23)) + conv("conv1", "data", 8, 3, p=10) + relu("relu1", "conv1")
       + pool("pool1", "conv1", "MAX", 2, 2) + conv("conv2", "pool1", 8, 3, extra="dilation: 2")
       + conv("score", "conv2", 4, 1)
       + conv("upscore", "score", 4, 4, s=2, extra="bias_term: false", typ="Deconvolution")
       + conv("upscore_g", "upscore", 8, 3, s=2, extra="group: 4", typ="Deconvolution")
       + lay("crop", "Crop", ["upscore", "data"], params="crop_param { axis: 2 offset: 5 }")
       + lay("crop_hw", "Crop", ["upscore_g", "crop"], params="crop_param { axis: 1 offset: 2 offset: 7 offset: 3 }"))
WRITTEN = {"lenet": LENET, "cifar10_quick": CIFAR10_QUICK, "caffenet_groups_lrn": CAFFENET,
           "inception_block": INCEPTION, "resnet_bottleneck": BOTTLENECK, "mobilenet_depthwise": MOBILENET,
           "squeezenet_fire": FIRE, "ssd_head": SSD_HEAD, "fcn_deconv_crop": FCN}


@pytest.mark.parametrize("name", list(WRITTEN))
def test_written_net_matches_opencv(name, tmp_path):
    net = _text_net(WRITTEN[name])
    assert compare_with_opencv(net, random_weights(net), tmp_path) >= 5


# -- the zoo's deploy nets with random weights --------------------------------------------------

ZOO_NETS = [  # id, path, input shape override (smaller where the net allows, for time)
    ("lenet", "bvlc/examples/mnist/lenet.prototxt", (1, 1, 28, 28)),
    ("caffenet", "bvlc/models/bvlc_reference_caffenet/deploy.prototxt", (1, 3, 99, 99)),
    ("alexnet", "bvlc/models/bvlc_alexnet/deploy.prototxt", (1, 3, 99, 99)),
    ("googlenet", "bvlc/models/bvlc_googlenet/deploy.prototxt", (1, 3, 224, 224)),
    ("resnet50", "resnet/prototxt/ResNet-50-deploy.prototxt", None),
    ("squeezenet_1.0", "squeezenet/SqueezeNet_v1.0/deploy.prototxt", (1, 3, 131, 131)),
    ("squeezenet_1.1", "squeezenet/SqueezeNet_v1.1/deploy.prototxt", (1, 3, 131, 131)),
    ("mobilenet_v1", "mobilenet_caffe/mobilenet_deploy.prototxt", (1, 3, 128, 128)),
    ("mobilenet_v2", "mobilenet_caffe/mobilenet_v2_deploy.prototxt", (1, 3, 128, 128)),
    ("densenet121", "densenet_caffe/DenseNet_121.prototxt", (1, 3, 128, 128)),
    ("shufflenet_v2", "shufflenet/shufflenet_v2_1x_deploy.prototxt", (1, 3, 128, 128)),
    ("mobilenet_ssd", "mobilenet_ssd/deploy.prototxt", None),
    ("mtcnn_det1", "mtcnn/MTCNNv2/model/det1.prototxt", (1, 3, 31, 37)),
    ("mtcnn_det2", "mtcnn/MTCNNv2/model/det2.prototxt", None),
    ("mtcnn_det3", "mtcnn/MTCNNv2/model/det3.prototxt", None),
    ("mtcnn_det4", "mtcnn/MTCNNv2/model/det4.prototxt", None),
]


@needs_zoo
@pytest.mark.parametrize(("rel", "shape"), [n[1:] for n in ZOO_NETS], ids=[n[0] for n in ZOO_NETS])
def test_zoo_deploy_net_matches_opencv(rel, shape, tmp_path):
    net = Net.from_prototxt(ZOO / rel, input_shapes={"data": shape} if shape else None)
    assert compare_with_opencv(net, random_weights(net), tmp_path) >= 5


# -- the zoo's real caffemodels -----------------------------------------------------------------

REAL = [  # id, prototxt, caffemodel, input shape override
    *[(f"mtcnn_det{i}", f"mtcnn/MTCNNv2/model/det{i}.prototxt", f"mtcnn/MTCNNv2/model/det{i}.caffemodel", None)
      for i in (1, 2, 3, 4)],
    ("lenet_v2", "caffe_tensorflow/examples/mnist/lenet.prototxt", "caffe_tensorflow/examples/mnist/lenet_iter_10000.caffemodel",
     (1, 1, 28, 28)),
    ("lenet_v1", "legacy_v1_2014_everpeace/examples/mnist/lenet.prototxt",
     "legacy_v1_2014_everpeace/examples/mnist/lenet_iter_10000.caffemodel", (1, 1, 28, 28)),
    ("cifar10_quick_v1", "legacy_v1_2014_everpeace/examples/cifar10/cifar10_quick.prototxt",
     "legacy_v1_2014_everpeace/examples/cifar10/cifar10_quick_iter_5000.caffemodel", None),
    ("cifar10_full_v1", "legacy_v1_2014_everpeace/examples/cifar10/cifar10_full.prototxt",
     "legacy_v1_2014_everpeace/examples/cifar10/cifar10_full_iter_70000.caffemodel", None),
    *[(f"yufacedetectnet_{v}", f"libfacedetection/models/caffe/yufacedetectnet-open-{v}.prototxt",
       f"libfacedetection/models/caffe/yufacedetectnet-open-{v}.caffemodel", (1, 3, 120, 160)) for v in ("v1", "v2")],
]


@needs_zoo
@pytest.mark.parametrize(("rel", "model", "shape"), [n[1:] for n in REAL], ids=[n[0] for n in REAL])
def test_zoo_caffemodel_matches_opencv(rel, model, shape, tmp_path):
    net = Net.from_prototxt(ZOO / rel, input_shapes={"data": shape} if shape else None)
    arrays = layer_arrays(net, load_weights(ZOO / model))
    assert compare_with_opencv(net, arrays, tmp_path, seed=2) >= 5
