"""Our counts against figures published by others for the same files (../shared/zoo/MANIFEST.md).

Exact where the publisher counted the same thing (parameter counts of identical shapes, hand counts
of conv+fc MACs); within the publisher's rounding otherwise (netscope's MACs in millions, OpenVINO's
GFLOPs with three decimals).
"""

from __future__ import annotations

import pytest

from dnntool.net import Net
from tests.zoo import zoo_dir

ZOO = zoo_dir()
pytestmark = pytest.mark.skipif(ZOO is None, reason="../shared/zoo is absent")
LINEAR = ("Convolution", "InnerProduct", "ConvolutionDepthwise", "Deconvolution")


def build(rel, **shapes):
    return Net.from_prototxt(ZOO / rel, input_shapes=shapes or None)


def batch(net):
    return next(layer.top_shapes[0][0] for layer in net.layers if layer.impl.is_data)


def linear_macs_per_image(net):
    return sum(layer.cost.macs for layer in net.layers if layer.type in LINEAR) // batch(net)


# (file, exact learnable params, source of the figure)
EXACT_PARAMS = [
    ("bvlc/examples/mnist/lenet.prototxt", 431_080, "caffemodel blob total (MANIFEST 2c)"),
    ("bvlc/models/bvlc_alexnet/deploy.prototxt", 60_965_224, "MANIFEST 2c hand count; OMZ 60.965 M"),
    ("bvlc/models/bvlc_reference_caffenet/deploy.prototxt", 60_965_224, "OMZ 60.965 M"),
    ("resnet/prototxt/ResNet-50-deploy.prototxt", 25_557_096, "torchvision 25,557,032 + conv1 bias 64"),
    ("resnet/prototxt/ResNet-101-deploy.prototxt", 44_549_160, "torchvision resnet101"),
    ("resnet/prototxt/ResNet-152-deploy.prototxt", 60_192_808, "torchvision resnet152"),
    ("netscope/ethereon/presets/vgg-16.prototxt", 138_357_544, "torchvision vgg16"),
    ("squeezenet/SqueezeNet_v1.0/deploy.prototxt", 1_248_424, "torchvision squeezenet1_0"),
    ("densenet_caffe/DenseNet_169.prototxt", 14_149_480, "torchvision densenet169"),
    ("densenet_caffe/DenseNet_201.prototxt", 20_013_928, "torchvision densenet201"),
    ("mtcnn/MTCNNv2/model/det1.prototxt", 6_632, "det1.caffemodel blob total"),
    ("mtcnn/MTCNNv2/model/det3.prototxt", 389_040, "det3.caffemodel blob total"),
    ("mtcnn/MTCNNv2/model/det4.prototxt", 948_102, "det4.caffemodel blob total"),
]


@pytest.mark.parametrize("rel,expected,source", EXACT_PARAMS)
def test_exact_params(rel, expected, source):
    assert build(rel).learnable_count == expected, source


# (file, published value in millions, decimals published, what, source)
ROUNDED = [
    ("bvlc/models/bvlc_googlenet/deploy.prototxt", 6.999, 3, "params", "OMZ MParams"),
    ("mobilenet_ssd/voc/MobileNetSSD_deploy.prototxt", 5.783, 3, "params", "OMZ MParams"),
    ("netscope/dgschwend/presets/resnet-50.prototxt", 25.6, 1, "params", "netscope (zynqnet xlsx)"),
    ("netscope/dgschwend/presets/resnet-50.prototxt", 3870, -1, "macs", "netscope 3870 M MACC"),
    ("netscope/dgschwend/presets/vgg-16.prototxt", 15470, -1, "macs", "netscope 15470 M MACC"),
    ("netscope/ethereon/presets/vgg-16.prototxt", 30974, 0, "flops", "OMZ 30.974 GFLOPs"),
    ("squeezenet/SqueezeNet_v1.0/deploy.prototxt", 1737, 0, "flops", "OMZ 1.737 GFLOPs"),
    ("mobilenet_ssd/voc/MobileNetSSD_deploy.prototxt", 2316, 0, "flops", "OMZ 2.316 GFLOPs"),
    ("mobilenet_caffe/mobilenet_deploy.prototxt", 569, 0, "linear", "TF-slim 569 M MACs"),
    ("zynqnet/_TRAINED_MODEL/deploy.prototxt", 530, -1, "macs", "ZynqNet README 530 M MACC"),
    ("shufflenet/shufflenet_v2_1x_deploy.prototxt", 146.9, 1, "macs", "Megvii README 146 M (truncated)"),
]


@pytest.mark.parametrize("rel,value,decimals,what,source", ROUNDED)
def test_rounded_figures(rel, value, decimals, what, source):
    net = build(rel)
    b = batch(net)
    ours = {"params": net.learnable_count, "macs": net.cost.macs // b, "flops": net.cost.flops // b,
            "linear": linear_macs_per_image(net)}[what] / 1e6
    assert round(ours, decimals) == pytest.approx(value), f"{source}: ours {ours:.4f} M"


def test_squeezenet_v11_omz():
    # OMZ prints 1.236 M for 1,235,496 params (it rounds half up from more digits): one unit of slack.
    assert abs(build("squeezenet/SqueezeNet_v1.1/deploy.prototxt").learnable_count / 1e6 - 1.236) <= 0.001


def test_netscope_presets_at_227():
    """Netscope's analyzer numbers for presets that declare no input size (227x227 crops)."""
    for rel, maccs, params in [
        ("netscope/dgschwend/presets/squeezenet.prototxt", 860, 1.2),
        ("netscope/dgschwend/presets/squeezenet_v11.prototxt", 390, 1.2),
        ("netscope/dgschwend/presets/googlenet.prototxt", 1600, 7.0),
    ]:
        net = build(rel, data=(1, 3, 227, 227))
        assert round(net.cost.macs / 1e6, -1) == maccs, rel
        assert round(net.learnable_count / 1e6, 1) == params, rel


def test_resnet50_issue_figures():
    net = build("resnet/prototxt/ResNet-50-deploy.prototxt")
    assert net.learnable_count == 25_557_096
    assert net.stored_count == 53_173  # BatchNorm mean + variance + scale factor, reported apart
    assert linear_macs_per_image(net) == 3_857_973_248


def test_alexnet_and_squeezenet_hand_counts():
    # MANIFEST 2c: BVLC AlexNet conv+fc 724,406,816 MACs; zynqnet sheet: SqueezeNet v1.0 861.34 M (conv only).
    assert linear_macs_per_image(build("bvlc/models/bvlc_alexnet/deploy.prototxt")) == 724_406_816
    assert linear_macs_per_image(build("squeezenet/SqueezeNet_v1.0/deploy.prototxt")) == 861_339_936


def test_mobilenet_ssd_priors():
    net = build("mobilenet_ssd/voc/MobileNetSSD_deploy.prototxt")
    assert net.blob("mbox_priorbox").shape == (1, 2, 1917 * 4)
