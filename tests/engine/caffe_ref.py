"""Direct numpy ports of Caffe's (and its forks') forward loops: the oracle for the engine's edge cases.

Written from the C++/CUDA sources named in each docstring, loop for loop, in float32 where Caffe
computes in float; nothing here calls dnntool.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)


def pooled_size(size: int, k: int, pad: int, s: int, any_pad: bool, ceil: bool = True) -> int:
    """pooling_layer.cpp Reshape: ceil((H + 2p - k) / s) + 1, minus one if the last window starts in the pad."""
    span = (size + 2 * pad - k) / s
    out = (math.ceil(span) if ceil else math.floor(span)) + 1
    if any_pad and (out - 1) * s >= size + pad:
        out -= 1
    return out


def caffe_pool(x: np.ndarray, kernel, stride, pad, pool: str, ceil: bool = True):
    """pooling_layer.cpp Forward_cpu (MAX with mask, AVE) and pooling_layer.cu StoPoolForwardTest."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    any_pad = bool(ph or pw)
    oh, ow = pooled_size(h, kh, ph, sh, any_pad, ceil), pooled_size(w, kw, pw, sw, any_pad, ceil)
    top = np.zeros((n, c, oh, ow), F32)
    mask = np.full((n, c, oh, ow), -1.0, F32)
    for i in range(n):
        for ch in range(c):
            plane = x[i, ch]
            for y in range(oh):
                for z in range(ow):
                    if pool == "MAX":
                        hs, ws = y * sh - ph, z * sw - pw
                        he, we = min(hs + kh, h), min(ws + kw, w)
                        hs, ws = max(hs, 0), max(ws, 0)
                        best, arg = -FLT_MAX, -1
                        for a in range(hs, he):
                            for b in range(ws, we):
                                if plane[a, b] > best:
                                    best, arg = plane[a, b], a * w + b
                        top[i, ch, y, z], mask[i, ch, y, z] = best, arg
                    elif pool == "AVE":
                        hs, ws = y * sh - ph, z * sw - pw
                        he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                        size = (he - hs) * (we - ws)
                        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                        acc = F32(0)
                        for a in range(hs, he):
                            for b in range(ws, we):
                                acc = F32(acc + plane[a, b])
                        with np.errstate(divide="ignore", invalid="ignore"):
                            top[i, ch, y, z] = acc / F32(size)
                    else:  # STOCHASTIC, test phase (no padding)
                        hs, ws = y * sh, z * sw
                        he, we = min(hs + kh, h), min(ws + kw, w)
                        s = v = F32(0)
                        for a in range(hs, he):
                            for b in range(ws, we):
                                s = F32(s + plane[a, b])
                                v = F32(v + plane[a, b] * plane[a, b])
                        top[i, ch, y, z] = v / s if s > 0 else 0.0
    return top, mask


def caffe_lrn(x: np.ndarray, size: int, alpha: float, beta: float, k: float, within: bool = False):
    """lrn_layer.cpp: CrossChannelForward_cpu (running padded sum of squares), or WITHIN_CHANNEL's
    split / square / AVE pool (pad (size-1)/2) / power(1 + alpha*avg, -beta) / product."""
    x = x.astype(F32)
    n, c, h, w = x.shape
    pre = (size - 1) // 2
    if within:
        avg, _ = caffe_pool(x * x, (size, size), (1, 1), (pre, pre), "AVE")
        return (x * np.power(F32(1) + F32(alpha) * avg, F32(-beta))).astype(F32)
    a = F32(alpha / size)
    scale = np.full((n, c, h, w), F32(k), F32)
    padded = np.zeros((n, c + size - 1, h, w), F32)
    padded[:, pre:pre + c] = x * x
    for i in range(n):
        for j in range(size):
            scale[i, 0] += a * padded[i, j]
        for ch in range(1, c):
            scale[i, ch] = scale[i, ch - 1] + a * padded[i, ch + size - 1] - a * padded[i, ch - 1]
    return (x * np.power(scale, F32(-beta))).astype(F32)


