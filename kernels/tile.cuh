// tile.cuh: the tiles of the 2-D kernels and what the 3-D ones reuse of them (after pixel.cuh):
// where a block's tile lies (TileGeometry), its shape and shared memory (Tile), the separable
// filter's passes (horizontal_pass and vertical_rows over a Tile; tap_sums and vertical_pass over
// the 16 x 16 tiles of the 3-D kernels), the blocks per SM that ptxas must fit, the planes a block
// visits (PlaneIndex), and the float64 block sums in a fixed order with the finish that turns them
// into means (block_sum, finish_values, finish_if_last: the last block to arrive finishes; with a
// mask, WeightedSums, weighted_finish_values and weighted_finish_if_last).
//
// Every image array is addressed by element strides (int64): plane
// p = outer * inner_count + inner, then row and column; a stride of 0
// broadcasts (one reference image for a whole batch). Workspace arrays
// (the partial maps, three planes x map blocks; the block sums) are contiguous.
//
// Per block, the halo tile ((kHeight + 2R) x (16 + 2R)) goes to shared
// memory, a horizontal pass filters each tile row, and a vertical pass
// finishes the filter in registers, kHeight / 16 rows per thread. Zero padding
// ("same"), the valid interior ("valid") or half-sample reflection ("reflect")
// decide what the halo holds. The tile is
// stored shifted by its centre pixel (tile_shift), so float32 variances of
// flat, bright regions keep their digits (see ssim_pixel); the partial maps
// are those of the shifted moments, and the backward moves them to its own
// tile's shift, so that the gradient keeps its digits too (see backward_planes).

namespace cussim {

constexpr int kTile = 16;

// Sums `value` over the block's 256 threads in a fixed order (float64): each
// warp's 32 values by a shuffle tree, then thread 0 adds the 8 warp sums in
// order (one barrier). The total is thread 0's return value; `scratch` (8
// doubles) is read by thread 0 alone before its next barrier, so the next
// call may write it after that barrier.
__device__ inline double block_sum(double value, double* scratch, int tid) {
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
    if ((tid & 31) == 0) scratch[tid >> 5] = value;
    __syncthreads();
    double total = 0.0;
    if (tid == 0)
        for (int w = 0; w < kTile * kTile / 32; ++w) total += scratch[w];
    return total;
}

// The sum of n block sums by the block's 256 threads, in an order that depends on n alone: strided
// partial sums, then a fixed tree in `scratch` (256 doubles); the sum is scratch[0] after the call's last
// barrier. The sums are read as volatile: a forward's last block reads what other blocks wrote in the
// same launch.
__device__ inline void ordered_sum(const volatile double* sums, long long n, double* scratch, int tid) {
    double sum = 0.0;
    for (long long j = tid; j < n; j += 256) sum += sums[j];
    scratch[tid] = sum;
    __syncthreads();
    for (int k = 128; k > 0; k >>= 1) {
        if (tid < k) scratch[tid] += scratch[tid + k];
        __syncthreads();
    }
}

// block_sum of two values at once, in the same order as two calls (a masked forward's values and weights,
// WeightedSums): one barrier for both; `scratch` holds 16 doubles. Thread 0's totals come back in `first` and
// `second` (the other threads' hold partial sums).
__device__ inline void block_sum_pair(double& first, double& second, double* scratch, int tid) {
    constexpr int kWarps = kTile * kTile / 32;
    for (int offset = 16; offset > 0; offset >>= 1) {
        first += __shfl_down_sync(0xffffffffu, first, offset);
        second += __shfl_down_sync(0xffffffffu, second, offset);
    }
    if ((tid & 31) == 0) {
        scratch[tid >> 5] = first;
        scratch[kWarps + (tid >> 5)] = second;
    }
    __syncthreads();
    if (tid == 0) {
        first = second = 0.0;
        for (int w = 0; w < kWarps; ++w) {
            first += scratch[w];
            second += scratch[kWarps + w];
        }
    }
}

// Each output value o = first, first + step, ... < outputs from its
// per_output block sums, as a + b * sum / count stored as O, each sum an
// ordered_sum.
template <class O>
__device__ inline void finish_values(const volatile double* block_sums, long long per_output, long long outputs,
                                     double count, double a, double b, O* out, long long out_stride,
                                     double* scratch, long long first, long long step, int tid) {
    for (long long o = first; o < outputs; o += step) {
        ordered_sum(block_sums + o * per_output, per_output, scratch, tid);
        if (tid == 0) out[o * out_stride] = (O)(a + b * (scratch[0] / count));  // N ones: exactly 1
        __syncthreads();
    }
}

// Whether this block arrives last, of `arrivals` (a launch's blocks, or an
// image's blocks and planes): true in all of its threads for the last one to
// add 1 to `counter` (zero between launches: that block resets it). Called by
// all 256 threads of the block, after their last barrier-protected use of
// scratch[0] and after thread 0 has stored what the last block reads; that
// block then reads it (as volatile) after every other block's.
__device__ inline bool last_arrival(unsigned int* counter, unsigned int arrivals, double* scratch, int tid) {
    __syncthreads();
    if (tid == 0) {
        __threadfence();  // this block's stores are visible before the counter says so
        const bool last = atomicAdd(counter, 1u) == arrivals - 1;
        if (last) *counter = 0u;
        scratch[0] = last ? 1.0 : 0.0;
    }
    __syncthreads();
    if (scratch[0] == 0.0) return false;
    __syncthreads();
    __threadfence();
    return true;
}

// The finish folded into a forward: after each block has stored its sums,
// the last block to arrive (a counter in the unsigned int after the `sums`
// block sums) writes the `outputs` values. Called by all 256 threads of
// every block once, after their last barrier-protected use of `scratch`
// (256 doubles).
template <class O>
__device__ inline void finish_if_last(double* block_sums, long long sums, long long outputs, double count, double a,
                                      double b, O* out, long long out_stride, double* scratch, int tid) {
    if (last_arrival(reinterpret_cast<unsigned int*>(block_sums + sums), gridDim.x * gridDim.y, scratch, tid))
        finish_values(block_sums, sums / outputs, outputs, count, a, b, out, out_stride, scratch, 0, 1, tid);
}

// The block sums of a masked forward (FORWARD_MASK; docs/spec.rst section 9) and what its finish writes
// after them, float64: `sums` block sums of the weighted values m S, as many of the weights m (each
// result's contiguous, as the values'), then each result's total weight (planes slots, outputs used), each
// plane's 1 / total (the
// backward's per-plane scale), and last the blocks' counter (an unsigned int, zero between launches).
struct WeightedSums {
    double* base;
    long long sums, outputs, planes;

