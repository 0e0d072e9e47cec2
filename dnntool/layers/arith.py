"""Pure shape arithmetic with Caffe's rounding rules."""

from __future__ import annotations


def conv_out(size: int, kernel: int, pad: int, stride: int, dilation: int = 1) -> int:
    """Convolution: floor((H + 2p - (d(k-1)+1)) / s) + 1."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def deconv_out(size: int, kernel: int, pad: int, stride: int, dilation: int = 1) -> int:
    """Deconvolution: s(H-1) + d(k-1) + 1 - 2p."""
    return stride * (size - 1) + dilation * (kernel - 1) + 1 - 2 * pad


def pool_out(size: int, kernel: int, pad: int, stride: int, ceil: bool = True, clip: bool | None = None) -> int:
    """Pooling: ceil((H + 2p - k) / s) + 1, then one less if the last window starts in the padding.

    Caffe rounds up; forks with ``ceil_mode: false`` round down (floor), as PyTorch does.
    ``clip``: whether the clipping rule applies; Caffe applies it to both axes when either pad_h or
    pad_w is non-zero (``if (pad_h_ || pad_w_)``), so a 2-D caller passes ``clip=any(pads)``.
    Default: ``pad > 0``.
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if (pad > 0 if clip is None else clip) and (out - 1) * stride >= size + pad:
        out -= 1  # the last pooling window must start inside the image (Caffe's clipping)
    return out