def caffe_interp2(x: np.ndarray, h2: int, w2: int, pad_beg: int = 0, pad_end: int = 0):
    """PSPNet/DeepLab interp.cpp caffe_cpu_interp2 on the crop [-pad_beg, H + pad_end), align corners."""
    x = x[:, :, -pad_beg:x.shape[2] + pad_end, -pad_beg:x.shape[3] + pad_end].astype(F32)
    h1, w1 = x.shape[2:]
    if (h1, w1) == (h2, w2):
        return x.copy()
    rh = F32(h1 - 1) / F32(h2 - 1) if h2 > 1 else F32(0)
    rw = F32(w1 - 1) / F32(w2 - 1) if w2 > 1 else F32(0)
    out = np.zeros((*x.shape[:2], h2, w2), F32)
    for i in range(h2):
        hr = F32(rh * F32(i))
        a = int(hr)
        ap = 1 if a < h1 - 1 else 0
        l1 = F32(hr - a)
        l0 = F32(1) - l1
        for j in range(w2):
            wr = F32(rw * F32(j))
            b = int(wr)
            bp = 1 if b < w1 - 1 else 0
            m1 = F32(wr - b)
            m0 = F32(1) - m1
            out[:, :, i, j] = l0 * (m0 * x[:, :, a, b] + m1 * x[:, :, a, b + bp]) + \
                l1 * (m0 * x[:, :, a + ap, b] + m1 * x[:, :, a + ap, b + bp])
    return out


def c_round(v) -> float:
    """C's round(): halves away from zero."""
    return math.copysign(math.floor(abs(float(v)) + 0.5), float(v))


def caffe_roi_pool(x: np.ndarray, rois: np.ndarray, ph: int, pw: int, scale: float):
    """rbgirshick/caffe-fast-rcnn roi_pooling_layer.cpp Forward_cpu."""
    _, c, h, w = x.shape
    out = np.zeros((len(rois), c, ph, pw), F32)
    for r, roi in enumerate(rois.reshape(-1, 5).astype(F32)):
        bi = int(roi[0])
        x0, y0, x1, y1 = (int(c_round(F32(roi[i] * F32(scale)))) for i in (1, 2, 3, 4))
        bh = F32(max(y1 - y0 + 1, 1)) / F32(ph)
        bw = F32(max(x1 - x0 + 1, 1)) / F32(pw)
        for i in range(ph):
            for j in range(pw):
                hs = min(max(math.floor(F32(i) * bh) + y0, 0), h)
                he = min(max(math.ceil(F32(i + 1) * bh) + y0, 0), h)
                ws = min(max(math.floor(F32(j) * bw) + x0, 0), w)
                we = min(max(math.ceil(F32(j + 1) * bw) + x0, 0), w)
                if he <= hs or we <= ws:
                    continue
                out[r, :, i, j] = x[bi, :, hs:he, ws:we].reshape(c, -1).max(axis=1)
    return out


def rfcn_psroi_pool(x: np.ndarray, rois: np.ndarray, dim: int, k: int, scale: float):
    """daijifeng001/caffe-rfcn psroi_pooling_layer.cu PSROIPoolingForward."""
    _, _, h, w = x.shape
    out = np.zeros((len(rois), dim, k, k), F32)
    s = F32(scale)
    for r, roi in enumerate(rois.reshape(-1, 5).astype(F32)):
        bi = int(roi[0])
        x0, y0 = F32(c_round(roi[1])) * s, F32(c_round(roi[2])) * s
        x1, y1 = F32(c_round(roi[3]) + 1.0) * s, F32(c_round(roi[4]) + 1.0) * s
        bw = F32(max(float(x1 - x0), 0.1)) / F32(k)
        bh = F32(max(float(y1 - y0), 0.1)) / F32(k)
        for d in range(dim):
            for i in range(k):
                for j in range(k):
                    hs = min(max(math.floor(F32(F32(i) * bh) + y0), 0), h)
                    he = min(max(math.ceil(F32(F32(i + 1) * bh) + y0), 0), h)
                    ws = min(max(math.floor(F32(F32(j) * bw) + x0), 0), w)
                    we = min(max(math.ceil(F32(F32(j + 1) * bw) + x0), 0), w)
                    if he <= hs or we <= ws:
                        continue
                    ch = (d * k + i) * k + j
                    out[r, d, i, j] = x[bi, ch, hs:he, ws:we].sum(dtype=np.float64) / ((he - hs) * (we - ws))
    return out