    __device__ double* totals() const { return base + 2 * sums; }
    __device__ double* plane_scales() const { return totals() + planes; }  // totals: a slot per plane
    __device__ unsigned int* counter() const { return reinterpret_cast<unsigned int*>(plane_scales() + planes); }
};

// Each output o = first, first + step, ... < s.outputs of a masked forward's sums: a + b * sum(m S) / sum(m),
// its total weight (the host checks that none is 0) and its planes' 1 / total, each sum an ordered_sum.
template <class O>
__device__ inline void weighted_finish_values(WeightedSums s, double a, double b, O* out, long long out_stride,
                                              double* scratch, long long first, long long step, int tid) {
    const long long per_output = s.sums / s.outputs, planes_per_output = s.planes / s.outputs;
    for (long long o = first; o < s.outputs; o += step) {
        ordered_sum(s.base + s.sums + o * per_output, per_output, scratch, tid);
        const double total = scratch[0];
        __syncthreads();  // every thread has read it: the next sum overwrites scratch
        ordered_sum(s.base + o * per_output, per_output, scratch, tid);
        if (tid == 0) {
            out[o * out_stride] = (O)(a + b * (scratch[0] / total));  // ones: bitwise the unmasked value
            s.totals()[o] = total;
        }
        for (long long p = tid; p < planes_per_output; p += 256) s.plane_scales()[o * planes_per_output + p] = 1.0 / total;
        __syncthreads();
    }
}

// finish_if_last for a masked forward: the last block to arrive writes every output's weighted_finish_values.
// Called as finish_if_last is.
template <class O>
__device__ inline void weighted_finish_if_last(WeightedSums s, double a, double b, O* out, long long out_stride,
                                               double* scratch, int tid) {
    if (last_arrival(s.counter(), gridDim.x * gridDim.y, scratch, tid))
        weighted_finish_values(s, a, b, out, out_stride, scratch, 0, 1, tid);
}

// Where a block's tile of 16 columns by kHeight rows lies, over the map
// (forward) or over the image (backward): its first pixel. offset: map pixel
// (i, j) is centred on image pixel (i + offset, j + offset); R for "valid",
// 0 otherwise.
struct TileGeometry {
    int offset, map_h, map_w, row, col;
    long long map_pixels;
};

template <int R, int kHeight>
__device__ inline TileGeometry tile_geometry(int padding, int height, int width, bool tiles_cover_map) {
    TileGeometry g;
    g.offset = padding == PAD_VALID ? R : 0;
    g.map_h = height - 2 * g.offset;
    g.map_w = width - 2 * g.offset;
    g.map_pixels = (long long)g.map_h * g.map_w;
    const int tiles_w = ((tiles_cover_map ? g.map_w : width) + kTile - 1) / kTile;
    g.row = (int)(blockIdx.x / tiles_w) * kHeight;
    g.col = (int)(blockIdx.x % tiles_w) * kTile;
    return g;
}

// out[q] = sum over taps t of weights[t] * value(t, q), in tap order: one
// filter step over Q quantities at once.
template <class C, int R, int Q, class Value>
__device__ inline void tap_sums(const C* weights, Value value, C (&out)[Q]) {
#pragma unroll
    for (int q = 0; q < Q; ++q) out[q] = C(0);
#pragma unroll
    for (int t = 0; t <= 2 * R; ++t) {
        const C w = weights[t];
#pragma unroll
        for (int q = 0; q < Q; ++q) out[q] += w * value(t, q);
    }
}

// The vertical half of the separable filter over 16 x 16 tiles (the 3-D
// kernels): this thread's pixel from Q horizontally filtered tiles.
template <class C, int R, int Q>
__device__ inline void vertical_pass(const C (&rows)[Q][kTile + 2 * R][kTile], const C* weights, C (&out)[Q]) {
    tap_sums<C, R, Q>(weights, [&](int t, int q) { return rows[q][threadIdx.y + t][threadIdx.x]; }, out);
}

// The (outer, inner) = (p / inner_count, p % inner_count) index pair of the
// planes a block visits, p = blockIdx.y, then + gridDim.y each time: advanced
// by additions, not a 64-bit division per plane.
struct PlaneIndex {
    long long outer, inner, step_outer, step_inner;

