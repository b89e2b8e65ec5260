"""The ``cpu`` device's fast forms of the dense products: the same sums as the loops of
``loopnet/kernels/dense.py``, arranged so that a CPU runs them near its peak.

Index legend as in dense.py (s = sample, n = neuron, i = input feature); the tiled kernels use
the matrix names ``output[r, c] = sum_k a[.., ..] * b[.., ..]`` (r = row, c = column,
k = the summed index), because each serves all three products.

Which form computes a product is decided by one function, ``loopnet.backends.cpu.dense_plan``,
from the shape alone (work = n_samples * n_inputs * n_neurons multiply-adds); the layered ops
and the compiled training step both ask it:

    form           bits             serves                                  why
    -------------  ---------------  --------------------------------------  -------------------
    BLOCKED        the loops'       forward and dweights of small layers    4 rows x 4 summed
                                    (300x3x64, 128x16x32)                   indices per pass:
                                                                            each load reused 4x
    FEW_INPUTS     the loops'       BLOCKED's forward and dweights of 1 or  one pass per row
                                    2 inputs (the book's first layers)      of samples; two
                                                                            dweights rows'
                                                                            sums in registers
    NARROW         the loops'       dweights and dinputs with < 16 neurons  vectors along the
                                    (300x64x3)                              inputs, not the 3
                                                                            neurons
    DOT_TILES      within rounding  forward with 4-15 neurons and >= 32     6 x 4 dot products
    (NT)           (fastmath)       inputs (on weights.T, packed) with      along a contiguous
                                    >= 256 inputs or >= 1M multiply-adds;   summed index
                                    dinputs with >= 16 neurons below
                                    BROADCAST
    DOT_PLAIN      within rounding  DOT_TILES' products of fewer than 4     one dot product
                   (fastmath)       output columns (300x64x3's forward,     per output, the
                                    300x2x64's dinputs), and its smaller    tiles' ragged edge
                                    narrow forwards (128x128x10)
    BROADCAST      within rounding  all three products of middle and large  5 x 64 register
    (TN)           (fastmath)       layers: >= 64 inputs, >= 16 neurons,    tile, no transposes
                                    >= 0.5M multiply-adds (or >= 128 inputs (BLIS's kernel)
                                    from 1M), >= 32 output columns; from
                                    8 inputs and 128k multiply-adds, the
                                    forward (>= 32 neurons), dweights
                                    (48-64 neurons) and dinputs (>= 32
                                    inputs, 32-64 neurons); float32 only
                                    (in float64 the tile spills: the
                                    other forms serve every size)

Each kernel is a ``prange`` over a body (``forward_rows_blocked``, ``tn_tile`` ...) that owns
whole output rows or tiles and sums them in one fixed order, so no result depends on the thread
count. The cpu backend compiles each kernel twice, a serial and a parallel build, and the
layered ops and the compiled training step call those very builds (the bodies, which never
allocate, without numba's reference counting, as ``loopnet.kernels.body`` explains); a
product below PARALLEL_MIN multiply-adds runs the serial build, where starting threads would
cost more than the work. (The broadcast kernel has two more: without its wide ways of walking,
``WIDE_PATHS``, for the products that never take them.) fastmath here is reassociation only
(no ``nnan``/``ninf``): NaN and inf come out where the numpy twin gives them. Measurements
behind the sizes below are in BENCHMARKS.md (``python benchmarks/bench.py --crossover``).
"""

import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload, register_jitable

from loopnet.kernels import KERNEL_OPTIONS, ROW_BLOCK, body

# The forms a product can take (``loopnet.backends.cpu.dense_plan`` returns them).
BLOCKED = 0
NARROW = 1
DOT_TILES = 2
BROADCAST = 3
DOT_PLAIN = 4
FEW_INPUTS = 5
FORM_NAMES = {BLOCKED: "blocked", NARROW: "narrow", DOT_TILES: "dot-tiles",
              BROADCAST: "broadcast", DOT_PLAIN: "dot-plain", FEW_INPUTS: "few-inputs"}

# --- The dot-product ("NT") form ----------------------------------------------------------------
# Every output element is a dot product of two *contiguous* rows,
#     output[r, c] = sum_k rows[r, k] * columns_t[c, k]
# (``columns_t`` is the right-hand matrix stored transposed). A 6 x 4 tile of outputs keeps its
# 24 running sums in 24 local variables, which LLVM holds in vector registers for the whole k
# loop: each step loads 6 + 4 values and does 24 multiply-adds, instead of 2 loads per
# multiply-add. With fastmath each of those sums is split across the vector lanes (16 partial
# sums of float32 with 512-bit code) and added up at the end: a different order than the simple
# loops (so not bit-identical to them, but within float rounding), and still one fixed order
# decided at compile time.
#
#     forward:    output   = inputs  @ weights    -> rows = inputs,   columns_t = weights.T (packed)
#     backward:   dinputs  = dvalues @ weights.T  -> rows = dvalues,  columns_t = weights

# Output columns handled per panel: PANEL rows of ``columns_t`` (128 x 784 floats = 400 KB for
# an MNIST layer) stay in the L2 cache while every row block of ``rows`` streams past them
# (64, 128 and 256 measured within 5% of each other at 1024^3; 128 the best). The blocked
# kernels update 4 rows of 4 * PANEL outputs, 8 KB, which stay in the L1 cache.
PANEL = 128

# fastmath without `nnan`/`ninf`: reassociating sums is what lets LLVM vectorize them, while NaN
# and inf must still come out where the numpy twin gives them.
FASTMATH = {"reassoc", "contract", "arcp", "nsz"}

# Rows of ``output`` per tile of ``nt_rows_tiled`` (its columns per tile: 4), and the length of
# the blocks in which it walks the summed index ``k`` (see its docstring).
TILE_ROWS = 6
K_BLOCK = 1024


