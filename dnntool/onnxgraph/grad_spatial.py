"""Gradient formulations of convolutions and max pooling, chosen per shape at graph-build time.

Stock onnxruntime has no ConvGrad/MaxPoolGrad kernels, so each gradient is composed of standard
ops; several exact compositions exist and their speed depends on the shape, so each function picks
one by a static rule derived from measurements (benchmarks/RESULTS.md, Training): the same net
always gets the same graph. Module switches (``DX_FORM``, ``DW_FORM``) let tests force each.
"""

from __future__ import annotations

import numpy as np

from dnntool.onnxgraph.builder import GraphBuilder, onnx_dtype

#: the lowest float32: Caffe's max pooling starts from -FLT_MAX, and padding must never win
FLT_LOWEST = float(np.finfo(np.float32).min)


#: above this many im2col values (N x C x k^2 x OH x OW) dW falls back to the batch-transposed conv
PATCH_LIMIT = 1 << 26


#: "auto" (the rules below), "blocked", "split", "im2col" or "transposed": how conv_weight_grad computes dW
DW_FORM = "auto"
#: the split formulation's shifted copies are made per batch chunk of about this many values
SPLIT_CHUNK = 3 << 20


def _nchwc_block() -> int:
    """The NCHWc block of this machine's onnxruntime CPU kernels (0: none); see runtime.nchwc_block."""
    from dnntool.onnxgraph.runtime import nchwc_block

    return nchwc_block()