    __device__ void start(long long inner_count) {
        outer = blockIdx.y / inner_count;
        inner = blockIdx.y % inner_count;
        step_outer = gridDim.y / inner_count;
        step_inner = gridDim.y % inner_count;
    }
    __device__ void advance(long long inner_count) {
        outer += step_outer;
        inner += step_inner;
        if (inner >= inner_count) {
            inner -= inner_count;
            ++outer;
        }
    }
};

// PlaneIndex at plane blockIdx.y, stepping by gridDim.y, from 32-bit
// divisions: both are below 2^16, so an inner count past gridDim.y divides
// them as gridDim.y + 1 does (quotient 0, remainder the number itself).
__device__ inline PlaneIndex grid_plane_index(long long inner_count) {
    const unsigned int y = blockIdx.y, n = gridDim.y;
    const unsigned int count = inner_count > n ? n + 1 : (unsigned int)inner_count;
    PlaneIndex index;
    index.outer = y / count;
    index.inner = y % count;
    index.step_outer = n / count;
    index.step_inner = n % count;
    return index;
}

// Tap t of the window, read from its first half: the window is symmetric
// (Gaussian or uniform, bitwise: cussim/_reference.py makes it so, and the
// backward's adjoint relies on it too), so R + 1 registers hold its taps, not 2R + 1.
template <int R, class C>
__device__ inline C folded_tap(const C* weights, int t) {
    return weights[t <= R ? t : 2 * R - t];
}

// The tile of the forward and of the backward: a block of 16 x 16 threads
// computes 16 columns and kHeight = 16 kRows rows, kRows consecutive rows per
// thread (4 in float arithmetic, 1 in double, whose tiles would pass the 48
// KiB of static shared memory), so that the vertical pass reuses each loaded
// value for kRows outputs, and the halo (2R rows per kHeight), the per-plane
// set-up and the block sum are shared by kRows pixels per thread. The forward's
// tiles cover the map, the backward's the image; both shift their moments by
// the value at their centre (tile_shift), so the backward finds a map pixel's
// shift at forward tile (row >> kHeightLog2, col >> 4). Shared memory per
// block: the halo tile (kHaloRows x kPitch per quantity loaded) and the
// horizontally filtered rows (kHaloRows x kRowsPitch per quantity filtered).
//
// Bank conflicts, by construction (4-byte elements: 32 banks of one word;
// 8-byte elements are served per half-warp of 16 consecutive lanes, so the
// same arguments hold for a half-warp):
// - tile load: warp w stores halo row r = w + 8 i, lane = column: 32 (at most
//   kHaloCols <= 32) consecutive words of one row.
// - horizontal pass (horizontal_pass): warp w filters columns c = 4 (w % 4)
//   .. c + 3, lane = halo row r = 32 (w / 4) + lane + 64 i; each read
//   tile[q][r][c + j] and each store rows[q][r][c + o] of a warp is one column
//   of 32 consecutive rows, and both pitches (kPitch, kRowsPitch) are odd, so
//   the 32 rows fall in 32 different banks. The forward's halo holds (x', y')
//   pairs (PairOf): 8-byte reads served per half-warp (16-byte ones, double,
//   per quarter-warp), whose 16 (8) rows fall in different bank pairs (quads)
//   for the odd kPitch.
// - vertical pass (vertical_rows): lane l of warp w computes column l % 16 of
//   the rows of group (w % 4) + 8 (w / 4) + 4 (l / 16); the two half-warps'
//   groups are 4 groups = 16 rows apart (kRows = 4 for 4-byte elements), and
//   16 kRowsPitch = 16 * 17 = 16 mod 32: each read of a warp hits banks
//   b..b+15 and b+16..b+31.
template <class C, int R> struct Tile {
    static constexpr int kRows = sizeof(C) == 4 ? 4 : 1;
    static constexpr int kHeight = kTile * kRows;
    static constexpr int kHeightLog2 = sizeof(C) == 4 ? 6 : 4;
    static constexpr int kHaloRows = kHeight + 2 * R, kHaloCols = kTile + 2 * R;
    static constexpr int kPitch = kHaloCols + 1, kRowsPitch = kTile + 1;  // odd
    static constexpr int kHorizontalCols = 4;  // outputs per thread and row of the horizontal pass
    static_assert(kHeight == 1 << kHeightLog2, "tiles of 2^kHeightLog2 rows");
    static_assert(sizeof(C) != 4 || kRows == 4, "the vertical pass's bank argument is for 4 rows per thread");
    static_assert(kHaloCols <= 32, "a warp loads a halo row");

    // The pixel that a tile whose first pixel is (row, col) takes its shifts from (tile_shift): the one
    // nearest its centre, inside the image. The forward shifts by it and the backward reads it again.
    __device__ static int shift_row(int row, int height) { return min(row + kHeight / 2, height - 1); }
    __device__ static int shift_col(int col, int width) { return min(col + kTile / 2, width - 1); }

    // This thread's rows in the vertical pass: first_row .. first_row + kRows - 1 of the tile, column lane % 16.
    __device__ static int first_row(int warp, int lane) {
        return kRows * ((warp & 3) + 8 * (warp >> 2) + 4 * (lane >> 4));
    }
};

// Two values of C as one 8-byte (float2) or 16-byte (double2) element of shared memory, so that a pair is
// one load and one store.
template <class C> struct PairOf { using type = float2; };
template <> struct PairOf<double> { using type = double2; };
template <class C>
__device__ inline typename PairOf<C>::type pair(C a, C b) {
    typename PairOf<C>::type p;
    p.x = a;
    p.y = b;
    return p;
}

// Static shared memory of a Tile's block that loads Loaded and filters Filtered quantities, bounded above
// (the small tables: 2 KiB at most).
template <class C, int R, int Loaded, int Filtered> struct TileSharedBytes {
    using Shape = Tile<C, R>;
    static constexpr int value =
        Shape::kHaloRows * (Loaded * Shape::kPitch + Filtered * Shape::kRowsPitch) * (int)sizeof(C) + 2048;
};

// The fast tile load's walk: load(i) for the halo rows w + 8 i (i = 0, 1,
// ...) that warp w loads (lane = column), unrolled, so that all of a
// thread's loads are in flight at once; every warp loads kHaloRows / 8 rows,
// the first kHaloRows % 8 warps one more.
template <int kHaloRows, class Load>
__device__ inline void warp_halo_rows(int warp, Load load) {
    constexpr int kWarps = kTile * kTile / 32, kLoads = (kHaloRows + kWarps - 1) / kWarps;
#pragma unroll
    for (int i = 0; i < kLoads; ++i)
        if (i < kHaloRows / kWarps || warp + kWarps * i < kHaloRows) load(i);
}

// Shared memory an SM gives its blocks, by architecture (the per-block 1 KiB
// the driver reserves included): 96 KiB on sm_70/72, 64 KiB on sm_75, 164 KiB
// on sm_80/87, 228 KiB on sm_90/100/101/103, 100 KiB on sm_86/89/120/121 and
// on any other (the emulator ignores launch bounds).
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 700 || __CUDA_ARCH__ == 720)
constexpr int kSharedPerSm = 96 * 1024;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 750
constexpr int kSharedPerSm = 64 * 1024;
#elif defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 800 || __CUDA_ARCH__ == 870)
constexpr int kSharedPerSm = 164 * 1024;
#elif defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 900 || __CUDA_ARCH__ == 1000 || __CUDA_ARCH__ == 1010 || \
                                 __CUDA_ARCH__ == 1030)