def flownet_correlation(a, b, pad: int, k: int, d: int, s1: int, s2: int, subtract: bool = False):
    """lmb-freiburg/flownet2 correlation_layer.cu CorrelateData / CorrelateDataSubtract."""
    n, c, h, w = a.shape
    pa = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad))).astype(np.float64)
    pb = np.pad(b, ((0, 0), (0, 0), (pad, pad), (pad, pad))).astype(np.float64)
    border = d + (k - 1) // 2
    th = math.ceil((h + 2 * pad - 2 * border) / s1)
    tw = math.ceil((w + 2 * pad - 2 * border) / s1)
    r = d // s2
    g = 2 * r + 1
    out = np.zeros((n, g * g, th, tw))
    for ch in range(g * g):
        ox, oy = (ch % g - r) * s2, (ch // g - r) * s2
        for y in range(th):
            for z in range(tw):
                y1, x1 = y * s1 + d, z * s1 + d
                p0 = pa[:, :, y1:y1 + k, x1:x1 + k]
                p1 = pb[:, :, y1 + oy:y1 + oy + k, x1 + ox:x1 + ox + k]
                v = np.abs(p0 - p1) if subtract else p0 * p1
                out[:, ch, y, z] = v.sum(axis=(1, 2, 3)) / (k * k * c)
    return out


def segnet_unpool(x: np.ndarray, mask: np.ndarray, oh: int, ow: int):
    """alexgkendall/caffe-segnet upsample_layer.cpp: top[mask[i]] = bottom[i] per channel plane."""
    n, c = x.shape[:2]
    top = np.zeros((n, c, oh * ow), F32)
    for i in range(n):
        for ch in range(c):
            for v, m in zip(x[i, ch].ravel(), mask[i, ch].ravel(), strict=True):
                top[i, ch, int(m)] = v
    return top.reshape(n, c, oh, ow)


def seg_accuracy(pred: np.ndarray, label: np.ndarray, ignore=(), outputs=()):
    """PSPNet seg_accuracy_layer.cpp Forward_cpu with DeepLab's ConfusionMatrix (rows: ground truth)."""
    n, c, h, w = pred.shape
    k = c if c > 1 else 2
    m = np.zeros((k, k))
    for i in range(n):
        for y in range(h):
            for z in range(w):
                gt = int(label[i, 0, y, z])
                if gt in ignore:
                    continue
                guess = int(np.argmax(pred[i, :, y, z])) if c > 1 else int(pred[i, 0, y, z] > 0.5)
                m[gt, guess] += 1
    diag, rows, cols = np.diag(m), m.sum(1), m.sum(0)
    acc = diag.sum() / m.sum() if m.sum() else 0.0
    seen = rows > 0
    recall = (diag[seen] / rows[seen]).mean() if seen.any() else 0.0
    union = rows + cols - diag
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = np.where(diag == union, 1.0, diag / union)
        tops = [[acc, recall, jac.mean()]] + [[diag[o] / cols[o], diag[o] / rows[o], jac[o]] for o in outputs]
    return [np.asarray(t, F32).reshape(1, 1, 1, 3) for t in tops]
