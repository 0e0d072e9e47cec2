"""Imports every family module so that their ``@register_layer`` decorators run."""

from dnntool.layers import (  # noqa: F401
    activation,
    conv,
    data,
    detection,
    inner_product,
    loss,
    netscope_compat,
    normalization,
    pooling,
    tensor_ops,
    vision_ext,
)