constexpr int kSharedPerSm = 228 * 1024;
#else
constexpr int kSharedPerSm = 100 * 1024;
#endif

// Blocks per SM that ptxas must fit for a tiled kernel whose block takes
// SharedBytes at the largest window the library asks for (R = 7, win_size
// 15), whatever R: MinBlocks, but no more than an SM holds at once by shared
// memory, nor than Most: a register cap for more blocks would buy no
// occupancy, only spills. 64 registers where 4 blocks fit, as on sm_90 and
// sm_100; 80 on sm_80 (3 blocks), 128 on sm_70 and sm_120 (2).
template <class T, int SharedBytes, int Most = 4> struct TileMinBlocks {
    static constexpr int fit = kSharedPerSm / (SharedBytes + 1024);
    static constexpr int most = fit < Most ? fit : Most;
    static constexpr int value = MinBlocks<T>::value < most ? MinBlocks<T>::value : (most > 1 ? most : 1);
};

// Register blocking: value j (of Q quantities) of a line, loaded once, goes
// into each of the N consecutive outputs o that takes it as tap j - o of the
// 2R + 1 (taps in ascending order per output, as one output at a time).
template <class C, int R, int N, int Q>
__device__ inline void add_tap(C (&out)[N][Q], int j, const C (&v)[Q], const C* weights) {
#pragma unroll
    for (int o = 0; o < N; ++o)
#pragma unroll
        for (int q = 0; q < Q; ++q)
            if (j >= o && j - o <= 2 * R) out[o][q] += folded_tap<R>(weights, j - o) * v[q];
}

