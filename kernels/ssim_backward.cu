// ssim_backward.cu: the exact gradient of SSIM's mean with respect to x (docs/spec.rst section 4),
// or scikit-image's (section 5), from the forward's partial maps; compiled after pixel.cuh,
// tile.cuh and msssim.cuh (cussim/_kernels.py, SOURCES).
//
// Kernel (T, R and C as in ssim_forward.cu):
//   ssim_backward<T, R, Tail>  the gradient with respect to x: the adjoint
//                        filter F^T of the three partial maps, combined with x
//                        and y (docs/spec.rst section 4), written into grad
//                        (Tail GRAD_WRITE, the default) or added to it
//                        (cussim::GRAD_ADD); GRAD_WRITE_L1 and GRAD_ADD_L1 add
//                        the fused L1 term's l1 sign(x - y); GRAD_MSSSIM adds
//                        MS-SSIM's terms (per-plane weights, the adjoint of the
//                        next scale's 2x2 mean, section 6); GRAD_MASK and
//                        GRAD_NORMALIZED with the first four, a masked mean's
//                        gradient in either mask mode (section 9). Each
//                        tail's code is compiled only into its own
//                        specialisation (GradientTail).
//
// Launch shape: block (16, 16) and grid (tiles_h * tiles_w, rows <= min(planes,
// 65535): cussim._launch.plane_rows), tiles of 16 columns by Tile::kHeight rows
// (64 in float arithmetic, 16 in double) covering the image; blocks loop over
// planes, so any number of planes works.