def conv_weight_grad(g: GraphBuilder, x: str, dy: str, xs, ys, k, s, d, p, group: int) -> str:
    """dW of y = conv(x, W): x (N, Cin, H...) and dy (N, Cout, OH...) give dW (Cout, Cin/group, k...).

    Three exact formulations (ms on 2 cores for CIFAR10-quick conv1 / conv2 / conv3, LeNet conv2;
    more shapes in benchmarks/RESULTS.md, Training):

    * split (2-D, stride 1, one group): the k_w column shifts of x (0/1 MatMuls) and the k_h row
      shifts of dY (Pads), batch folded into one Gemm of (k_h Cout) x (k_w Cin) over N x H' x OW,
      H' the padded input height: copies (k_h Cout + k_w Cin) x H' x OW per image instead of
      im2col's Cin k_h k_w x OH x OW, at H'/OH times the MACs (15.7 / 8.0 on conv2 / conv3);
      taken when those copies are at most the im2col's, which picked the faster of split and
      im2col on 12 of 13 shapes measured (the 13th, 3x3 64->64 on 28x28, within 3%);
    * im2col: patches extracted by one depthwise convolution with one-hot kernels, then a batched
      MatMul with dY summed over the batch (8.0 / 22.5 / 9.6 / 3.4), as patches x dY^T where the
      patch rows Cin k_h k_w are at least twice Cout (conv1 7.9 -> 6.6; 0.88-0.95 on larger shapes;
      LeNet conv1, 25 rows for 20 outputs, 0.84 vs 1.04 kept as dY x patches^T);
    * one convolution over batch-transposed tensors (40 / 169 / 13 / 5.7), which needs no patch
      buffer and is kept for shapes whose im2col would not fit in memory (over PATCH_LIMIT);
    * the same convolution blocked (onnxruntime's NCHWc kernels, where this machine has them: the
      batch padded to the block, x's border padded first, dY reordered as a filter through
      ReorderInput): no shifted copies, faster than split on all 10 shapes measured (CIFAR10-quick
      conv2 10.0 against 13.2-14.1 ms, conv3 4.8 against 7.1; 3x3 128->128 on 14x14 11.2 against
      15.0) and steadier when other work takes the machine's memory bandwidth; taken instead of
      split wherever the output channels fill whole blocks (RESULTS.md, Training, session 4).
    """
    nsp = len(k)
    n, cin, cout = xs[0], xs[1], ys[1]
    kk = int(np.prod(k))
    length = int(np.prod(ys[2:]))
    splittable = nsp == 2 and group == 1 and all(v == 1 for v in s)
    fits = nsp == 2 and n * cin * kk * length <= PATCH_LIMIT
    form = DW_FORM
    block = _nchwc_block() if form in ("auto", "blocked") else 0
    if form == "auto":
        fewer_copies = splittable and (k[0] * cout + k[1] * cin) * (xs[2] + p[0] + p[2]) <= cin * kk * ys[2]
        form = "split" if fewer_copies else "im2col" if fits else "transposed"
        if form == "split" and block and cout % block == 0:
            form = "blocked"
    if form == "blocked":
        return _conv_weight_grad_transposed(g, x, dy, xs, ys, k, s, d, p, group, max(block, 1))
    if form == "split" and splittable:
        # cache-sized batch chunks: CIFAR10-quick conv2 (10.2M values) in 4, 15.5 -> 14.0 ms; conv3 (4.6M) whole
        buffers = (k[0] * cout + k[1] * cin) * n * (xs[2] + p[0] + p[2]) * ys[3]
        chunks = min(n, -(-buffers // SPLIT_CHUNK)) if buffers > 2 * SPLIT_CHUNK else 1
        if chunks == 1:
            return _conv_weight_grad_split(g, x, dy, xs, ys, k, d, p)
        sizes = [n // chunks + (j < n % chunks) for j in range(chunks)]
        xparts = g.op("Split", [x, g.const(sizes)], chunks, axis=0)
        dyparts = g.op("Split", [dy, g.const(sizes)], chunks, axis=0)
        return g.op1("Sum", [_conv_weight_grad_split(g, a, b, (m, *xs[1:]), (m, *ys[1:]), k, d, p)
                             for a, b, m in zip(xparts, dyparts, sizes, strict=True)])
    if form in ("split", "im2col") and nsp == 2:
        cg, og = cin // group, cout // group
        onehot = np.zeros((cin * kk, 1, *k), g.dtype)
        for t in range(kk):
            onehot[t::kk, 0, t // k[1], t % k[1]] = 1.0
        cols = g.op1("Conv", [x, g.const(onehot)], kernel_shape=list(k), strides=s, dilations=d, pads=p,
                     group=cin)  # (N, Cin*k*k, OH, OW): channel c*kk + t is tap t of input channel c
        cols = g.reshape(cols, [n, group, cg * kk, length])
        dyr = g.reshape(dy, [n, group, og, length])
        if cg * kk >= 2 * og:  # the transposed operand (packed by the GEMM) is the smaller one
            prod = g.op1("MatMul", [cols, g.op1("Transpose", [dyr], perm=[0, 1, 3, 2])])  # (N, g, cg*kk, og)
            dw = g.op1("Transpose", [g.op1("ReduceSum", [prod, g.const([0])], keepdims=0)], perm=[0, 2, 1])
        else:
            prod = g.op1("MatMul", [dyr, g.op1("Transpose", [cols], perm=[0, 1, 3, 2])])  # (N, g, og, cg*kk)
            dw = g.op1("ReduceSum", [prod, g.const([0])], keepdims=0)
        return g.reshape(dw, [cout, cg, *k])
    return _conv_weight_grad_transposed(g, x, dy, xs, ys, k, s, d, p, group)


def _conv_weight_grad_split(g: GraphBuilder, x: str, dy: str, xs, ys, k, d, p) -> str:
    """dW[o, c, i, j] = sum over n, r, v of dYr_i[n, o, r, v] * Xc_j[n, c, r, v], stride 1, one group:
    Xc_j = the row-padded input with its columns shifted by d*j - pad (a 0/1 MatMul, zero outside),
    dYr_i = dY placed d*i rows down in the padded input's H' rows (a Pad). Batch-transposed first, so
    the k_w shifts of x and the k_h shifts of dY stack into two matrices and one Gemm does the rest."""
    n, cin, h, w = xs
    cout, oh, ow = ys[1], ys[2], ys[3]
    (kh, kw), (dh, dw_), (pt, pl, pb, _) = k, d, p
    rows = h + pt + pb
    xt = g.op1("Transpose", [x], perm=[1, 0, 2, 3])  # (Cin, N, H, W)
    if pt or pb:
        xt = g.op1("Pad", [xt, g.const([0, 0, pt, 0, 0, 0, pb, 0])])
    xt = g.reshape(xt, [cin * n * rows, w])
    shifted = []
    for j in range(kw):
        sel = np.zeros((w, ow), g.dtype)
        for v in range(ow):
            col = v + dw_ * j - pl
            if 0 <= col < w:
                sel[col, v] = 1.0
        shifted.append(g.reshape(g.op1("MatMul", [xt, g.const(sel)]), [cin, n * rows * ow]))
    cols = g.op1("Concat", shifted, axis=0)  # (kw*Cin, N*H'*OW)
    dyt = g.op1("Transpose", [dy], perm=[1, 0, 2, 3])  # (Cout, N, OH, OW)
    moved = [g.reshape(g.op1("Pad", [dyt, g.const([0, 0, dh * i, 0, 0, 0, rows - oh - dh * i, 0])]),
                       [cout, n * rows * ow]) for i in range(kh)]
    dws = g.op1("Gemm", [g.op1("Concat", moved, axis=0), cols], transB=1)  # (kh*Cout, kw*Cin)
    return g.op1("Transpose", [g.reshape(dws, [kh, cout, kw, cin])], perm=[1, 3, 0, 2])


def _conv_weight_grad_transposed(g: GraphBuilder, x: str, dy: str, xs, ys, k, s, d, p, group: int,
                                 multiple: int = 1) -> str:
    """dW as one convolution over batch-transposed tensors (any group count): x as (Cin, N, H...)
    images, dY as (Cout, N, OH...) filters, the stride and dilation trading places. ``multiple``:
    the batch padded with zeros to a multiple of it (one group), so that the NCHWc rewrite
    (onnxgraph/nchwc.py) runs this convolution in onnxruntime's blocked layout."""
    n, cin = xs[0], xs[1]
    cout = ys[1]
    nsp = len(k)
    cg, og = cin // group, cout // group
    sp = list(range(3, 3 + nsp))
    xr = g.reshape(x, [n, group, cg, *xs[2:]])
    xr = g.op1("Transpose", [xr], perm=[2, 1, 0, *sp])
    xr = g.reshape(xr, [cg, group * n, *xs[2:]])
    wr = g.reshape(dy, [n, group, og, *ys[2:]])
    wr = g.op1("Transpose", [wr], perm=[1, 2, 0, *sp])
    wr = g.reshape(wr, [group * og, n, *ys[2:]])
    if multiple > 1 and group == 1:
        # zero images (they add nothing to dW) up to the block, and x's border padded here: the
        # blocked kernel's path for windows over padding is slow with dY as the filter (conv2 of
        # CIFAR10-quick 17.3 -> 12.2 ms)
        extra = -n % multiple
        xr = g.op1("Pad", [xr, g.const([0, 0, *p[:nsp], 0, extra, *p[nsp:]])])
        if extra:
            wr = g.op1("Pad", [wr, g.const([0, 0] + [0] * nsp + [0, extra] + [0] * nsp)])
        p = [0] * (2 * nsp)
    full = g.op1("Conv", [xr, wr], kernel_shape=list(ys[2:]), strides=d, dilations=s, pads=p, group=group)
    cut = g.op1("Slice", [full, g.const([0] * nsp), g.const(k), g.const(list(range(2, 2 + nsp)))])
    return g.op1("Transpose", [cut], perm=[1, 0, *range(2, 2 + nsp)])


#: "auto" (the rule below), "transpose" or "flipped": how conv_data_grad computes dX (tests force each)
DX_FORM = "auto"


def conv_data_grad(g: GraphBuilder, dy: str, w: str, xs, ys, k, s, d, p, group: int) -> str:
    """dX of y = conv(x, W) (W: Cout, Cin/group, k...), by one of two exact formulations.

    A ConvTranspose of dY (onnxruntime: a GEMM into a column buffer of Cin*k^2 x OH*OW, then
    col2im), or, for stride 1, a Conv of dY with the flipped, in/out-swapped weights and padding
    d(k-1)-p (im2col of Cout*k^2 x H*W, then a GEMM). The Conv is taken where its im2col is at most
    twice the transposed conv's column buffer and the image has at least 64 pixels; on 18 shapes
    measured (benchmarks/RESULTS.md, Training) this rule picks the faster one, or one within 2%,
    e.g. Conv/ConvTranspose time 0.71 for CIFAR10-quick conv2, 0.77 conv3, 1.66 LeNet conv2
    (ratio 5.6), 1.33 for 3x3 128->128 on 7x7.
    """
    nsp = len(k)
    cout, cin = ys[1], xs[1]
    back = [d[j] * (k[j] - 1) - p[j] for j in range(nsp)] + [d[j] * (k[j] - 1) - p[nsp + j] for j in range(nsp)]
    pixels = int(np.prod(xs[2:]))
    cheap = cout * pixels <= 2 * cin * int(np.prod(ys[2:])) and pixels >= 64
    flipped = all(v == 1 for v in s) and min(back) >= 0 and (DX_FORM == "flipped" or (DX_FORM == "auto" and cheap))
    if flipped:
        og, cg = cout // group, cin // group
        wt = g.reshape(w, [group, og, cg, *k])
        wt = g.reshape(g.op1("Transpose", [wt], perm=[0, 2, 1, *range(3, 3 + nsp)]), [cin, og, *k])
        axes = list(range(2, 2 + nsp))
        wt = g.op1("Slice", [wt, g.const([-1] * nsp), g.const([-(1 << 62)] * nsp), g.const(axes), g.const([-1] * nsp)])
        return g.op1("Conv", [dy, wt], kernel_shape=list(k), dilations=d, pads=back, group=group)
    # the transposed convolution of dY, with output padding to recover the floor leftover
    opad = [xs[2 + j] - (s[j] * (ys[2 + j] - 1) + d[j] * (k[j] - 1) + 1 - p[j] - p[j + nsp]) for j in range(nsp)]
    return g.op1("ConvTranspose", [dy, w], kernel_shape=k, strides=s, dilations=d, pads=p, group=group,
                 output_padding=opad if any(opad) else None)




def _selection(n_in: int, k: int, s: int, pad: int, n_out: int) -> np.ndarray:
    """0/1 matrix (n_in, k * n_out): column t*n_out + o reads tap t of window o along one axis.

    A tap in the padding reads the window's nearest element inside the input instead: the
    duplicate never changes the window's maximum, and it either comes after that element in scan
    order (end padding) or reads the very element the first match would route to (begin padding),
    so no -FLT_MAX is needed.
    """
    sel = np.zeros((n_in, k * n_out), np.float32)
    for o in range(n_out):
        lo, hi = max(s * o - pad, 0), min(s * o - pad + k, n_in) - 1
        if lo > hi:
            raise NotImplementedError("MaxPool gradient with a window entirely in the padding")
        for t in range(k):
            sel[min(max(s * o + t - pad, lo), hi), t * n_out + o] = 1.0
    return sel


def _first_masks(g: GraphBuilder, taps: list, top: str) -> list[str]:
    """Boolean masks, one per tap: the tap is the first (in order) to equal ``top``, the taps' max.

    The last tap takes what no earlier tap took, since one of the taps equals their maximum, so
    the last entry of ``taps`` is never read (None will do). At least two taps.
    """
    free, out = None, []
    for tap in taps[:-1]:
        hit = g.op1("Equal", [tap, top])
        if free is not None:
            hit = g.op1("And", [hit, free])
        free = g.op1("Not", [hit]) if free is None else g.op1("Xor", [free, hit])
        out.append(hit)
    return [*out, free]


def _first_match(g: GraphBuilder, taps: list, top: str, grad: str) -> list[str]:
    """``grad`` masked per tap by :func:`_first_masks` (the one tap's gradient when there is one)."""
    if len(taps) == 1:
        return [grad]
    return [g.op1("Where", [m, grad, g.scalar(0.0)]) for m in _first_masks(g, taps, top)]


def _scatter_rows(g: GraphBuilder, parts: list[str], n: int, c: int, oh: int, w: int, k: int, s: int,
                  pad: int, h: int) -> str:
    """dX (N, C, H, W) from the per-tap gradients (N, C, OH, W) of row taps r = s*o + t - pad: the
    taps of one phase t % s, moved down t // s rows (Pad, negative where the windows overhang the
    input), are summed, then the phases are interleaved (Concat + Reshape)."""
    rows = -(-(pad + h) // s)  # rows of each phase covering the padded input
    phases = []
    for a in range(min(k, s)):
        terms = []
        for t in range(a, k, s):
            down, end = t // s, rows - oh - t // s
            terms.append(parts[t] if not down and not end else
                         g.op1("Pad", [parts[t], g.const([0, 0, down, 0, 0, 0, end, 0])]))
        phases.append(terms[0] if len(terms) == 1 else g.op1("Sum", terms))
    if s == 1:
        full = phases[0]
    else:
        full = g.op1("Concat", [g.op1("Unsqueeze", [p, g.const([3])]) for p in phases], axis=3)
        if len(phases) < s:  # stride > kernel: rows between windows get nothing
            full = g.op1("Pad", [full, g.const([0, 0, 0, 0, 0, 0, 0, 0, s - len(phases), 0])])
        full = g.reshape(full, [n, c, rows * s, w])
    if pad or rows * s != h:
        full = g.op1("Slice", [full, g.const([pad]), g.const([pad + h]), g.const([2])])
    return full


#: "auto" (the rule in maxpool_grad), "separable" or "indices": how the max-pool gradient routes dY
MAXPOOL_FORM = "auto"


def _maxpool_grad_indices(g: GraphBuilder, x: str, dy: str, xs, ys, kernel, strides, pads) -> str:
    """dX by the argmax: MaxPool's Indices output (onnxruntime keeps the first maximum in scan order,
    Caffe's mask; ties included) and one ScatterElements adding dY into zeros, row by row of the
    channel planes (the indices count over the whole tensor: the planes' offsets are subtracted;
    rows scatter faster than one flat vector, 2.5 against 3.5 ms on CIFAR10-quick's pool1). A window
    of nothing but -inf or NaN still gets an index, its first element's, where the separable form
    routes it too (Caffe's mask stays -1 there and drops it).
    """
    from onnx import helper

    n, c, h, w = xs
    m = ys[2] * ys[3]
    _, ind = g.op("MaxPool", [x], 2, kernel_shape=list(kernel), strides=list(strides), pads=list(pads))
    planes = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n * c, 1)
    inner = g.op1("Sub", [g.reshape(ind, [n * c, m]), g.const(planes)])
    zeros = g.op1("ConstantOfShape", [g.const(np.array([n * c, h * w], np.int64))],
                  value=helper.make_tensor("zero", onnx_dtype(g.dtype), [1], [0.0]))
    dx = g.op1("ScatterElements", [zeros, inner, g.reshape(dy, [n * c, m])], axis=1, reduction="add")
    return g.reshape(dx, [n, c, h, w])


def maxpool_grad(g: GraphBuilder, x: str, y: str, dy: str, xs, ys, kernel, strides, pads) -> str:
    """dX of y = MaxPool(x) (2-D, no dilation): dY goes to the first maximum of each window in scan
    order, Caffe's argmax, summed where windows overlap.

    Separable: the first maximum in row-major order is the first maximum along the window's columns
    of the first row holding the window's maximum. So a column stage takes Z, the max of every
    row's k_w column taps (a 1 x k_w MaxPool), then a row stage takes the k_h strided row slices of
    Z (contiguous rows), compares them with y and routes dY to the first matching row (dZ, rows put
    back by phase with Pad/Sum/Concat), and the column stage routes dZ to the first column tap
    equal to Z (taps by MatMuls with a 0/1 selection matrix, contiguous output) and puts the taps
    back with one MatMul by the transposed selection. Measured on 2 cores (ms): CIFAR10-quick pool1
    (N100 C32 32x32, 3/2) 31 -> 16 against strided slices of the padded input compared with y and
    a one-hot depthwise ConvTranspose scatter; LeNet pool1 2.7 -> 2.0, pool2 1.2 -> 0.8
    (benchmarks/RESULTS.md, Training). The 0/1 MatMuls read and write values exactly for finite
    inputs (x * 1 + 0 * others), and so does the mask Mul (dZ * 1 or dZ * 0).

    Overlapping windows with strides of 2 or more (CIFAR10-quick and AlexNet pool1) take the
    argmax instead (:func:`_maxpool_grad_indices`): as fast on CIFAR10-quick's pool1, 1.6x faster
    on AlexNet's, and a handful of passes over memory instead of about twenty, which is what
    slows down most when other tenants of the machine load its memory.
    """
    n, c, h, w = xs
    oh, ow = ys[2], ys[3]
    (kh, kw), (sh, sw) = kernel, strides
    pt, pl = pads[0], pads[1]
    form = MAXPOOL_FORM
    if form == "auto":  # overlapping strided windows: the argmax (RESULTS.md, Training, session 4)
        form = "indices" if (kh > sh or kw > sw) and min(sh, sw) >= 2 else "separable"
    if form == "indices":
        return _maxpool_grad_indices(g, x, dy, xs, ys, kernel, strides, pads)
    cols = None
    if kw == 1 and sw == 1 and ow == w:
        z = x
    else:
        cols = _selection(w, kw, sw, pl, ow)
        x2 = g.reshape(x, [n * c * h, w])
        taps = [g.op1("MatMul", [x2, g.const(np.ascontiguousarray(cols[:, t * ow:(t + 1) * ow]))])
                for t in range(kw - 1)] + [None]
        end = max(0, sw * (ow - 1) + kw - w - pl)  # one channel: no NCHWc reorders around this MaxPool
        z = g.op1("MaxPool", [g.reshape(x, [n * c, 1, h, w])], kernel_shape=[1, kw], strides=[1, sw],
                  pads=[0, pl, 0, end])
        z2 = g.reshape(z, [n * c * h, ow])
        z = g.reshape(z2, [n, c, h, ow])
    if kh == 1 and sh == 1 and oh == h:
        dz = dy
    else:
        end = max(0, sh * (oh - 1) + kh - 1 - h - pt)  # rows past the input read by a tap before the last
        zp = g.op1("Pad", [z, g.const([0, 0, pt, 0, 0, 0, end, 0]), g.scalar(FLT_LOWEST)]) if pt or end else z
        rows = [g.op1("Slice", [zp, g.const([t]), g.const([t + sh * (oh - 1) + 1]), g.const([2]), g.const([sh])])
                for t in range(kh - 1)] + [None]
        dz = _scatter_rows(g, _first_match(g, rows, y, dy), n, c, oh, ow, kh, sh, pt, h)
    if cols is None:
        return dz
    dz2 = g.reshape(dz, [n * c * h, ow])
    if kw > 1 and ow >= 16:  # masks stacked as bytes, one broadcast Mul: CIFAR10-quick pool1 10.3 -> 6.6 ms
        masks = g.op1("Concat", [g.op1("Unsqueeze", [m, g.const([1])]) for m in _first_masks(g, taps, z2)], axis=1)
        picked = g.op1("Mul", [g.op1("Cast", [masks], to=onnx_dtype(g.dtype)), g.op1("Unsqueeze", [dz2, g.const([1])])])
        dz2 = g.reshape(picked, [n * c * h, kw * ow])
    elif kw > 1:  # short rows: the broadcast costs more (LeNet pool2, OW 4: 0.51 -> 1.03 ms)
        dz2 = g.op1("Concat", _first_match(g, taps, z2, dz2), axis=1)
    dx = g.op1("MatMul", [dz2, g.const(np.ascontiguousarray(cols.T))])
    return g.reshape(dx, [n, c, h, w])


def avgpool_grad(g: GraphBuilder, dy: str, xs, ys, kernel, strides, pads) -> str:
    """dX of y = AveragePool(x) with count_include_pad (2-D): each window spreads dY / (k_h k_w)
    over its pixels inside the input. Separable: one MatMul spreads every row of dY over its
    columns (a 0/1 selection scaled by 1 / (k_h k_w)), then the rows are put back by phase as in
    max pooling. Measured on 2 cores (ms), against a depthwise ConvTranspose with constant
    weights: CIFAR10-quick pool2 (N100 C32 16x16, 3/2) 1.41 -> 0.74, pool3 (C64 8x8) 1.64 -> 0.52.
    """
    n, c, h, w = xs
    oh, ow = ys[2], ys[3]
    (kh, kw), (sh, sw) = kernel, strides
    spread = np.zeros((ow, w), g.dtype)
    for v in range(ow):
        for j in range(kw):
            col = sw * v + j - pads[1]
            if 0 <= col < w:
                spread[v, col] += 1.0 / (kh * kw)
    rows = g.reshape(g.op1("MatMul", [g.reshape(dy, [n * c * oh, ow]), g.const(spread)]), [n, c, oh, w])
    return _scatter_rows(g, [rows] * kh, n, c, oh, w, kh, sh, pads[0], h)