// A Tile's horizontally filtered rows of Q quantities (halo row r, column c < 16), one
// plane per quantity: the layout of the bank argument at Tile.
template <class C, int R, int Q> struct FilteredRows {
    C planes[Q][Tile<C, R>::kHaloRows][Tile<C, R>::kRowsPitch];

    __device__ void store(int r, int c, const C (&v)[Q]) {
#pragma unroll
        for (int q = 0; q < Q; ++q) planes[q][r][c] = v[q];
    }
    __device__ void load(int r, int c, C (&v)[Q]) const {
#pragma unroll
        for (int q = 0; q < Q; ++q) v[q] = planes[q][r][c];
    }
};

// The horizontal half of the separable filter over a Tile's halo rows, into
// `rows` (FilteredRows or MomentRows): warp w filters columns 4 (w % 4) ..
// 4 (w % 4) + 3 of the halo rows 32 (w / 4) + lane + 64 i below the last
// multiple of 64 (all of them in double); thread t < 4 n of the n rows left
// (2R in float) filters columns 4 (t / n) .. of row 64 + t % n, so that 8
// warps take each (row, 4 columns) pair once with as few warp iterations as
// can be (10 per 74 rows at R = 5, not 12). Without Pack (MS-SSIM's backward:
// with it, ssim_backward<unsigned char, 7, GRAD_MSSSIM> spills 4 bytes on sm_80
// under its 80 registers; the backward at R = 7, uint8's L1 tails) the sweeps go on
// over every halo row, 12 warp iterations at R = 5. Each loaded value serves up to 4 outputs. load(r, c, v)
// gives the Q quantities of halo pixel (r, c); with Span > 1, v[s] those of the
// Span pixels (r, c + s) at once (vector loads; the last ones past the 2R + 4
// columns a thread reads go unused).
template <class C, int R, int Q, bool Pack, int Span = 1, class Rows, class Load>
__device__ inline void horizontal_pass(Rows& rows, const C* weights, int warp, int lane, Load load) {
    using Shape = Tile<C, R>;
    constexpr int kCols = Shape::kHorizontalCols, kColGroups = kTile / kCols;
    constexpr int kRowStride = 32 * (kTile * kTile / 32 / kColGroups);
    constexpr int kSwept = !Pack || Shape::kHaloRows < kRowStride ? Shape::kHaloRows
                                                                  : Shape::kHaloRows / kRowStride * kRowStride;
    constexpr int kLeft = Shape::kHaloRows - kSwept;
    static_assert(kColGroups * kLeft <= kTile * kTile, "a thread per pair left");
    const auto filter = [&](int r, int c) {
        C b[kCols][Q] = {};
        if constexpr (Span == 1) {
#pragma unroll
            for (int j = 0; j < 2 * R + kCols; ++j) {
                C v[Q];
                load(r, c + j, v);
                add_tap<C, R>(b, j, v, weights);
            }
        } else {
#pragma unroll
            for (int j = 0; j < 2 * R + kCols; j += Span) {
                C v[Span][Q];
                load(r, c + j, v);
#pragma unroll
                for (int s = 0; s < Span; ++s)
                    if (j + s < 2 * R + kCols) add_tap<C, R>(b, j + s, v[s], weights);
            }
        }
#pragma unroll
        for (int o = 0; o < kCols; ++o) rows.store(r, c + o, b[o]);
    };
    if constexpr (Pack) {
#pragma unroll
        for (int i = 0; i < (kSwept + kRowStride - 1) / kRowStride; ++i) {
            const int r = lane + 32 * (warp / kColGroups) + kRowStride * i;
            if (kSwept % kRowStride == 0 || r < kSwept) filter(r, kCols * (warp % kColGroups));
        }
    } else {
#pragma unroll 1
        for (int r = lane + 32 * (warp / kColGroups); r < kSwept; r += kRowStride)
            filter(r, kCols * (warp % kColGroups));
    }
    if constexpr (kLeft > 0) {
        const int t = threadIdx.y * kTile + threadIdx.x;  // = 32 warp + lane
        if (t < kColGroups * kLeft) filter(kSwept + t % kLeft, kCols * (t / kLeft));
    }
}