namespace cussim {

// MS-SSIM's extras of a backward (GRAD_MSSSIM): each plane's weight, and
// the adjoint of the next scale's 2x2 mean of `variant` (coarse: contiguous
// planes of the next scale's gradient; null at the last scale).
template <class C> struct PyramidTerms {
    const double* plane_weights;
    const C* coarse;
    int variant;
};

// N consecutive floats as one shared-memory load (16 or 8 bytes: BackwardTile's wide layout).
template <class C, int N> struct VectorOf;
template <> struct VectorOf<float, 4> { using type = float4; };
template <> struct VectorOf<float, 2> { using type = float2; };

// v[s][q] = at[s] for s < N, in one load (at: aligned to the vector).
template <int N, class C, int Q>
__device__ inline void load_span(const C* at, int q, C (&v)[N][Q]) {
    const typename VectorOf<C, N>::type w = *reinterpret_cast<const typename VectorOf<C, N>::type*>(at);
    v[0][q] = w.x;
    v[1][q] = w.y;
    if constexpr (N == 4) {
        v[2][q] = w.z;
        v[3][q] = w.w;
    }
}

// The smallest odd multiple of v that holds the elements first .. first + v ceil(count / v) - 1 (a thread's
// vector loads) and at least n: a pitch of BackwardTile.
__device__ constexpr int spanned_pitch(int n, int first, int count, int v) {
    const int end = first + (count + v - 1) / v * v, at_least = n > end ? n : end;
    return (at_least + v - 1) / (2 * v) * (2 * v) + v;
}

// The backward's tile (Tile): the partial maps' halo, three maps loaded and
// filtered, and the table of shift moves of the forward tiles its halo reads.
// Wide (BackwardWide): the horizontal pass reads a halo row kHaloSpan columns at once (16-byte loads;
// 8-byte where 16 would pass the 48 KiB of static shared memory, float at R = 7), so the halo's pitch is an
// odd multiple of kHaloSpan past the last column a thread reads (the rows of a warp's vector loads fall
// in distinct bank groups, as with Tile's odd pitch and scalar loads); the filtered rows lie column by
// column (ColumnRows), read kColumnSpan = kRows rows at once by the vertical pass, their pitch an odd
// multiple of that (a half-warp's 16 columns in distinct bank groups); float only (VectorOf). Otherwise
// Tile's layout: scalar loads, FilteredRows. WideRows (BackwardWide's rows): the filtered rows' layout apart
// (false: FilteredRows with Wide's halo).
template <class C, int R, bool Wide, bool WideRows = Wide> struct BackwardTile : Tile<C, R> {
    using Base = Tile<C, R>;
    // forward tiles whose shifts the halo can need (see backward_planes)
    static constexpr int kMoveRows = 4, kMoveCols = 4;
    static constexpr int kColumnSpan = WideRows ? Base::kRows : 1;
    static constexpr int kColumnPitch =
        spanned_pitch(Base::kHaloRows, Base::kHeight - Base::kRows, Base::kRows + 2 * R, kColumnSpan);
    static constexpr int kWidePitch =
        spanned_pitch(Base::kHaloCols, kTile - Base::kHorizontalCols, 2 * R + Base::kHorizontalCols, 4);
    // static shared memory with 16-byte halo loads, bounded above (the small tables: 2 KiB at most)
    static constexpr int kWideBytes = 3 * (Base::kHaloRows * kWidePitch + kTile * kColumnPitch) * (int)sizeof(C) + 2048;
    static constexpr int kHaloSpan = !Wide ? 1 : sizeof(C) == 4 && kWideBytes <= 48 * 1024 ? 4 : 2;
    static constexpr int kHaloPitch =
        Wide ? spanned_pitch(Base::kHaloCols, kTile - Base::kHorizontalCols, 2 * R + Base::kHorizontalCols, kHaloSpan)
             : Base::kPitch;
    // either layout's static shared memory, bounded above (the wide one's is the smaller at R = 7)
    static constexpr int kSharedBytes = TileSharedBytes<C, R, 3, 3>::value;
};

// The horizontally filtered rows of Q quantities column by column (BackwardTile): store(r, c, v) the Q
// values of halo row r, column c; load(r, c, v) those of rows r .. r + Span - 1 (v[s]) in one load each.
template <class C, int Q, int Pitch, int Span> struct ColumnRows {
    C planes[Q][kTile][Pitch];

    __device__ void store(int r, int c, const C (&v)[Q]) {
#pragma unroll
        for (int q = 0; q < Q; ++q) planes[q][c][r] = v[q];
    }
    __device__ void load(int r, int c, C (&v)[Span][Q]) const {
#pragma unroll
        for (int q = 0; q < Q; ++q) load_span<Span>(&planes[q][c][r], q, v);
    }
    // element (r, c)'s offset in a plane, and load(r, c, v) of the element at that offset
    __device__ static constexpr int offset(int r, int c) { return c * Pitch + r; }
    __device__ void load_at(int at, C (&v)[Span][Q]) const {
#pragma unroll
        for (int q = 0; q < Q; ++q) load_span<Span>(&planes[q][0][0] + at, q, v);
    }
};

// The filtered rows (ColumnRows or TabledFilteredRows) as one thread of the vertical pass reads them, its
// first element (first_row, col) at offset `at` of a plane, read from a table in shared memory each plane
// (the address worked out from the thread index was made again each plane, ~14 instructions, under the
// 64-register cap): element (first_row + i, col), i constant in the pass's unrolled code, is at + offset(i, 0).
template <class Rows> struct TabledRows {
    Rows& rows;
    int first_row, col, at;

    __device__ int to(int r, int c) const { return at + (Rows::offset(r, c) - Rows::offset(first_row, col)); }
    template <class V> __device__ void load(int r, int c, V& v) const { rows.load_at(to(r, c), v); }
};

// FilteredRows (Tile's layout) as TabledRows reads them.
template <class C, int R, int Q> struct TabledFilteredRows : FilteredRows<C, R, Q> {
    __device__ static constexpr int offset(int r, int c) { return r * Tile<C, R>::kRowsPitch + c; }
    __device__ void load_at(int at, C (&v)[Q]) const {
#pragma unroll
        for (int q = 0; q < Q; ++q) v[q] = (&this->planes[q][0][0])[at];
    }
};

// The backward's blocks per SM (TileMinBlocks); MS-SSIM's backward (GRAD_MSSSIM) at most 3 blocks, 80
// registers: its per-pixel pyramid terms spilled a few bytes at 64 on sm_100; so do the masked tails that
// read the mask (4 to 36 bytes at 64 on sm_90).
template <class T, bool MsSsim = false> struct BackwardMinBlocks {
    static constexpr int value =
        TileMinBlocks<T, BackwardTile<typename ComputeType<T>::type, 7, false>::kSharedBytes, MsSsim ? 3 : 4>::value;
};

// What a backward's last step does (a template argument of ssim_backward, so
// that each version's code is compiled only where a call asks for it): write
// the gradient or add it to grad's values (bit 1), with the fused L1 term
// l1 sign(x - y) or without (bit 2); or, GRAD_MSSSIM, with MS-SSIM's terms
// (per-plane weights, the adjoint of the next scale's 2x2 mean), written or
// added as the `accumulate` argument says (the others ignore it and those terms).
// GRAD_MASK (8, added to the first four): a masked mean's gradient (docs/spec.rst section 9,
// mask_mode="mean"): the partial maps come weighted by b m (FORWARD_MASK), each plane's gradient is scaled
// by 1 / its result's total weight (the plane_weights argument: WeightedSums' plane scales), and the L1
// term is weighted by the mask, m l1 sign(x - y). GRAD_NORMALIZED (16, with GRAD_MASK): normalised
// convolution's gradient (the partial maps come divided by W, FORWARD_NORMALIZED), all of it times m
// (0 where m is 0), and the forward tiles' shifts 0 where their pixel weighs 0, as the forward's.
enum GradientTail {
    GRAD_WRITE = 0,
    GRAD_ADD = 1,
    GRAD_WRITE_L1 = 2,
    GRAD_ADD_L1 = 3,
    GRAD_MSSSIM = 4,
    GRAD_MASK = 8,
    GRAD_WRITE_MASK = 8,
    GRAD_ADD_MASK = 9,
    GRAD_WRITE_L1_MASK = 10,
    GRAD_ADD_L1_MASK = 11,
    GRAD_NORMALIZED = 16,  // with GRAD_MASK
    GRAD_WRITE_NORMALIZED = 24,
    GRAD_ADD_NORMALIZED = 25,
    GRAD_WRITE_L1_NORMALIZED = 26,
    GRAD_ADD_L1_NORMALIZED = 27
};

// Whether a tail reads the mask: the masked L1 term's weights, normalized mode's m.
__device__ constexpr bool tail_reads_mask(int tail) {
    return tail != GRAD_MSSSIM && (tail & GRAD_MASK) && (tail & (GRAD_WRITE_L1 | GRAD_NORMALIZED));
}

// Whether a backward takes BackwardTile's wide layout (vector loads in both passes): float's plain gradient
// (GRAD_WRITE); not the others, whose tails, MS-SSIM's terms and the narrower types' conversions leave no
// registers for the loaded vectors (4 to 64 bytes of spill on sm_90 under 64 registers with them).
// halo: the halo's vector loads alone (the filtered rows in Tile's layout), float's masked gradients
// (GRAD_WRITE_MASK, GRAD_WRITE_NORMALIZED) but on sm_100 to sm_103 (12 to 28 bytes of spill at R = 5, 7 under
// 64 registers there).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000 && __CUDA_ARCH__ < 1200
constexpr bool kWideMaskedHalo = false;
#else
constexpr bool kWideMaskedHalo = true;
#endif
template <class T, int Tail> struct BackwardWide {
    static constexpr bool value = false, halo = false;
    template <class C, int R> using Rows = TabledFilteredRows<C, R, 3>;
};
template <> struct BackwardWide<float, GRAD_WRITE_MASK> {
    static constexpr bool value = false, halo = kWideMaskedHalo;
    template <class C, int R> using Rows = TabledFilteredRows<C, R, 3>;
};
template <> struct BackwardWide<float, GRAD_WRITE_NORMALIZED> {
    static constexpr bool value = false, halo = kWideMaskedHalo;
    template <class C, int R> using Rows = TabledFilteredRows<C, R, 3>;
};
template <> struct BackwardWide<float, GRAD_WRITE> {
    static constexpr bool value = true, halo = true;
    template <class C, int R>
    using Rows = ColumnRows<C, 3, BackwardTile<C, R, true>::kColumnPitch, BackwardTile<C, R, true>::kColumnSpan>;
};

// A mask's plane addressing (element strides; stride 0 broadcasts), for the masked tails that read it: the
// L1 term's weights, normalized mode's m.
template <class C> struct MaskPlanes {
    const C* mask;
    long long outer, inner, row, col;
};

// A forward tile's moves (the backward's move table): twice this tile's shift of x minus that tile's (x), and
// the same of x - y (d), side by side so that a halo pixel reads both in one shared load, not two.
template <class C> struct alignas(2 * sizeof(C)) Move {
    C x, d;
};

// A halo row of a border tile (one 16-byte shared load per row in the tile load's loop, not the row's
// element offset and its forward tile row made again from the map row each iteration): the element offset of
// its map row in a plane, in bytes (map_row * map_w * sizeof(C), so that the address is two additions with the
// column's bytes, not a 64-bit scaling each iteration; -1, a row of zeros, where the halo row leaves the map and is not
// reflected into it), and the row of the move table (BackwardTile's kMoveRows) of the forward tiles that hold it.
// map_row: the map row itself (-1 for zeros), for the loop's form on sm_100 to sm_103 (kHaloRowOffsets).
struct __align__(16) HaloRow {
    long long at;
    int move_row, map_row;
};

// Whether the border tiles' loop takes a halo row's offsets from HaloRow (at, move_row), or makes them from its
// map row each iteration, as before: on sm_100 to sm_103, where the offsets spilled 4 to 48 bytes under 64
// registers in 71 of the 455 specialisations (float, __half, uint8, uint16; R = 2 to 7).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000 && __CUDA_ARCH__ < 1200
constexpr bool kHaloRowOffsets = false;
#else
constexpr bool kHaloRowOffsets = true;
#endif

// halo_source (pixel.cuh) with "reflect"'s half-sample symmetric index (dcba abcd dcba) found by reflecting at
// the nearer edge until the index lies in [0, n), not by a remainder: a halo position lies at most
// kHeight - 1 + R rows or 15 + R columns past the side (the last tile's rows and columns past the image, and
// R), R before it, so one reflection for a side longer than that, a few for a smaller one; each leaves
// reflect_index's value as it was (its pattern is symmetric about -1/2 and repeats every 2n), so the result is
// reflect_index's. The remainder's 32-bit division (~30 instructions) was on every warp's path of the prologue.
__device__ inline int halo_source_reflected(int i, int n, int padding) {
    if (padding != PAD_REFLECT) return i >= 0 && i < n ? i : -1;
    while (i < 0 || i >= n) i = i < 0 ? -1 - i : 2 * n - 1 - i;
    return i;
}

// The body of ssim_backward<T, R, Tail>. Block (16, 16); grid (tiles of 16 columns and
// Tile<C, R>::kHeight rows covering the image, rows <= min(planes, 65535)).
template <class T, int R, int Tail>
__device__ inline void backward_planes(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_row, long long y_col,
    const typename ComputeType<T>::type* __restrict__ grad_maps, typename GradientType<T>::type* __restrict__ grad,
    long long g_outer, long long g_inner, long long g_row, long long g_col, long long planes, long long inner_count,
    int height, int width, int padding, const typename ComputeType<T>::type* __restrict__ taps,
    typename ComputeType<T>::type inv_range, PyramidTerms<typename ComputeType<T>::type> pyramid,
    typename ComputeType<T>::type l1, int accumulate, MaskPlanes<typename ComputeType<T>::type> mask_planes) {
    using C = typename ComputeType<T>::type;
    using Shape = BackwardTile<C, R, BackwardWide<T, Tail>::halo, BackwardWide<T, Tail>::value>;
    constexpr bool MsSsim = Tail == GRAD_MSSSIM;
    constexpr bool kMasked = !MsSsim && (Tail & GRAD_MASK) != 0;
    constexpr bool kMaskedL1 = kMasked && (Tail & GRAD_WRITE_L1) != 0;
    constexpr bool kNormalized = kMasked && (Tail & GRAD_NORMALIZED) != 0;
    constexpr bool kReadsMask = tail_reads_mask(Tail);
    // packed sweeps (horizontal_pass), but in MS-SSIM's backward, at R = 7 and in uint8's L1 tails (with
    // them, 4 to 8 bytes of spill: float's at R = 7 on sm_80 under 80 registers, uint8's at R = 2, 3 on sm_90)
    constexpr bool kPack = !MsSsim && R < 7 && !(sizeof(T) == 1 && (Tail & GRAD_WRITE_L1));
    static_assert(kReadsMask == (kMaskedL1 || kNormalized), "the tails that read the mask");
    constexpr int kRows = Shape::kRows, kHeight = Shape::kHeight;
    constexpr int kHaloRows = Shape::kHaloRows, kHaloCols = Shape::kHaloCols;
    constexpr int kWarps = kTile * kTile / 32;
    static_assert(R <= 8, "the move table covers halos of R <= 8");
    constexpr int kLog2 = Shape::kHeightLog2;
    __shared__ __align__(16) C tile[3][kHaloRows][Shape::kHaloPitch];  // g*Pmu (moved), g*Pxx, g*Pdd around the tile
    __shared__ __align__(16) typename BackwardWide<T, Tail>::template Rows<C, R> rows;
    // moves[0 or 1][i][j]: twice this tile's shift of x (of x - y) minus that of
    // forward tile (base_row + i, base_col + j), forward tiles being kHeight rows by
    // 16 columns (Tile). The halo reads map rows of the forward tiles from
    // top / kHeight to (top + kHaloRows - 1) / kHeight and, reflected past the
    // map's end, rows down to top + 2 - kHeight (the tile lies at or above the
    // map's last row): from (top - kHeight) / kHeight on, at most 4 tiles for
    // 2R <= kHeight; columns likewise (16 + 2R halo columns), 4 tiles.
    __shared__ Move<C> moves[Shape::kMoveRows][Shape::kMoveCols];
    // the shifts (of x, of y) of those forward tiles, then this tile's own, the same for all its windows
    __shared__ C shifts[2][Shape::kMoveRows * Shape::kMoveCols + 1];
    __shared__ C weights[2 * R + 1];

    const TileGeometry g = tile_geometry<R, kHeight>(padding, height, width, false);
    const long long maps_size = planes * g.map_pixels;
    const int tid = threadIdx.y * kTile + threadIdx.x, warp = tid >> 5, lane = tid & 31;
    // The window is symmetric, so the adjoint's flipped taps are the taps.
    if (tid < 2 * R + 1) weights[tid] = taps[tid];
    const int top = g.row - R - g.offset, left = g.col - R - g.offset;  // the halo, in map pixels
    const C twice_inv_range = C(2) * inv_range;
    const int base_row = max((top - kHeight) >> kLog2, 0), base_col = max((left - kTile) >> 4, 0);
    const bool inside = top >= 0 && left >= 0 && top + kHaloRows <= g.map_h && left + kHaloCols <= g.map_w &&
                        g.map_pixels <= 0x7fffffffLL;
    // this thread's output pixels: column out_col, rows first_row .. first_row + kRows - 1 of the tile
    const int out_col = lane & 15, first_row = Shape::first_row(warp, lane);
    // how many of them lie in the image (one number, not kRows tests kept across the plane loop)
    const int rows_here = g.col + out_col < width ? min(kRows, height - (g.row + first_row)) : 0;
    // Thread t < 2 (kEntries + 1) reads one shift each plane: of x (of y, t > kEntries) at forward tile
    // e = t % (kEntries + 1), or, e = kEntries, this tile's own at its centre; shift_offset is that
    // pixel's element offset in its plane (Tile::shift_row, shift_col).
    constexpr int kEntries = Shape::kMoveRows * Shape::kMoveCols;
    long long shift_offset = 0, mask_shift_offset = 0;  // normalized: that pixel's in the mask
    {
        const int e = tid % (kEntries + 1);
        const bool own = e == kEntries;
        const int row = Shape::shift_row(own ? g.row : (base_row + e / Shape::kMoveCols) * kHeight + g.offset, height);
        const int col = Shape::shift_col(own ? g.col : (base_col + e % Shape::kMoveCols) * kTile + g.offset, width);
        const long long r = unsigned_index(row), c = unsigned_index(col);
        shift_offset = tid > kEntries ? r * y_row + c * y_col : r * x_row + c * x_col;
        if (kNormalized) mask_shift_offset = r * mask_planes.row + c * mask_planes.col;
    }
    // This thread's halo column in the tile load (lane < kHaloCols): its map column, whether it holds
    // one (or reflects to one), and the column of the forward tile that holds it, there; and the map
    // row of each halo row, or -1 for a row of zeros (for tiles whose halo leaves the map).
    // (F is symmetric with reflection: F^T reflects too.)
    const int map_col = halo_source_reflected(left + lane, g.map_w, padding);
    const bool col_inside = map_col >= 0;
    const int j = (map_col >> 4) - base_col;
    // The border tiles' halo rows (HaloRow): worked out once per block by the threads t < kHaloRows.
    __shared__ HaloRow halo_rows[kHaloRows];
    // each thread's first element of the vertical pass in the filtered rows (TabledRows); not in MS-SSIM's
    // backward (its tables would pass TileSharedBytes' 2 KiB), nor in normalized mode (+0.8 per pixel at
    // R = 5), nor where it spilled 4 to 12 bytes (GRAD_ADD_L1: uint8's at R = 4 on sm_90; float's GRAD_WRITE at
    // R = 6 on sm_90 and sm_100)
    constexpr bool kTabled = !MsSsim && !kNormalized && Tail != GRAD_ADD_L1 && R != 6;
    __shared__ int rows_at[kTabled ? kTile * kTile : 1];
    if constexpr (kTabled) rows_at[tid] = decltype(rows)::offset(first_row, out_col);
    if (tid < kHaloRows) {
        const int map_row = halo_source_reflected(top + tid, g.map_h, padding);
        halo_rows[tid] = {map_row >= 0 ? (long long)map_row * g.map_w * (long long)sizeof(C) : -1LL,
                          (map_row >> kLog2) - base_row, map_row};
    }
    // MS-SSIM's 2x2 mean: where the tile's rows and columns go in the next scale, in shared memory
    // and read per pixel (kept in registers across the plane loop, they spilled)
    __shared__ long long pooled_rows[MsSsim ? kHeight : 1];  // pooled_code of each row
    __shared__ int pooled_cols[MsSsim ? kTile : 1];          // and of each column
    long long coarse_size = 0;
    if (MsSsim) {
        const int coarse_w = pooled_size(width, pyramid.variant);
        if (tid < kHeight)
            pooled_rows[tid] = pooled_code(pooled_target(g.row + tid, height, pyramid.variant), coarse_w);
        if (tid < kTile) pooled_cols[tid] = (int)pooled_code(pooled_target(g.col + tid, width, pyramid.variant), 1);
        coarse_size = (long long)pooled_size(height, pyramid.variant) * coarse_w;
    }

    // The plane index and the plane's element offsets in x, y, grad, the mask and the partial maps wait in
    // shared memory: thread 0 works them out (the 64-bit divisions and products in one warp, not in eight)
    // and advances them once every thread has read them (after the shifts' barrier).
    __shared__ PlaneIndex plane;
    __shared__ long long plane_at[5];  // x, y, grad, mask, the partial maps
    const auto locate = [&](long long p) {
        plane_at[4] = p * g.map_pixels;
        plane_at[0] = plane.outer * x_outer + plane.inner * x_inner;
        plane_at[1] = plane.outer * y_outer + plane.inner * y_inner;
        plane_at[2] = plane.outer * g_outer + plane.inner * g_inner;
        if (kReadsMask) plane_at[3] = plane.outer * mask_planes.outer + plane.inner * mask_planes.inner;
    };
    // the fast tile load's step between a warp's halo rows, kWarps map rows, one shared load per plane (made
    // again from width and padding each plane: 3 instructions); in normalized mode only (222.9, not 223.7 per
    // pixel at R = 5): the others' loads then had their addresses made one by one (203.6 -> 219.8)
    constexpr bool kSharedStep = kNormalized;
    __shared__ int halo_step;
    if (tid == 0) {
        if (kSharedStep) halo_step = kWarps * g.map_w;
        plane.start(inner_count);
        locate(blockIdx.y);
    }
    __syncthreads();
    // The three partial maps' planes of this plane, from thread 0 too (before the shifts' barrier; read by the
    // tile load, after the moves' barrier, so that thread 0's advance past that barrier does not touch them),
    // not made again from planes * map_pixels by every thread; in the fast tile load but where it spilled 4 to 12
    // bytes (on sm_90 float's GRAD_ADD_MASK at R = 5, 6, the GRAD_ADD_L1 tails of float, uint8 and uint16 at
    // R = 3, 4; float's GRAD_WRITE at R = 6 on sm_100), which read the maps' plane offset from plane_at there as
    // before.
    __shared__ __align__(16) const C* map_planes[3];
    constexpr bool kSharedMaps = Tail != GRAD_ADD_L1 && Tail != GRAD_ADD_MASK && R != 6;
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const long long x_at = plane_at[0], y_at = plane_at[1], g_at = plane_at[2];
        const long long k_at = kReadsMask ? plane_at[3] : 0;
        const T* xp = x + x_at;
        const T* yp = y + y_at;
        const C* maps = grad_maps + plane_at[4];
        if (tid == 0)
            for (int q = 0; q < 3; ++q) map_planes[q] = grad_maps + plane_at[4] + q * maps_size;
        const C* coarse_plane = MsSsim ? pyramid.coarse + p * coarse_size : nullptr;
        // The partial maps are those of moments shifted by the forward tile's
        // kx and kd = kx - ky (ssim_pixel); with this tile's own shifts (bx, bd),
        // the same for every window here,
        // dL/dx = F^T(P0 + 2 (bx - kx) P1 + 2 (bd - kd) P2) + 2 (x - bx) F^T(P1)
        // + 2 (x - y - bd) F^T(P2): no term is larger than the gradient where the
        // image is bright and flat.
        if (tid < 2 * (kEntries + 1)) {
            C shift = tile_shift(tid > kEntries ? yp : xp, shift_offset, inv_range);
            if (kNormalized && !(mask_planes.mask[k_at + mask_shift_offset] > C(0)))
                shift = C(0);
            shifts[tid > kEntries][tid % (kEntries + 1)] = shift;
        }
        __syncthreads();
        if (tid == 0) {  // every thread has read them: the next plane's
            plane.advance(inner_count);
            locate(p + gridDim.y);
        }
        // this tile's shifts, doubled (exactly): the gradient is P0 + 2 x' P1 + 2 d' P2 (ssim_pixel)
        const C own_x = C(2) * shifts[0][kEntries], own_d = own_x - C(2) * shifts[1][kEntries];
        if (tid < kEntries) {
            const int i = tid / Shape::kMoveCols, j = tid % Shape::kMoveCols;
            moves[i][j] = {own_x - C(2) * shifts[0][tid], own_d - C(2) * (shifts[0][tid] - shifts[1][tid])};
        }
        __syncthreads();
        if (lane < kHaloCols) {  // warp w loads halo rows w, w + 8, ..., lane = column
            if (inside) {
                // The fast path (most tiles): the halo inside the map, no bounds test.
                // The three maps' pixels at one 32-bit offset in the plane (the map's pixels fit an int:
                // `inside`), so that each address is one instruction from its map's plane.
                const C* const map[3] = {kSharedMaps ? map_planes[0] : maps,
                                         kSharedMaps ? map_planes[1] : maps + maps_size,
                                         kSharedMaps ? map_planes[2] : maps + 2 * maps_size};
                const int at = (top + warp) * g.map_w + left + lane, step = kSharedStep ? halo_step : kWarps * g.map_w;
                // Halo rows 2R .. kHeight + R - 1 lie in this tile's own forward tile row (its first row is
                // a multiple of kHeight, the halo starts R + offset <= 2R above it): the walk's k-th rows
                // that all fall there take its moves from registers, the others from the table. Not in
                // MS-SSIM's backward: the two registers made it spill 4 bytes on sm_90 (80 registers).
                const int own = (g.row >> kLog2) - base_row;
                const Move<C> own_move = moves[own][j];
                warp_halo_rows<kHaloRows>(warp, [&](int k) {
                    const int r = warp + kWarps * k, a = at + k * step;
                    const C value[3] = {__ldg(map[0] + a), __ldg(map[1] + a), __ldg(map[2] + a)};
                    if (!MsSsim && kWarps * k >= 2 * R && kWarps * (k + 1) <= kHeight + R) {
                        tile[0][r][lane] = moved_partial(value, own_move.x, own_move.d);
                    } else {
                        const int i = ((top + r) >> kLog2) - base_row;
                        const Move<C> move = moves[i][j];
                        tile[0][r][lane] = moved_partial(value, move.x, move.d);
                    }
                    tile[1][r][lane] = value[1];
                    tile[2][r][lane] = value[2];
                });
            } else {
                // the maps' planes read once before the loop, not in each iteration (with the shared window's
                // base made again there: 6 instructions an iteration); not in GRAD_ADD_L1, where float's at
                // R = 5, 6 spilled 4 bytes on sm_90 with them
                constexpr bool kHoistPlanes = Tail != GRAD_ADD_L1;
                const char* const planes_at[3] = {reinterpret_cast<const char*>(map_planes[0]),
                                                  reinterpret_cast<const char*>(map_planes[1]),
                                                  reinterpret_cast<const char*>(map_planes[2])};
#pragma unroll 1
                for (int r = warp; r < kHaloRows; r += kWarps) {
                    C value[3] = {C(0), C(0), C(0)};
                    if constexpr (kHaloRowOffsets) {
                        const HaloRow row = halo_rows[r];
                        if (col_inside && row.at >= 0) {
                            const long long at = row.at + unsigned_index(map_col) * (long long)sizeof(C);  // bytes
                            for (int q = 0; q < 3; ++q)
                                value[q] = __ldg(reinterpret_cast<const C*>(
                                    (kHoistPlanes ? planes_at[q] : reinterpret_cast<const char*>(map_planes[q])) + at));
                            const Move<C> move = moves[row.move_row][j];
                            value[0] = moved_partial(value, move.x, move.d);
                        }
                    } else {
                        const int map_row = halo_rows[r].map_row;
                        if (col_inside && map_row >= 0) {
                            const long long at = (long long)map_row * g.map_w + map_col;  // elements
                            for (int q = 0; q < 3; ++q)
                                value[q] = __ldg(reinterpret_cast<const C*>(
                                    kHoistPlanes ? planes_at[q] : reinterpret_cast<const char*>(map_planes[q])) + at);
                            const Move<C> move = moves[(map_row >> kLog2) - base_row][j];
                            value[0] = moved_partial(value, move.x, move.d);
                        }
                    }
                    for (int q = 0; q < 3; ++q) tile[q][r][lane] = value[q];
                }
            }
        }
        __syncthreads();
        // packed sweeps where kPack (10 warp iterations at R = 5, not 12); the warp as warp & 7, known to lie in
        // [0, 8), so that the pass's warp / 4 and warp % 4 are a shift and a mask without a sign's fix-ups (not in
        // normalized mode, whose count it raised: 223.7 -> 224.9 per pixel at R = 5, nor in GRAD_ADD_L1: float's
        // at R = 4 spilled 4 bytes on sm_90)
        const int pass_warp = kNormalized || Tail == GRAD_ADD_L1 ? warp : warp & 7;
        if constexpr (Shape::kHaloSpan > 1) {
            horizontal_pass<C, R, 3, kPack, Shape::kHaloSpan>(
                rows, weights, pass_warp, lane, [&](int r, int c, C (&v)[Shape::kHaloSpan][3]) {
                    for (int q = 0; q < 3; ++q) load_span<Shape::kHaloSpan>(&tile[q][r][c], q, v);
                });
        } else {
            horizontal_pass<C, R, 3, kPack>(rows, weights, pass_warp, lane, [&](int r, int c, C (&v)[3]) {
                for (int q = 0; q < 3; ++q) v[q] = tile[q][r][c];
            });
        }
        __syncthreads();
        // Vertical pass: each row's gradient is finished as soon as its last tap is in.
        const long long row = unsigned_index(g.row + first_row), col = unsigned_index(g.col + out_col);
        const T* xq = xp + row * x_row + col * x_col;
        const T* yq = yp + row * y_row + col * y_col;
        typename GradientType<T>::type* gq = grad + g_at + row * g_row + col * g_col;
        // masked: the plane's 1 / total weight folded into the per-plane constants (no per-pixel product)
        const C plane_scale = kMasked ? (C)pyramid.plane_weights[p] : C(1);
        const C scaled_range = kMasked ? inv_range * plane_scale : inv_range;
        const C scaled_l1 = kMasked ? l1 * plane_scale : l1;
        const C* kq = kReadsMask ? mask_planes.mask + k_at +
                                      row * mask_planes.row + col * mask_planes.col
                                : nullptr;
        const auto finish = [&](int i, const C (&b)[3]) {
            if (i < rows_here) {
                // 2 x' and 2 d' at this tile's shifts (x - y before the scaling: exact where x and y are close)
                const C xv = (C)element_value(*xq), yv = (C)element_value(*yq);
                const C twice_x = xv * twice_inv_range - own_x, twice_d = (xv - yv) * twice_inv_range - own_d;
                C value = moved_partial(b, twice_x, twice_d) * scaled_range;  // P0 + 2 x' P1 + 2 d' P2
                if (MsSsim) {
                    value *= (C)pyramid.plane_weights[p];
                    if (pyramid.coarse)
                        value += pooled_adjoint(coarse_plane, pooled_rows[first_row + i], pooled_cols[out_col]);
                }
                if (kNormalized) {  // m (the SSIM term's, and the L1 term's weight), 0 where m is 0
                    const C mp = *kq;
                    if (Tail & GRAD_WRITE_L1) value += l1_gradient(xv, yv, scaled_l1);
                    value = mp > C(0) ? mp * value : C(0);
                } else if (Tail & GRAD_WRITE_L1) {
                    value += kMaskedL1 ? *kq * l1_gradient(xv, yv, scaled_l1) : l1_gradient(xv, yv, l1);
                }
                if ((Tail & GRAD_ADD) || (MsSsim && accumulate)) value += (C)element_value(*gq);
                store(gq, value);
            }
            xq += x_row;  // a pointer step per row
            yq += y_row;
            gq += g_row;
            if (kReadsMask) kq += mask_planes.row;
        };
        if constexpr (kTabled) {
            const TabledRows<const decltype(rows)> view{rows, first_row, out_col, rows_at[tid]};
            vertical_rows<C, R, 3, Shape::kColumnSpan>(view, weights, first_row, out_col, finish);
        } else {
            vertical_rows<C, R, 3, Shape::kColumnSpan>(rows, weights, first_row, out_col, finish);
        }
        __syncthreads();  // the next plane overwrites the tiles and the moves
    }
}

}  // namespace cussim