def transpose_tiled(source, target):
    """``target[c, r] = source[r, c]`` (pack a matrix transposed), in 32 x 32 blocks.

    Copying block by block keeps both the rows read and the rows written in the L1 cache; a
    plain double loop would touch a new cache line of ``target`` on every element. Each
    ``prange`` iteration owns a band of 32 rows of ``target``.
    """
    n_rows, n_columns = source.shape
    for band in prange((n_columns + 31) // 32):
        c0 = band * 32
        c1 = min(c0 + 32, n_columns)
        for r0 in range(0, n_rows, 32):
            r1 = min(r0 + 32, n_rows)
            for c in range(c0, c1):
                target_row = target[c]
                for r in range(r0, r1):
                    target_row[r] = source[r, c]


def dense_nt_tiled(rows, columns_t, biases, add_biases, output):
    """``output[r, c] = sum_k rows[r, k] * columns_t[c, k]`` (``+ biases[c]`` if ``add_biases``).

    Twin: ``np.dot(rows, columns_t.T) (+ biases)``. The columns go in panels of ``PANEL``; within
    a panel one ``prange`` iteration owns ``TILE_ROWS`` rows of ``output`` (``nt_rows_tiled``).
    A product of fewer than 4 columns has no tile: each output is the ragged edge's plain dot
    product; ``dense_plan`` gives such products to ``dense_nt_plain`` (the DOT_PLAIN form),
    which runs the same dots without the tiles' set-up.
    """
    n_rows = rows.shape[0]
    n_columns = columns_t.shape[0]
    for panel_start in range(0, n_columns, PANEL):
        panel_end = min(n_columns, panel_start + PANEL)
        for block in prange((n_rows + TILE_ROWS - 1) // TILE_ROWS):
            nt_rows_tiled(rows, columns_t, biases, add_biases, output, block * TILE_ROWS,
                          panel_start, panel_end)


def dense_nt_plain(rows, columns_t, biases, add_biases, output):
    """``dense_nt_tiled`` for fewer than 4 output columns (the DOT_PLAIN form): every output a
    ``nt_rows_plain`` dot product, as the tiles' ragged edge computes it. A kernel of its own,
    so that a model whose dot-product products are all that narrow (the spiral model's,
    chapter 17's) does not compile the 6 x 4 tile it never runs: ~1.1-1.4 s of a cold
    compile. Bands of rows, without the tiles' per-block set-up (their
    six row views per block cost more than the dots: 1000x64 @ 64x1 10.3 -> 6.2 us, 300x64 @
    64x3 5.8 -> 4.2 us). The same loop as the tiles' edge, so the same values to the bit (but
    for the sign of a zero sum, which fastmath's ``nsz`` leaves to the compiler)."""
    n_rows = rows.shape[0]
    n_columns = columns_t.shape[0]
    for band in prange((n_rows + PLAIN_BAND - 1) // PLAIN_BAND):
        r0 = band * PLAIN_BAND
        nt_rows_plain(rows, columns_t, biases, add_biases, output, r0,
                      min(r0 + PLAIN_BAND, n_rows), 0, n_columns)


# Rows per prange iteration of a product with fewer than 4 output columns (plain dot products):
# enough bands for two threads to share out evenly (bands of 256 ran as fast serially).
PLAIN_BAND = 64


@register_jitable(fastmath=FASTMATH, _nrt=False)
def nt_rows_plain(rows, columns_t, biases, add_biases, output, r0, r1, c0, c1):
    """Rows ``r0 .. r1 - 1`` and columns ``c0 .. c1 - 1`` of ``dense_nt_tiled`` as one plain dot
    product each (the tiles' ragged edge, and every output of a product too narrow for a
    tile). The loops run from 0 over views of those rows and columns: over ``range(r0, r1)``
    numba's index wraparound checks stayed in the loops (1000x64 @ 64x1: 5.1 -> 3.9 us)."""
    zero = output.dtype.type(0)
    n_k = rows.shape[1]
    rows_here = rows[r0:r1]
    columns_here = columns_t[c0:c1]
    output_here = output[r0:r1, c0:c1]
    for r in range(r1 - r0):
        a = rows_here[r]
        o = output_here[r]
        for c in range(c1 - c0):
            b = columns_here[c]
            total = zero
            for k in range(n_k):
                total += a[k] * b[k]
            if add_biases:
                total += biases[c0 + c]
            o[c] = total


@register_jitable(fastmath=FASTMATH, _nrt=False)
def nt_rows_tiled(rows, columns_t, biases, add_biases, output, r0, panel_start, panel_end):
    """Rows ``r0 .. r0 + 5`` (fewer at the end) and columns ``panel_start .. panel_end - 1`` of
    ``dense_nt_tiled``.

    6 x 4 tiles, each with 24 scalar accumulators over a contiguous ``k`` loop (24 vector
    registers with the 4 column vectors and a row value: 29 of the 32 zmm registers). Each step
    loads 6 + 4 vectors for 24 multiply-adds (a 4 x 4 tile, 4 + 4 loads for 16, ran 10-15%
    slower: 1024^3 single-threaded 131 against 145 GFLOP/s). The sum over
    ``k`` goes in blocks of ``K_BLOCK``: a block of the 6 rows (24 KB) stays in the L1 cache while
    the panel's columns stream past from L2 (784x4096x128, the dweights of a 4096-sample batch:
    97 -> 104-116 GFLOP/s); block totals are added to ``output`` in block order, a fixed order.
    With fewer than 6 rows left, the missing rows repeat the last one and are not stored: the
    same code for every row (the same bits as in a full tile), at the price of a few wasted
    rows per call (running the last rows as plain dot products doubled 32x784x128's dinputs).
    Fewer than 4 columns left run the plain dot product. Rows are taken as views
    (``rows[r, k0:k1]``): loops that start at 0 over a row vectorize, offset ranges did not
    (numba's index checks). ``register_jitable(fastmath=...)``: compiled, with these flags,
    into the kernels that call it (``dense_nt_tiled`` and the training step).
    """
    n_rows, n_k = rows.shape
    zero = output.dtype.type(0)
    last = n_rows - 1
    n_here = min(TILE_ROWS, n_rows - r0)  # rows of output this call stores
    first_left = panel_start
    for k0 in range(0, max(n_k, 1), K_BLOCK):
        k1 = min(n_k, k0 + K_BLOCK)
        a0 = rows[r0, k0:k1]
        a1 = rows[min(r0 + 1, last), k0:k1]
        a2 = rows[min(r0 + 2, last), k0:k1]
        a3 = rows[min(r0 + 3, last), k0:k1]
        a4 = rows[min(r0 + 4, last), k0:k1]
        a5 = rows[min(r0 + 5, last), k0:k1]
        c = panel_start
        while c + 4 <= panel_end:
            b0 = columns_t[c + 0, k0:k1]
            b1 = columns_t[c + 1, k0:k1]
            b2 = columns_t[c + 2, k0:k1]
            b3 = columns_t[c + 3, k0:k1]
            s00 = zero; s01 = zero; s02 = zero; s03 = zero  # noqa: E702
            s10 = zero; s11 = zero; s12 = zero; s13 = zero  # noqa: E702
            s20 = zero; s21 = zero; s22 = zero; s23 = zero  # noqa: E702
            s30 = zero; s31 = zero; s32 = zero; s33 = zero  # noqa: E702
            s40 = zero; s41 = zero; s42 = zero; s43 = zero  # noqa: E702
            s50 = zero; s51 = zero; s52 = zero; s53 = zero  # noqa: E702
            for k in range(k1 - k0):
                y0 = b0[k]; y1 = b1[k]; y2 = b2[k]; y3 = b3[k]  # noqa: E702
                x = a0[k]
                s00 += x * y0; s01 += x * y1; s02 += x * y2; s03 += x * y3  # noqa: E702
                x = a1[k]
                s10 += x * y0; s11 += x * y1; s12 += x * y2; s13 += x * y3  # noqa: E702
                x = a2[k]
                s20 += x * y0; s21 += x * y1; s22 += x * y2; s23 += x * y3  # noqa: E702
                x = a3[k]
                s30 += x * y0; s31 += x * y1; s32 += x * y2; s33 += x * y3  # noqa: E702
                x = a4[k]
                s40 += x * y0; s41 += x * y1; s42 += x * y2; s43 += x * y3  # noqa: E702
                x = a5[k]
                s50 += x * y0; s51 += x * y1; s52 += x * y2; s53 += x * y3  # noqa: E702
            if add_biases and k0 == 0:
                d0 = biases[c]; d1 = biases[c + 1]; d2 = biases[c + 2]; d3 = biases[c + 3]  # noqa: E702,E501
                s00 += d0; s01 += d1; s02 += d2; s03 += d3  # noqa: E702
                s10 += d0; s11 += d1; s12 += d2; s13 += d3  # noqa: E702
                s20 += d0; s21 += d1; s22 += d2; s23 += d3  # noqa: E702
                s30 += d0; s31 += d1; s32 += d2; s33 += d3  # noqa: E702
                s40 += d0; s41 += d1; s42 += d2; s43 += d3  # noqa: E702
                s50 += d0; s51 += d1; s52 += d2; s53 += d3  # noqa: E702
            if k0 > 0:  # a later block of k: add to the totals so far
                o = output[r0]
                s00 += o[c]; s01 += o[c + 1]; s02 += o[c + 2]; s03 += o[c + 3]  # noqa: E702,E501
                o = output[min(r0 + 1, last)]
                s10 += o[c]; s11 += o[c + 1]; s12 += o[c + 2]; s13 += o[c + 3]  # noqa: E702,E501
                o = output[min(r0 + 2, last)]
                s20 += o[c]; s21 += o[c + 1]; s22 += o[c + 2]; s23 += o[c + 3]  # noqa: E702,E501
                o = output[min(r0 + 3, last)]
                s30 += o[c]; s31 += o[c + 1]; s32 += o[c + 2]; s33 += o[c + 3]  # noqa: E702,E501
                o = output[min(r0 + 4, last)]
                s40 += o[c]; s41 += o[c + 1]; s42 += o[c + 2]; s43 += o[c + 3]  # noqa: E702,E501
                o = output[min(r0 + 5, last)]
                s50 += o[c]; s51 += o[c + 1]; s52 += o[c + 2]; s53 += o[c + 3]  # noqa: E702,E501
            o = output[r0]
            o[c] = s00; o[c + 1] = s01; o[c + 2] = s02; o[c + 3] = s03  # noqa: E702
            if n_here > 1:
                o = output[r0 + 1]
                o[c] = s10; o[c + 1] = s11; o[c + 2] = s12; o[c + 3] = s13  # noqa: E702
            if n_here > 2:
                o = output[r0 + 2]
                o[c] = s20; o[c + 1] = s21; o[c + 2] = s22; o[c + 3] = s23  # noqa: E702
            if n_here > 3:
                o = output[r0 + 3]
                o[c] = s30; o[c + 1] = s31; o[c + 2] = s32; o[c + 3] = s33  # noqa: E702
            if n_here > 4:
                o = output[r0 + 4]
                o[c] = s40; o[c + 1] = s41; o[c + 2] = s42; o[c + 3] = s43  # noqa: E702
            if n_here > 5:
                o = output[r0 + 5]
                o[c] = s50; o[c + 1] = s51; o[c + 2] = s52; o[c + 3] = s53  # noqa: E702
            c += 4
        first_left = c
    # ragged edge: the last 1-3 columns of the panel
    nt_rows_plain(rows, columns_t, biases, add_biases, output, r0, r0 + n_here, first_left,
                  panel_end)


# --- The broadcast form -----------------------------------------------------------------------------
# The NT form needs both operands contiguous along the summed index, so ``dweights`` (summed over
# samples) would need both ``inputs`` and ``dvalues`` transposed on every call. The broadcast form
# (BLIS's micro-kernel) needs neither: the summed index is the *outer* loop,
#     for k:  acc[r, :] += a[k, r] * b[k, :]     (one value of ``a`` times a row of ``b``)
# so ``a`` is read a few scalars at a time in any layout, and ``b`` along its rows, which
# ``pack_panel`` copies (a plain copy, not a transpose) into PANEL_WIDTH-wide panels. The
# TN_ROWS x PANEL_WIDTH accumulator tile lives on the stack (``_stack_tile``): LLVM keeps such
# a tile in registers (20 zmm registers for 5 x 64 float32), where numpy arrays, whose memory
# could alias ``output``, are loaded and stored on every step. Like the NT kernel this is
# fastmath (the multiply-adds fused: within rounding of the loops, not their bits), with one
# owner per output element and one fixed order of sums, whatever the thread count.
#
#     dweights = inputs.T @ dvalues -> a = inputs (k = sample),   b = dvalues (a plain copy)
#     forward  = inputs @ weights   -> a = inputs.T (a view),     b = weights
#     dinputs  = dvalues @ weights.T -> a = dvalues.T (a view),   b = weights.T (packed)

# Columns per panel and per tile: 64 float32 are 4 zmm registers, so a 5 x 64 tile holds 20
# accumulators, and each step loads 4 vectors of ``b`` and 5 scalars of ``a`` for 20
# multiply-adds (32 columns, 12 accumulators, ran 4096x784x128's dweights 25% slower).
PANEL_WIDTH = 64
# Summed indices per block: a block of the panels (256 x 128 float32 = 128 KB for an MNIST
# layer's dweights) stays in the L2 cache while every tile of ``a`` streams past (512: 15%
# slower there; 128: a tie).
K_BLOCK_BROADCAST = 256
# Panels up to this many scalars (1 MB of float32, half the L2 cache here) are summed in one
# go: one parallel region instead of one per block (32x784x128's forward, packing included:
# 74-79 -> 62 us).
PANELS_IN_L2 = 256 * 1024
# From this many panels on (and with blocks of the summed index), a tile of rows copies its
# values of ``a`` once for all the panels (see ``dense_tn_tiled``): 1024^3's dweights 8.4 ->
# 7.8 ms (0.75 -> 0.87 of OpenBLAS, same run); with 2 panels (4096x784x128's dweights) the
# copy cost more than it saved (3.3 -> 3.4 ms). When ``a``'s rows are contiguous (dweights'
# ``inputs``) one pass along them packs every tile's values (each copy read 256 rows 4 KB
# apart): 1024^3 in the dweights form 9.4-9.8 -> 8.4-8.9 ms, the forward form's 8.4-8.6.
LOCAL_A_MIN_PANELS = 4
# Whether ``dense_tn_tiled`` holds its two ways of walking wide products (a thread owning whole
# panels, and tiles reading a copy of ``a``: see ``tn_paths``). Both add the very same sums in
# the very same order as the plain walk over tiles, only in another order of memory traffic,
# and compiling them is most of the kernel's cost (the chapter-19-sized model's cold compile:
# 25.5-27.5 -> 18.6-20.0 s without them, alternating runs). The cpu backend compiles a second build of the kernel with this
# set to False (numba drops a branch on a False constant before it types it) for the products
# that never take those ways, which are all of the book's models.
WIDE_PATHS = True


# Rows per tile: 5 x 64 float32 = 20 accumulator registers, + 4 vectors of ``b`` and 5
# broadcast values of ``a`` = 29 of the 32 zmm registers. 6 rows (24 + 4 + 6 = 34) spilled an
# accumulator to the stack on every step and ran 10-15% slower; 7 x 48 and 8 x 32 measured
# within noise of 5 x 64 or slower (single-threaded, 1024^3: 115-126 GFLOP/s; OpenBLAS 155).
TN_ROWS = 5


def _stack_array(size):
    """An intrinsic ``f(like)``: a pointer to ``size`` uninitialised scalars of ``like``'s dtype
    on the stack of the calling kernel (LLVM's ``alloca``): scratch space the optimizer may
    keep in registers, because nothing outside the kernel can see it."""

    @intrinsic
    def stack_array(typingctx, like):
        dtype = like.dtype

        def codegen(context, builder, signature, args):
            return cgutils.alloca_once(builder, context.get_value_type(dtype), size=size)

        return types.CPointer(dtype)(like), codegen

    return stack_array


_stack_tile = _stack_array(TN_ROWS * PANEL_WIDTH)  # the accumulators of a tile
_stack_copy = _stack_array(K_BLOCK_BROADCAST * TN_ROWS)  # a tile's values of ``a``


def borrowed(array):
    """``array`` itself, seen by compiled code as a borrowed array: the same data, shape and
    strides, without the record of who owns it (numba's meminfo), so that its views count no
    references. The broadcast kernel is compiled with numba's reference counting (it makes
    arrays of its own), and its serial build counted the references of every view a tile takes
    (``a``'s block, the panel's rows, the output's rows: ~16 atomic operations a tile, a third
    of its time; ``perf`` showed ``NRT_incref``/``NRT_decref``): 1000x64x64's forward ran 61
    us serially against 39 us in the parallel build on one thread, whose loop body numba
    compiles as a function of its own that receives its arrays so. Only for a kernel's own
    arguments, which its caller keeps alive for the call, and never returned or stored: then
    nothing is freed early. (In Python, as the other devices run the code: ``array``.)"""
    return array


@intrinsic
def _borrowed(typingctx, array):
    def codegen(context, builder, signature, args):
        view = cgutils.create_struct_proxy(signature.return_type)(context, builder,
                                                                  value=args[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return array(array), codegen


@overload(borrowed, inline="always")
def _borrowed_overload(array):
    return lambda array: _borrowed(array)


@register_jitable(_nrt=False)
def is_own_panel(b, panels):
    """Whether ``panels`` is ``b`` itself, already in panel form: ``b`` has PANEL_WIDTH
    columns, its rows contiguous and one after the other, and the caller passed ``b`` viewed
    as one panel (a layer of 64 neurons: ``weights`` in the forward, ``dvalues`` in dweights).
    Nothing to pack then (ch17's 1000x64 dvalues: ~18 us of a ~90 us dweights), and the sums
    read the very values a packed copy would hold: the same bits."""
    return (panels.shape[0] == 1 and b.shape[1] == PANEL_WIDTH
            and b.strides[1] == b.itemsize and b.strides[0] == PANEL_WIDTH * b.itemsize
            and panels.ctypes.data == b.ctypes.data)


# (A compiled function of its own, not a register_jitable body as the others: numba compiles
# such a body again for every parallel region that calls it, and a parallel build of
# ``dense_tn_tiled`` calls it in and out of them. Its callers pass ``p`` as an int64, since a
# prange's index is unsigned and a literal 0 is a type of its own: one compile, not three,
# ~0.2 s of the chapter-19-sized model's cold start. Compiled as the cpu device compiles its
# kernels: KERNEL_OPTIONS.)
@njit(**KERNEL_OPTIONS)
def pack_panel(b, panels, p):
    """``panels[p, k, c] = b[k, p * PANEL_WIDTH + c]``, zeros past ``b``'s last column.

    Panel ``p`` is one PANEL_WIDTH-wide column strip of ``b``, its rows now 256 bytes apart
    instead of a whole row of ``b`` (4 KB for 1024 columns: rows that far apart share L1 cache
    sets and evict each other). ``b`` may be a transposed view (``weights.T``)."""
    n_k, n_columns = b.shape
    c0 = p * PANEL_WIDTH
    width = min(PANEL_WIDTH, n_columns - c0)
    target = panels[p]
    if width == PANEL_WIDTH:  # a full panel: a copy of constant length, one vector store per
        for k in range(n_k):  # 16 values (a variable length ran 784x128 in 50 us, this in ~15)
            source = b[k, c0:c0 + PANEL_WIDTH]
            row = target[k]
            for c in range(PANEL_WIDTH):
                row[c] = source[c]
        return
    for k in range(n_k):
        source = b[k, c0:c0 + width]
        row = target[k]
        for c in range(width):
            row[c] = source[c]
        for c in range(width, PANEL_WIDTH):
            row[c] = 0


def dense_tn_tiled(a, b, panels, biases, add_biases, output):
    """``output[i, j] = sum_k a[k, i] * b[k, j]`` (``+ biases[j]`` if ``add_biases``); ``panels``
    (ceil(n_columns / PANEL_WIDTH), n_k, PANEL_WIDTH) is scratch for ``b`` cut into panels
    (``pack_panel``).

    Twin: ``np.dot(a.T, b) (+ biases)``. One ``prange`` iteration owns a tile: ``TN_ROWS`` rows
    of ``output`` times one panel's columns (``tn_tile``). The last tile of rows, when fewer
    are left, starts earlier (overlapping the tile before) and stores only its own rows, so
    that every tile is a full one; fewer rows than one tile run ``tn_rows_plain``. When the
    panels are too big for the L2 cache (see PANELS_IN_L2) the summed index goes in blocks of
    K_BLOCK_BROADCAST, the outer loop, in order: a fixed order of sums in any case; then with
    LOCAL_A_MIN_PANELS panels or more an iteration owns a tile of rows across all the panels,
    and reads its values of ``a`` from a copy (packed for all tiles in one pass along the
    rows of ``a`` when they are contiguous, else copied by the tile itself). For outputs with
    fewer rows than columns and panels to share, an iteration owns a whole panel: it packs it
    and runs its tiles. (``tn_paths`` decides the ways; the build without WIDE_PATHS walks
    the tiles plainly in every case, adding the same sums in the same order.)
    """
    a, b, panels = borrowed(a), borrowed(b), borrowed(panels)
    biases, output = borrowed(biases), borrowed(output)
    n_k, n_rows = a.shape
    n_panels = panels.shape[0]
    n_blocks = (n_rows + TN_ROWS - 1) // TN_ROWS
    panel_major, k_step, by_panels, local_a = tn_paths(n_k, n_rows, n_panels * PANEL_WIDTH)
    if WIDE_PATHS and by_panels:
        # a thread packs the panels it then reads: one parallel region, and each panel stays
        # in the cache of the core that wrote it (32x784x128's forward: 44 -> 40 us)
        for p in prange(n_panels):
            pack_panel(b, panels, np.int64(p))
            for block in range(n_blocks):
                owned = block * TN_ROWS
                start = min(owned, n_rows - TN_ROWS)
                tn_tile(a[:, start:start + TN_ROWS], panels[p], biases, add_biases, output,
                        start, owned, p * PANEL_WIDTH, False)
        return
    if n_panels == 1:   # (one panel: packed here, not in a parallel region of one iteration,
        if not is_own_panel(b, panels):     # whose start cost more than the copy at 64x64)
            pack_panel(b, panels, np.int64(0))
    else:
        for p in prange(n_panels):
            pack_panel(b, panels, np.int64(p))
    if n_rows < TN_ROWS:
        tn_rows_plain(a, panels, biases, add_biases, output)
        return
    rows_contiguous = a.strides[1] == a.itemsize
    a_tiles = np.empty((n_blocks if WIDE_PATHS and local_a and rows_contiguous else 0,
                        K_BLOCK_BROADCAST, TN_ROWS), a.dtype)
    for k0 in range(0, max(n_k, 1), k_step):
        k1 = min(n_k, k0 + k_step)
        accumulate = k0 > 0
        if WIDE_PATHS and local_a and rows_contiguous:
            # ``a``'s rows are contiguous (dweights' ``inputs``): pack the block's values of
            # ``a`` tile by tile in one pass along its rows (full cache lines, in order), then
            # one iteration per tile of rows, over all the panels
            n_here = k1 - k0
            for chunk in prange((n_here + 31) // 32):
                for k in range(chunk * 32, min(n_here, chunk * 32 + 32)):
                    row = a[k0 + k]
                    for block in range(n_blocks):
                        start = min(block * TN_ROWS, n_rows - TN_ROWS)
                        target = a_tiles[block, k]
                        for r in range(TN_ROWS):
                            target[r] = row[start + r]
            for block in prange(n_blocks):
                owned = block * TN_ROWS
                start = min(owned, n_rows - TN_ROWS)
                for p in range(n_panels):
                    tn_tile(a_tiles[block, :n_here], panels[p, k0:k1], biases, add_biases,
                            output, start, owned, p * PANEL_WIDTH, accumulate)
        elif WIDE_PATHS and local_a:
            # one iteration per tile of rows, over all the panels, with its values of ``a``
            # copied first: a row of ``a`` gives a tile 5 values, so each step of ``k``
            # touched a new cache line (and, for rows 4 KB apart, a set of the L1 cache
            # they all share); in the copy they are 20 bytes apart, and every panel reuses it
            for block in prange(n_blocks):
                owned = block * TN_ROWS
                start = min(owned, n_rows - TN_ROWS)
                copy = carray(_stack_copy(output), (K_BLOCK_BROADCAST, TN_ROWS))[:k1 - k0]
                source = a[k0:k1, start:start + TN_ROWS]
                for k in range(k1 - k0):
                    row = source[k]
                    target = copy[k]
                    for r in range(TN_ROWS):
                        target[r] = row[r]
                for p in range(n_panels):
                    tn_tile(copy, panels[p, k0:k1], biases, add_biases, output, start, owned,
                            p * PANEL_WIDTH, accumulate)
        else:
            for tile in prange(n_blocks * n_panels):
                if panel_major:
                    p, block = tile // n_blocks, tile % n_blocks
                else:
                    block, p = tile // n_panels, tile % n_panels
                owned = block * TN_ROWS
                start = min(owned, n_rows - TN_ROWS)
                tn_tile(a[k0:k1, start:start + TN_ROWS], panels[p, k0:k1], biases, add_biases,
                        output, start, owned, p * PANEL_WIDTH, accumulate)


@register_jitable(_nrt=False)
def tn_paths(n_k, n_rows, n_columns):
    """How ``dense_tn_tiled`` walks an (n_rows x n_columns) output summed over ``n_k``:
    ``(panel_major, k_step, by_panels, local_a)``. The kernel asks it, and so does the cpu
    backend, to pick the kernel's build (``tn_wide``).

    - ``panel_major``: consecutive tiles go to one thread (numba splits a prange into
      contiguous chunks): with fewer rows than columns a thread takes whole panels (and all of
      ``a``), else whole rows of tiles (and all the panels), whichever it reads less of
      (32x784x128's forward: 64 -> 49 us panel by panel; 4096x784x128's dweights: 3.4 -> 3.8
      ms so);
    - ``k_step``: the summed index in one go, or in blocks of K_BLOCK_BROADCAST when the
      panels are too big for the L2 cache (PANELS_IN_L2);
    - ``by_panels``: panel-major with two or more panels summed in one go: a thread packs the
      panels it then reads;
    - ``local_a``: blocks of the summed index over LOCAL_A_MIN_PANELS panels or more, not
      panel-major: a thread owns a tile of rows across all the panels and reads a copy of its
      values of ``a``."""
    n_panels = (n_columns + PANEL_WIDTH - 1) // PANEL_WIDTH
    panel_major = n_rows < n_panels * PANEL_WIDTH
    k_step = max(n_k, 1)
    if n_k * n_panels * PANEL_WIDTH > PANELS_IN_L2:
        k_step = K_BLOCK_BROADCAST
    by_panels = panel_major and n_panels >= 2 and k_step == max(n_k, 1) and n_rows >= TN_ROWS
    local_a = (k_step == K_BLOCK_BROADCAST and n_panels >= LOCAL_A_MIN_PANELS
               and not panel_major and n_rows >= TN_ROWS)
    return panel_major, k_step, by_panels, local_a


def tn_wide(n_k, n_rows, n_columns):
    """Whether ``dense_tn_tiled`` walks this product one of its wide ways (``tn_paths``), which
    only its build with WIDE_PATHS holds (the other build adds the same sums in the same
    order, walking the tiles plainly)."""
    _, _, by_panels, local_a = tn_paths(n_k, n_rows, n_columns)
    return by_panels or local_a


@register_jitable(_nrt=False)
def tn_rows_plain(a, panels, biases, add_biases, output):
    """``dense_tn_tiled`` for fewer than ``TN_ROWS`` rows: plain loops (a sum per output)."""
    n_k, n_rows = a.shape
    n_columns = output.shape[1]
    for r in range(n_rows):
        for c in range(n_columns):
            panel = panels[c // PANEL_WIDTH]
            total = output.dtype.type(0)
            for k in range(n_k):
                total += a[k, r] * panel[k, c % PANEL_WIDTH]
            if add_biases:
                total += biases[c]
            output[r, c] = total


@register_jitable(fastmath=FASTMATH)   # (with reference counting: carray makes an array)
def tn_tile(a_block, b_block, biases, add_biases, output, r0, owned, c0, accumulate):
    """One tile of ``dense_tn_tiled``. ``a_block`` (n x TN_ROWS) holds ``a[k, r0:r0 + 5]``
    and ``b_block`` (n x PANEL_WIDTH) a panel's rows, for the same n values of ``k``; their
    sums are rows ``r0 .. r0 + TN_ROWS - 1``, columns ``c0 .. c0 + PANEL_WIDTH - 1`` (fewer
    at the end) of ``output``: rows from ``owned`` on are stored, or added to ``output`` if
    ``accumulate`` (a later block of ``k``).

    The accumulators are the rows of a stack tile, each updated by a loop over the panel's
    columns that LLVM turns into 4 vector multiply-adds: the readable form of a 5 x 64
    register tile. The values of ``a`` come from one row with constant indices, and the loop
    over ``k`` starts at 0 over views of the blocks: with offset ranges numba's index
    wraparound checks stayed in the loop (126 against 115 GFLOP/s single-threaded).
    """
    n_columns = output.shape[1]
    tile = carray(_stack_tile(output), (TN_ROWS, PANEL_WIDTH))
    acc0 = tile[0]; acc1 = tile[1]; acc2 = tile[2]  # noqa: E702
    acc3 = tile[3]; acc4 = tile[4]  # noqa: E702
    for c in range(PANEL_WIDTH):
        acc0[c] = 0; acc1[c] = 0; acc2[c] = 0; acc3[c] = 0; acc4[c] = 0  # noqa: E702,E501
    for k in range(b_block.shape[0]):
        x = a_block[k]
        y_k = b_block[k]
        for c in range(PANEL_WIDTH):
            y = y_k[c]
            acc0[c] += x[0] * y; acc1[c] += x[1] * y; acc2[c] += x[2] * y  # noqa: E702
            acc3[c] += x[3] * y; acc4[c] += x[4] * y  # noqa: E702
    width = min(PANEL_WIDTH, n_columns - c0)
    for r in range(owned - r0, TN_ROWS):
        total = tile[r]
        o = output[r0 + r, c0:c0 + width]
        if accumulate:
            for c in range(width):
                o[c] += total[c]
        elif add_biases:
            b = biases[c0:c0 + width]
            for c in range(width):
                o[c] = total[c] + b[c]
        else:
            for c in range(width):
                o[c] = total[c]


def dense_forward_blocked(inputs, weights, biases, output):
    """``dense_forward_loops`` for 4 samples and 4 inputs at a time: the same bits, ~2x faster.

    Each pass over a row of neurons adds 4 inputs' products into 4 samples' outputs, so every
    weight loaded from memory is used 4 times and every output loaded and stored once per 4
    products (``dense_forward_loops`` loads and stores an output per product). Each
    ``output[s, n]`` still adds ``inputs[s, i] * weights[i, n]`` for ``i = 0, 1, ...`` one at a
    time, left to right, then the bias: exactly the sums of the loops and of the notes' neuron,
    so the very same bits (compiled without ``fastmath``, which would fuse or reorder them). One
    ``prange`` iteration owns 4 sample rows (``forward_rows_blocked``), or ROW_BLOCK rows
    of a layer of 1 or 2 inputs (``rows_few_inputs``).
    """
    n_samples = inputs.shape[0]
    if inputs.shape[1] <= 2:  # (the spiral's 2 inputs, the sine's 1): one pass per row
        for block in prange((n_samples + ROW_BLOCK - 1) // ROW_BLOCK):
            s0 = block * ROW_BLOCK
            rows_few_inputs(inputs, weights, biases, output, s0,
                            min(n_samples, s0 + ROW_BLOCK))
    else:
        for block in prange((n_samples + 3) // 4):
            forward_rows_blocked(inputs, weights, biases, output, block * 4)


def dense_forward_few_inputs(inputs, weights, biases, output):
    """``dense_forward_blocked`` for a layer of 1 or 2 inputs (the FEW_INPUTS form): the same
    blocks of ``rows_few_inputs``, so the same bits. A kernel of its own so that the book's
    first layers (the spiral's 2 inputs, the sine's 1) do not compile the 4-row body
    (``forward_rows_blocked``) they never run: ~1 s of a cold compile."""
    n_samples = inputs.shape[0]
    for block in prange((n_samples + ROW_BLOCK - 1) // ROW_BLOCK):
        s0 = block * ROW_BLOCK
        rows_few_inputs(inputs, weights, biases, output, s0, min(n_samples, s0 + ROW_BLOCK))


@body
def forward_rows_blocked(inputs, weights, biases, output, s0):
    """Rows ``s0 .. s0 + 3`` of ``dense_forward_blocked`` (fewer at the end): the body one
    ``prange`` iteration runs.

    ``body``: a plain Python function, which numba compiles into any compiled kernel that
    calls it.
    """
    n_samples, n_inputs = inputs.shape
    n_neurons = weights.shape[1]
    width = 4 * PANEL  # 4 output rows of this many neurons stay in the L1 cache
    s_end = min(s0 + 4, n_samples)
    for n0 in range(0, n_neurons, width):
        nw = min(width, n_neurons - n0)
        if s_end - s0 == 4:
            o0 = output[s0, n0:n0 + nw]
            o1 = output[s0 + 1, n0:n0 + nw]
            o2 = output[s0 + 2, n0:n0 + nw]
            o3 = output[s0 + 3, n0:n0 + nw]
            for n in range(nw):
                o0[n] = 0; o1[n] = 0; o2[n] = 0; o3[n] = 0  # noqa: E702
            x0 = inputs[s0]
            x1 = inputs[s0 + 1]
            x2 = inputs[s0 + 2]
            x3 = inputs[s0 + 3]
            i = 0
            while i + 4 <= n_inputs:
                w0 = weights[i, n0:n0 + nw]
                w1 = weights[i + 1, n0:n0 + nw]
                w2 = weights[i + 2, n0:n0 + nw]
                w3 = weights[i + 3, n0:n0 + nw]
                a00 = x0[i]; a01 = x0[i + 1]; a02 = x0[i + 2]; a03 = x0[i + 3]  # noqa: E702
                a10 = x1[i]; a11 = x1[i + 1]; a12 = x1[i + 2]; a13 = x1[i + 3]  # noqa: E702
                a20 = x2[i]; a21 = x2[i + 1]; a22 = x2[i + 2]; a23 = x2[i + 3]  # noqa: E702
                a30 = x3[i]; a31 = x3[i + 1]; a32 = x3[i + 2]; a33 = x3[i + 3]  # noqa: E702
                for n in range(nw):
                    y0 = w0[n]; y1 = w1[n]; y2 = w2[n]; y3 = w3[n]  # noqa: E702
                    # left to right: ((o + a0*y0) + a1*y1) + ...: input order, as the loops
                    o0[n] = o0[n] + a00 * y0 + a01 * y1 + a02 * y2 + a03 * y3
                    o1[n] = o1[n] + a10 * y0 + a11 * y1 + a12 * y2 + a13 * y3
                    o2[n] = o2[n] + a20 * y0 + a21 * y1 + a22 * y2 + a23 * y3
                    o3[n] = o3[n] + a30 * y0 + a31 * y1 + a32 * y2 + a33 * y3
                i += 4
            for i in range(i, n_inputs):  # the last 0-3 inputs
                w0 = weights[i, n0:n0 + nw]
                a0 = x0[i]; a1 = x1[i]; a2 = x2[i]; a3 = x3[i]  # noqa: E702
                for n in range(nw):
                    y0 = w0[n]
                    o0[n] += a0 * y0; o1[n] += a1 * y0; o2[n] += a2 * y0; o3[n] += a3 * y0  # noqa: E702,E501
        else:  # the last 1-3 samples: dense_forward_loops' body
            for s in range(s0, s_end):
                o = output[s, n0:n0 + nw]
                for n in range(nw):
                    o[n] = 0
                for i in range(n_inputs):
                    a = inputs[s, i]
                    w = weights[i, n0:n0 + nw]
                    for n in range(nw):
                        o[n] += a * w[n]
        b = biases[n0:n0 + nw]
        for s in range(s0, s_end):
            o = output[s, n0:n0 + nw]
            for n in range(nw):
                o[n] = o[n] + b[n]


@body
def rows_few_inputs(inputs, weights, biases, output, s0, s1):
    """Rows ``s0 .. s1 - 1`` of ``dense_forward_blocked`` for a layer of 1 or 2 inputs (the
    spiral's 2, the sine's 1), one pass per row: ``output[s, n] = ((0 + x0 * w0[n]) + x1 *
    w1[n]) + biases[n]``, the loops' very sums (from zero, input by input, then the bias), so
    their bits. The 4-row passes zero the outputs, add each input's products and the biases in
    separate passes over the row: with 2 inputs, 4 short loops per row, whose start-up cost
    was most of the time (300x2x64: 10-12 -> 3.6-5 us). A block of rows per call
    (ROW_BLOCK): a call per row cost more than the row's work, and inlining the body
    into the kernel (``inline="always"``), which ran it faster still, doubled the kernel's
    compile time."""
    zero = output.dtype.type(0)
    w0 = weights[0]
    if inputs.shape[1] == 1:
        for s in range(s0, s1):
            o = output[s]
            a0 = inputs[s, 0]
            for n in range(o.shape[0]):
                o[n] = (zero + a0 * w0[n]) + biases[n]
    else:
        w1 = weights[1]
        for s in range(s0, s1):
            o = output[s]
            a0 = inputs[s, 0]
            a1 = inputs[s, 1]
            for n in range(o.shape[0]):
                o[n] = ((zero + a0 * w0[n]) + a1 * w1[n]) + biases[n]


def dense_backward_weights_blocked(inputs, dvalues, dweights):
    """``dense_backward_weights_loops`` for 4 weight rows and 4 samples at a time: same bits.

    One ``prange`` iteration owns 4 rows of ``dweights`` (``weights_rows_blocked``).
    """
    for block in prange((inputs.shape[1] + 3) // 4):
        weights_rows_blocked(inputs, dvalues, dweights, block * 4, inputs.shape[0])


@body
def weights_rows_blocked(inputs, dvalues, dweights, i0, n_samples):
    """Rows ``i0 .. i0 + 3`` of ``dweights = inputs[:n_samples].T @ dvalues[:n_samples]``.

    Each pass over the neurons adds 4 samples' products into 4 rows of ``dweights``, left to
    right in sample order: the very sums of ``dense_backward_weights_loops`` (s = 0, 1, ...).
    """
    n_inputs = inputs.shape[1]
    n_neurons = dvalues.shape[1]
    width = 4 * PANEL
    i_end = min(i0 + 4, n_inputs)
    if i_end - i0 < 4:  # 1-3 rows (a layer of 1-3 inputs, or the last rows)
        weights_rows_few(inputs, dvalues, dweights, i0, i_end, n_samples, 0,
                         dvalues.shape[1])
        return
    for n0 in range(0, n_neurons, width):
        nw = min(width, n_neurons - n0)
        for i in range(i0, i_end):
            row = dweights[i, n0:n0 + nw]
            for n in range(nw):
                row[n] = 0
        g0 = dweights[i0, n0:n0 + nw]
        g1 = dweights[i0 + 1, n0:n0 + nw]
        g2 = dweights[i0 + 2, n0:n0 + nw]
        g3 = dweights[i0 + 3, n0:n0 + nw]
        s = 0
        while s + 4 <= n_samples:
            d0 = dvalues[s, n0:n0 + nw]
            d1 = dvalues[s + 1, n0:n0 + nw]
            d2 = dvalues[s + 2, n0:n0 + nw]
            d3 = dvalues[s + 3, n0:n0 + nw]
            x0 = inputs[s]
            x1 = inputs[s + 1]
            x2 = inputs[s + 2]
            x3 = inputs[s + 3]
            a00 = x0[i0]; a10 = x1[i0]; a20 = x2[i0]; a30 = x3[i0]  # noqa: E702
            a01 = x0[i0 + 1]; a11 = x1[i0 + 1]; a21 = x2[i0 + 1]; a31 = x3[i0 + 1]  # noqa: E702,E501
            a02 = x0[i0 + 2]; a12 = x1[i0 + 2]; a22 = x2[i0 + 2]; a32 = x3[i0 + 2]  # noqa: E702,E501
            a03 = x0[i0 + 3]; a13 = x1[i0 + 3]; a23 = x2[i0 + 3]; a33 = x3[i0 + 3]  # noqa: E702,E501
            for n in range(nw):
                y0 = d0[n]; y1 = d1[n]; y2 = d2[n]; y3 = d3[n]  # noqa: E702
                g0[n] = g0[n] + a00 * y0 + a10 * y1 + a20 * y2 + a30 * y3
                g1[n] = g1[n] + a01 * y0 + a11 * y1 + a21 * y2 + a31 * y3
                g2[n] = g2[n] + a02 * y0 + a12 * y1 + a22 * y2 + a32 * y3
                g3[n] = g3[n] + a03 * y0 + a13 * y1 + a23 * y2 + a33 * y3
            s += 4
        for s in range(s, n_samples):  # the last 0-3 samples
            d = dvalues[s, n0:n0 + nw]
            for i in range(i0, i_end):
                a = inputs[s, i]
                row = dweights[i, n0:n0 + nw]
                for n in range(nw):
                    row[n] += a * d[n]


def _stack_scratch(size):
    """``scratch(like)``: ``size`` scalars of ``like``'s dtype to sum in. Compiled, they are
    the calling function's stack (``_stack_array``, inlined into the caller so that the
    memory is its own), which LLVM keeps in registers when every index is a constant; run as
    plain Python (the kernels' uncompiled view in the tests), a numpy array."""
    stack = _stack_array(size)

    def scratch(like):
        return np.empty(size, like.dtype)

    @overload(scratch, inline="always")
    def _on_the_stack(like):
        return lambda like: stack(like)

    return scratch


# dweights of a layer of 1-3 inputs (the book's first layers: the spiral's 2 inputs, the
# sine's 1), and a wider layer's last 1-3 rows: each row is a sum over every sample of
# ``inputs[s, i] * dvalues[s, :]``, in sample order (the loops' bits), so it cannot be split
# over the samples. Summed into ``dweights`` 4 samples a pass, each pass loaded and stored
# the row again (300x2x64: 2.7-2.8 us, numpy 1.4); summed in registers, two rows at a time
# over WEIGHTS_CHUNK columns (8 vectors of 16 float32, 8 independent sums a sample), each
# value of ``dvalues`` is loaded once for both rows and nothing is stored until the end
# (300x2x64: 1.1 us; 20000x2x64: 189 -> 60 us; chunks of 32 columns, 4 sums a sample, ran
# 1.8 us). A lone row is summed as a pair with itself: as fast (the sums wait on each
# other's latency, not on the vector units), and one loop to compile, not two (with both,
# and a second chunk of 16 columns for narrower rows, a first ``loopnet train`` compiled
# ~1 s longer). Rows of fewer than WEIGHTS_CHUNK columns keep the passes of 4 samples.
WEIGHTS_CHUNK = 64
_chunk_scratch = _stack_scratch(2 * WEIGHTS_CHUNK)


@register_jitable(_nrt=False)
def rows_chunk(inputs, dvalues, dweights, i, j, n_samples, n0, first):
    """Columns ``n0 + first .. n0 + WEIGHTS_CHUNK - 1`` of rows ``i`` and ``j`` of ``dweights``
    (``j`` may be ``i``), their sums over the samples held in WEIGHTS_CHUNK scratch values a
    row."""
    acc = _chunk_scratch(dweights)
    zero = dweights.dtype.type(0)
    for n in range(2 * WEIGHTS_CHUNK):
        acc[n] = zero
    for s in range(n_samples):
        a0 = inputs[s, i]
        a1 = inputs[s, j]
        d = dvalues[s, n0:n0 + WEIGHTS_CHUNK]
        for n in range(WEIGHTS_CHUNK):
            acc[n] = acc[n] + a0 * d[n]
            acc[WEIGHTS_CHUNK + n] = acc[WEIGHTS_CHUNK + n] + a1 * d[n]
    g = dweights[j, n0:n0 + WEIGHTS_CHUNK]
    for n in range(first, WEIGHTS_CHUNK):
        g[n] = acc[WEIGHTS_CHUNK + n]
    g = dweights[i, n0:n0 + WEIGHTS_CHUNK]
    for n in range(first, WEIGHTS_CHUNK):
        g[n] = acc[n]


@body
def weights_rows_few(inputs, dvalues, dweights, i0, i1, n_samples, c0, c1):
    """Rows ``i0 .. i1 - 1``, columns ``c0 .. c1 - 1`` of ``dweights = inputs[:n_samples].T @
    dvalues[:n_samples]``, two rows at a time, each value the sum over the samples from zero
    in sample order: the sums of the loops. Chunks of WEIGHTS_CHUNK columns; the last chunk
    ends at column ``c1 - 1`` and stores only the columns the chunks before it did not (it may
    start before ``c0``, reading columns it does not store). Rows of fewer than WEIGHTS_CHUNK
    columns in all, or fewer than 16 asked for: row by row, 4 samples a pass (left to right,
    the same sums)."""
    i = i0
    while i < i1:
        j = min(i + 1, i1 - 1)
        # (a last chunk may read columns before c0 and store only its own: a narrow layer's
        # last band of 16-63 inputs runs in registers too; fewer take the passes below)
        if c1 >= WEIGHTS_CHUNK and c1 - c0 >= 16:
            n0 = c0
            while n0 + WEIGHTS_CHUNK <= c1:
                rows_chunk(inputs, dvalues, dweights, i, j, n_samples, n0, 0)
                n0 += WEIGHTS_CHUNK
            if n0 < c1:
                last = c1 - WEIGHTS_CHUNK
                rows_chunk(inputs, dvalues, dweights, i, j, n_samples, last, n0 - last)
        else:
            for r in range(i, j + 1):
                g = dweights[r, c0:c1]
                for n in range(c1 - c0):
                    g[n] = 0
                s = 0
                while s + 4 <= n_samples:
                    d0 = dvalues[s, c0:c1]
                    d1 = dvalues[s + 1, c0:c1]
                    d2 = dvalues[s + 2, c0:c1]
                    d3 = dvalues[s + 3, c0:c1]
                    a0 = inputs[s, r]; a1 = inputs[s + 1, r]  # noqa: E702
                    a2 = inputs[s + 2, r]; a3 = inputs[s + 3, r]  # noqa: E702
                    for n in range(c1 - c0):
                        g[n] = g[n] + a0 * d0[n] + a1 * d1[n] + a2 * d2[n] + a3 * d3[n]
                    s += 4
                for s in range(s, n_samples):  # the last 0-3 samples
                    a = inputs[s, r]
                    d = dvalues[s, c0:c1]
                    for n in range(c1 - c0):
                        g[n] += a * d[n]
        i = j + 1


def dense_backward_weights_few_inputs(inputs, dvalues, dweights):
    """``dense_backward_weights_blocked`` for a layer of 1 or 2 inputs (the FEW_INPUTS form):
    its rows as that kernel runs them (``weights_rows_few``), so the same bits, without
    compiling the 4-row body they never run. One ``prange`` iteration owns a pair of rows
    (the plan runs this kernel serially: a layer of 1-2 inputs has one pair)."""
    n_inputs = inputs.shape[1]
    for pair in prange((n_inputs + 1) // 2):
        weights_rows_few(inputs, dvalues, dweights, 2 * pair, min(2 * pair + 2, n_inputs),
                         inputs.shape[0], 0, dvalues.shape[1])


# --- Narrow layers: the backward products with vectors along the inputs ------------------------
# With few neurons (the spiral model's last layer has 3) the loops' inner loops run over the
# neurons, 3 steps: too short to vectorize (300x64x3 with the loops: dweights ~10 us, dinputs
# ~17 us, against 2.3 and 5.7 for numpy). These kernels add the very same products in the very
# same order as the loops (so their bits), with the inner loop over the inputs instead: one
# vector for 16 inputs.

def dense_backward_weights_narrow(inputs, dvalues, dweights_t, dweights):
    """``dweights = inputs.T @ dvalues`` summed into ``dweights_t`` (its transpose, scratch)
    over the samples ``s = 0, 1, ...``, as ``dense_backward_weights_loops`` does, then copied
    into ``dweights``. ``dweights_t = dvalues.T @ inputs`` is the product of 1-15 rows (the
    neurons) that ``weights_rows_few`` sums in registers, vectors along the inputs, two
    neurons at a time: the loops' sums, the same bits (each term ``dvalues[s, n] *
    inputs[s, i]``, the same product). One ``prange`` iteration owns a band of NARROW_BAND
    inputs. (Summed into ``dweights_t`` 4 samples a pass for all the neurons, loaded and
    stored again each pass: 200x64x1 2.1 us, now 1.0, numpy 1.3. A layer of fewer than 64
    inputs, or a last band of fewer than 16, now runs its neurons one by one, 4 samples a
    pass: 300x32x3 2.8 -> 3.3 us.)"""
    n_samples, n_inputs = inputs.shape
    n_neurons = dvalues.shape[1]
    for band in prange((n_inputs + NARROW_BAND - 1) // NARROW_BAND):
        i0 = band * NARROW_BAND
        i1 = min(i0 + NARROW_BAND, n_inputs)
        weights_rows_few(dvalues, inputs, dweights_t, 0, n_neurons, n_samples, i0, i1)
        for i in range(i0, i1):
            for n in range(n_neurons):
                dweights[i, n] = dweights_t[n, i]


# Inputs per band of dense_backward_weights_narrow: 4 vectors of float32, 256 bytes per row of
# dweights_t, which stay in the L1 cache for every neuron.
NARROW_BAND = 64


def dense_backward_inputs_narrow(dvalues, weights_t, dinputs):
    """``dinputs = dvalues @ weights.T`` from ``weights_t`` = ``weights.T``: the bits of
    ``dense_backward_inputs_loops``. One ``prange`` iteration owns ROW_BLOCK sample rows."""
    n_samples = dvalues.shape[0]
    for block in prange((n_samples + ROW_BLOCK - 1) // ROW_BLOCK):
        s0 = block * ROW_BLOCK
        dinputs_rows_narrow(dvalues, weights_t, dinputs, s0, min(n_samples, s0 + ROW_BLOCK))


@body
def dinputs_rows_narrow(dvalues, weights_t, dinputs, s0, s1):
    """Rows ``s0 .. s1 - 1`` of ``dinputs = dvalues @ weights.T``: ``dinputs[s, i] = sum_n
    dvalues[s, n] * weights_t[n, i]``, each element adding its terms for ``n = 0, 1, ...``
    (``dinputs_row``'s order, so its bits), but the inner loop runs over ``i`` along
    ``weights_t[n]``, so the row is updated as a vector. (Whole arrays and indices, not row
    views: a view per sample cost a third of the time at 300x64x3. A block of rows per call,
    as ``rows_few_inputs``: a call per row, ~15 ns, cost as much as a row of one or two
    neurons.)"""
    n_inputs = dinputs.shape[1]
    n_neurons = dvalues.shape[1]
    zero = dinputs.dtype.type(0)
    for s in range(s0, s1):
        # Two neurons per pass over the row, the first pass from zero: each pass is a short
        # loop whose start-up cost matters at these sizes (300x64x3's dinputs: 13 -> 8.5 us),
        # and the terms are still added for n = 0, 1, ..., left to right. (Passes of up to 4
        # neurons ran it in 5.5 us but took 3x as long to compile.)
        d0 = dvalues[s, 0]
        if n_neurons == 1:
            for i in range(n_inputs):
                dinputs[s, i] = zero + d0 * weights_t[0, i]
            continue
        d1 = dvalues[s, 1]
        for i in range(n_inputs):
            dinputs[s, i] = (zero + d0 * weights_t[0, i]) + d1 * weights_t[1, i]
        n = 2
        while n + 2 <= n_neurons:
            d0 = dvalues[s, n]
            d1 = dvalues[s, n + 1]
            for i in range(n_inputs):
                dinputs[s, i] = (dinputs[s, i] + d0 * weights_t[n, i]) + d1 * weights_t[n + 1, i]
            n += 2
        if n < n_neurons:
            d0 = dvalues[s, n]
            for i in range(n_inputs):
                dinputs[s, i] += d0 * weights_t[n, i]