// The vertical half: this thread's kRows outputs of column `col` from rows
// first_row .. first_row + kRows + 2R - 1, each loaded value serving up to
// kRows of them; finish(i, b) takes row i's Q filtered values as soon as its
// last tap is in (fewer live registers). With Span > 1, rows.load(r, col, v)
// gives rows r .. r + Span - 1 at once (v[s]; those past the last go unused).
template <class C, int R, int Q, int Span = 1, class Rows, class Finish>
__device__ inline void vertical_rows(const Rows& rows, const C* weights, int first_row, int col, Finish finish) {
    constexpr int kRows = Tile<C, R>::kRows;
    C b[kRows][Q] = {};
    if constexpr (Span == 1) {
#pragma unroll
        for (int j = 0; j < kRows + 2 * R; ++j) {
            C v[Q];
            rows.load(first_row + j, col, v);
            add_tap<C, R>(b, j, v, weights);
            if (j >= 2 * R) finish(j - 2 * R, b[j - 2 * R]);
        }
    } else {
#pragma unroll
        for (int i = 0; i < kRows + 2 * R; i += Span) {
            C v[Span][Q];
            rows.load(first_row + i, col, v);
#pragma unroll
            for (int s = 0; s < Span; ++s) {
                const int j = i + s;
                if (j < kRows + 2 * R) {
                    add_tap<C, R>(b, j, v[s], weights);
                    if (j >= 2 * R) finish(j - 2 * R, b[j - 2 * R]);
                }
            }
        }
    }
}

}  // namespace cussim