template <class T, int R, int Tail = cussim::GRAD_WRITE>
__global__ void __launch_bounds__(
    256, cussim::BackwardMinBlocks<T, Tail == cussim::GRAD_MSSSIM || cussim::tail_reads_mask(Tail)>::value)
    ssim_backward(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_row, long long y_col,
    const typename cussim::ComputeType<T>::type* __restrict__ grad_maps,
    typename cussim::GradientType<T>::type* __restrict__ grad, long long g_outer, long long g_inner, long long g_row,
    long long g_col, long long planes, long long inner_count, int height, int width, int padding,
    const typename cussim::ComputeType<T>::type* __restrict__ taps, typename cussim::ComputeType<T>::type inv_range,
    typename cussim::ComputeType<T>::type l1, const double* __restrict__ plane_weights,
    const typename cussim::ComputeType<T>::type* __restrict__ coarse, int variant, int accumulate,
    const typename cussim::ComputeType<T>::type* __restrict__ mask, long long k_outer, long long k_inner,
    long long k_row, long long k_col) {
    cussim::backward_planes<T, R, Tail>(x, x_outer, x_inner, x_row, x_col, y, y_outer, y_inner, y_row, y_col,
                                        grad_maps, grad, g_outer, g_inner, g_row, g_col, planes, inner_count, height,
                                        width, padding, taps, inv_range, {plane_weights, coarse, variant}, l1,
                                        accumulate, {mask, k_outer, k_inner, k_row, k_col});
}
