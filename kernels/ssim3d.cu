// ssim3d.cu: SSIM, its mean and its exact gradient (docs/spec.rst sections 1 to 4) for a
// batch of D x H x W volumes, the window applied along depth, rows and columns.
//
// cussim/_kernels.py compiles this file after pixel.cuh, tile.cuh and
// msssim.cuh (SOURCES: the "ssim3d" family's source is the four, concatenated),
// so the per-voxel maths is the planes' own: ssim_pixel, load_scaled,
// reflect_index, block_sum, store.
//
// Kernels (T, R and C as in ssim_forward.cu):
//   ssim3d_forward<T, R>   as ssim_forward, per voxel of the map: the map, the
//                          per-block sums (float64, fixed order) of the voxels
//                          the mean counts, the three partial maps of the
//                          exact gradient or of scikit-image's formula.
//   ssim3d_backward<T, R>  as ssim_backward: F^T of the three partial maps,
//                          combined with x and y, written or added into grad.
//   ssim3d_forward<T, R, cussim::VOLUME_MASK> and ssim3d_backward<T, R, cussim::VOLUME_MASK>,
//                          with `| cussim::VOLUME_NORMALIZED` too: a masked
//                          mean's (docs/spec.rst section 9), as the planes'
//                          FORWARD_MASK (FORWARD_NORMALIZED) and masked tails.
//   ssim3d_weighted_finish<O>  a masked forward's WeightedSums into the means,
//                          totals and per-volume scales (weighted_finish_values),
//                          one block per output.
//   msssim3d_downsample<T, Masked> MS-SSIM's 2x2x2 mean of x and y (docs/spec.rst section 6,
//                          pytorch-msssim's avg_pool3d on 5-D tensors), as a
//                          variant halves each side, into contiguous volumes
//                          of the compute type; Masked: of a mask too (MS-SSIM
//                          with a mask), as a third volume.
// ssim_forward.cu's ssim_finish turns an unmasked forward's block sums into the means,
// msssim.cu's msssim_combine the scales' means into MS-SSIM (with a mask: msssim_combine<O, true> of the masked
// forwards' sums, whose partial maps carry the pooled weights for the unmasked backward); the backward adds
// the adjoint of the next scale's 2x2x2 mean (msssim.cuh's pooled_target per axis).
//
// The 2.5-D scheme: a block of (16, 16) threads owns a 16 x 16 tile of rows
// and columns and marches along depth over a chunk of `chunk` output planes.
// Each input plane it passes goes through the 2-D filter of tile.cuh (a
// (16+2R)^2 halo tile in shared memory, a horizontal pass, a vertical pass in
// registers); each thread keeps the last 2R+1 filtered planes of its column
// (a rolling window, 5 moments forward, 3 partial maps backward: in registers,
// or the older planes in a shared-memory ring, Window3d), and the depth taps
// over that window finish the 3-D filter. The halo costs 2R planes per chunk,
// not (16+2R)^3 / 16^3 per voxel.
//
// Launch shapes: block (16, 16); grid (tiles_h * tiles_w * chunks,
// min(volumes, 65535)), blockIdx.x = chunk * tiles_h * tiles_w + tile, the
// tiles and chunks covering the map (forward) or the volume (backward);
// blocks loop over volumes. Block sums: volumes x gridDim.x, volume-major.
// The forward takes cussim/_launch3d.py's forward_shared_bytes of dynamic
// shared memory (its window's ring; 0 where the window stays in registers).
// Arrays are addressed by element strides (int64): volume
// p = outer * inner_count + inner, then depth, row and column. The partial
// maps are contiguous: 3 x volumes x map voxels.

namespace cussim {

// Where a block's tile and depth chunk lie, over the map (forward) or over
// the volume (backward); map voxel (d, i, j) is centred on volume voxel
// (d + offset, i + offset, j + offset), offset R for "valid", 0 otherwise.
struct BrickGeometry {
    int offset, map_d, map_h, map_w, row, col, first, last;
    long long map_voxels;
};

template <int R>
__device__ inline BrickGeometry brick_geometry(int padding, int depth, int height, int width, int chunk,
                                               bool covers_map) {
    BrickGeometry g;
    g.offset = padding == PAD_VALID ? R : 0;
    g.map_d = depth - 2 * g.offset;
    g.map_h = height - 2 * g.offset;
    g.map_w = width - 2 * g.offset;
    g.map_voxels = (long long)g.map_d * g.map_h * g.map_w;
    const int tiles_h = ((covers_map ? g.map_h : height) + kTile - 1) / kTile;
    const int tiles_w = ((covers_map ? g.map_w : width) + kTile - 1) / kTile;
    const int tile = (int)(blockIdx.x % (tiles_h * tiles_w));
    g.row = tile / tiles_w * kTile;
    g.col = tile % tiles_w * kTile;
    g.first = (int)(blockIdx.x / (tiles_h * tiles_w)) * chunk;
    g.last = min(g.first + chunk, covers_map ? g.map_d : depth);
    return g;
}

// One voxel of a volume, scaled by inv_range; outside the depth range zero,
// or reflected with "reflect" (rows and columns as load_scaled).
template <class T, class C>
__device__ inline C load_voxel(const T* volume, long long depth_stride, long long row_stride, long long col_stride,
                               int z, int row, int col, int depth, int height, int width, int padding, C inv_range) {
    if (padding == PAD_REFLECT) {
        z = reflect_index(z, depth);
    } else if (z < 0 || z >= depth) {
        return C(0);
    }
    return load_scaled(volume + z * depth_stride, row_stride, col_stride, row, col, height, width, padding,
                       inv_range);
}

// The 2-D filter of quantities First .. First + Count - 1 of Q over a halo tile: after the call, out[q]
// holds this thread's pixel of quantity q filtered along rows and columns (the others untouched).
// sample(r, c, v) gives the Q values at halo position (r, c). The caller has filled what sample reads and
// synchronised; the call synchronises once more (after the horizontal pass, the only one that calls
// sample), so the caller may refill the tile as soon as it returns (and `rows` after a barrier). Columns
// (1 or 2): the horizontal pass's neighbouring outputs a thread, which share 2R of their 2R + Columns halo
// values: each value sampled once, every sum in tap order (2: the forward with its ring; two columns spilled
// in the backward at 64 registers and in the forward's register windows).
template <class C, int R, int Q, int Columns = 1, int First = 0, int Count = Q, class Sample>
__device__ inline void filter_tile(Sample sample, C (&rows)[Count][kTile + 2 * R][kTile], const C* weights, int tid,
                                   C (&out)[Q]) {
    constexpr int kSide = kTile + 2 * R;
    static_assert(Columns == 1 || Columns == 2, "one or two columns a thread");
    for (int k = tid; k < kSide * kTile / Columns; k += kTile * kTile) {
        const int r = k / (kTile / Columns), c = Columns * (k % (kTile / Columns));
        C sums[Columns][Count];
#pragma unroll
        for (int i = 0; i < Columns; ++i)
#pragma unroll
            for (int q = 0; q < Count; ++q) sums[i][q] = C(0);
#pragma unroll
        for (int j = 0; j < 2 * R + Columns; ++j) {
            C v[Q];
            sample(r, c + j, v);
#pragma unroll
            for (int i = 0; i < Columns; ++i) {
                if (j - i >= 0 && j - i <= 2 * R) {  // tap j - i of column c + i
                    const C w = weights[j - i];
#pragma unroll
                    for (int q = 0; q < Count; ++q) sums[i][q] += w * v[First + q];
                }
            }
        }
#pragma unroll
        for (int i = 0; i < Columns; ++i)
#pragma unroll
            for (int q = 0; q < Count; ++q) rows[q][r][c + i] = sums[i][q];
    }
    __syncthreads();
    C part[Count];
    vertical_pass<C, R, Count>(rows, weights, part);
#pragma unroll
    for (int q = 0; q < Count; ++q) out[First + q] = part[q];
}

// The depth taps over the rolling window of the last 2R+1 filtered planes, each
// thread its own column: the K newest planes in registers, the 2R+1-K older ones
// in a shared-memory ring (kShared slots of Q x 256 values, written and read by
// this thread only, so no barrier); push() adds the newest plane, moving the
// oldest register plane into the ring over the ring's oldest. The taps run in
// plane order, oldest first, whatever K, so the sums do not depend on it.
template <class C, int R, int Q, int K>
struct RollingWindow {
    static constexpr int kShared = 2 * R + 1 - K;
    static_assert(K >= 1 && kShared >= 0, "at least one plane in registers");
    using Ring = C[kShared > 0 ? kShared : 1][Q][kShared > 0 ? kTile * kTile : 1];  // one value when unused
    C planes[K][Q];
    int oldest;  // the ring's slot holding the oldest plane, the next to be overwritten

    __device__ inline void push(const C (&newest)[Q], Ring& ring, int tid) {
        if constexpr (kShared > 0) {
#pragma unroll
            for (int q = 0; q < Q; ++q) ring[oldest][q][tid] = planes[0][q];
            oldest = oldest + 1 == kShared ? 0 : oldest + 1;
        }
#pragma unroll
        for (int t = 0; t + 1 < K; ++t)
#pragma unroll
            for (int q = 0; q < Q; ++q) planes[t][q] = planes[t + 1][q];
#pragma unroll
        for (int q = 0; q < Q; ++q) planes[K - 1][q] = newest[q];
    }

    // The ring's slot that push() overwrites next: free until then (it holds a plane past the window).
    __device__ inline C* free_slot(Ring& ring) const { return &ring[oldest][0][0]; }

    __device__ inline void filtered(const C* weights, const Ring& ring, int tid, C (&out)[Q]) const {
#pragma unroll
        for (int q = 0; q < Q; ++q) out[q] = C(0);
        // tap t reads slot oldest + t, or oldest + t - kShared past the last: one of two bases, a constant offset
        // from it (a slot index wrapped round per tap cost 3 instructions more a tap)
        constexpr int kSlot = Q * kTile * kTile;
        const C* first = &ring[0][0][tid] + oldest * kSlot;
        const C* wrapped = first - kShared * kSlot;
#pragma unroll
        for (int t = 0; t < kShared; ++t) {
            const C w = weights[t];
            const C* column = (t < kShared - oldest ? first : wrapped) + t * kSlot;
#pragma unroll
            for (int q = 0; q < Q; ++q) out[q] += w * column[q * kTile * kTile];
        }
#pragma unroll
        for (int t = 0; t < K; ++t) {
            const C w = weights[kShared + t];
#pragma unroll
            for (int q = 0; q < Q; ++q) out[q] += w * planes[t][q];
        }
    }
};

// The adjoint of the 2x2x2 mean at voxel (z, row, col) of volume p: an
// eighth of the coarse gradient (contiguous volumes) per slot the voxel fills;
// 32-bit offsets in a coarse plane (a quarter of a plane: < 2^31 voxels).
template <class C>
__device__ inline C pooled_adjoint3d(const C* coarse, long long p, int z, int row, int col, int depth, int height,
                                     int width, int variant) {
    const PooledTarget d = pooled_target(z, depth, variant), r = pooled_target(row, height, variant),
                       c = pooled_target(col, width, variant);
    if (d.slots == 0 || r.slots == 0 || c.slots == 0) return C(0);
    const int coarse_w = pooled_size(width, variant), plane = pooled_size(height, variant) * coarse_w;
    const C* coarse_plane = coarse + (p * pooled_size(depth, variant) + d.index) * plane;
    return C(0.125) * C(d.slots * r.slots * c.slots) * coarse_plane[r.index * coarse_w + c.index];
}

// How a kernel keeps its window (RollingWindow) and the blocks per SM that
// ptxas must fit. The backward in float arithmetic up to R = 5 keeps one
// plane (3 values) in registers and the rest in the shared-memory ring (30
// KiB, 43 KiB of shared memory in all at R = 5), capped at four blocks of 256
// threads (64 registers; R = 1 at three, 80: it spills 20 bytes on sm_70 at
// 64): no spill on sm_70 to sm_121. Not on sm_75, whose 64 KiB of shared
// memory per SM would hold one such block, where 128 registers hold two.
// Every other window stays in registers (an empty ring), capped by its size:
// up to 55 32-bit registers of window in float arithmetic (forward to R = 5,
// backward R = 6 and 7) and 42 in double (forward R = 1, backward to R = 3),
// two blocks of 256 threads (128 registers) without spilling on every
// architecture the compile check covers (the next sizes spill: float forward
// R = 6 24 to 36 bytes, double forward R = 2 12 to 52, double backward R = 4
// 36 to 44); larger windows get the whole register file (255 per thread at
// one block) rather than spill. The forward's window (55 values at R = 5)
// does not fit beside the rest in static shared memory (48 KiB): its ring is
// dynamic (kForwardRegisterPlanes below).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 750
constexpr bool kRingOnThisArch = false;
#else
constexpr bool kRingOnThisArch = true;
#endif

// A masked forward (Masked) counts one word more beside its window where its weights' sum and the mask's read
// beside the 55 words of the float window at R = 5 spilled 8 to 24 bytes at 128 registers (sm_70 to sm_89,
// sm_120 and sm_121; a plane in the ring did not help): that one takes the whole register file there. On
// sm_90 to sm_103 it fits in 128 (where the window is in registers: past R = 5, double).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && __CUDA_ARCH__ < 1200
constexpr int kMaskedWords = 0;
#else
constexpr int kMaskedWords = 1;
#endif

// The forward's window (5 values a plane, 6 normalized) in float arithmetic up to R = 5 goes to a ring in
// dynamic shared memory where an SM has room for it (opt-in past 48 KiB: cussim/_launch3d.py's
// forward_shared_bytes sizes it as this does), kForwardRegisterPlanes of its planes in registers: one on
// sm_90 to sm_103 (228 KiB per SM; 51200 bytes of ring and 5536 static at R = 5: four blocks of 256 threads
// at 64 registers unmasked, three at 80 masked, whose normalized form holds 3 by its 69744 bytes), two on
// sm_80 (164 KiB: three blocks, 80 registers). The 2-D filter then runs in two groups of moments through
// the ring's free slot (its rows buffer). Elsewhere (and past R = 5) the window stays in registers, as the
// backward's beyond its ring. The emulator (no __CUDA_ARCH__) runs the ring as sm_90 does.
#if !defined(__CUDA_ARCH__) || (__CUDA_ARCH__ >= 900 && __CUDA_ARCH__ < 1200)
constexpr int kForwardRegisterPlanes = 1;
#elif __CUDA_ARCH__ == 800
constexpr int kForwardRegisterPlanes = 2;
#else
constexpr int kForwardRegisterPlanes = 0;  // no ring
#endif

// The forward's blocks per SM with its ring: 4 (64 registers) unmasked with one register plane, else 3 (80);
// __half, whose conversions take registers, spilled 4 bytes at 64 (sm_90, R = 3 to 5) and, normalized at
// R = 1, 8 bytes at 80 (sm_90): 3 and 2 there.
template <class T> constexpr bool kIsHalf = false;
template <> constexpr bool kIsHalf<__half> = true;
template <class T>
__host__ __device__ constexpr int kForwardRingBlocks(int R, int Q, bool Masked, int register_planes) {
    return kIsHalf<T> && Q == 6 && R == 1 ? 2 : Masked || register_planes > 1 || kIsHalf<T> ? 3 : 4;
}

// The normalized forward in double arithmetic at R = 7 (win_size 15): its window in registers, 180 words of 15
// planes, spilled 12 to 80 bytes beside the rest at 255 registers (sm_70 to sm_121). kWideRingPlanes of its
// planes go to the ring on every architecture, 12,288 bytes each (cussim/_launch3d.py's forward_shared_bytes
// sizes it as this does), the filter's rows in the ring's free slot (22 KiB static): three (59 KiB in all,
// under sm_75's 64 KiB), five on sm_70 and sm_72 (84 KiB of their 96; at three and four sm_70 spilled 48
// and 8 bytes).
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 700 || __CUDA_ARCH__ == 720)
constexpr int kWideRingPlanes = 5;
#else
constexpr int kWideRingPlanes = 3;
#endif

// Q = 3: the backward's window, 5 or 6 the forward's.
template <class T, int R, int Q, bool Masked = false> struct Window3d {
    static constexpr int kWords = (int)(sizeof(typename ComputeType<T>::type) / 4);
    static constexpr bool kForward = Q != 3;
    static constexpr bool kWideRing = kForward && kWords == 2 && Q == 6 && R == 7;
    static constexpr bool kRing =
        kWideRing || (kWords == 1 && R <= 5 && (kForward ? kForwardRegisterPlanes > 0 : kRingOnThisArch));
    static constexpr int kRegisterPlanes = !kRing     ? 2 * R + 1
                                           : kWideRing ? 2 * R + 1 - kWideRingPlanes
                                           : kForward  ? kForwardRegisterPlanes
                                                       : 1;
    static constexpr int kWindowWords = Q * (2 * R + 1) * kWords + Masked * kMaskedWords;
    static constexpr int kMinBlocks = kWideRing ? 1
                                      : kRing   ? (kForward ? kForwardRingBlocks<T>(R, Q, Masked, kRegisterPlanes)
                                                            : R >= 2 ? 4 : 3)
                                                : kWindowWords <= (kWords == 1 ? 55 : 42) ? 2 : 1;
};

// The masks of the volumes' kernels (docs/spec.rst section 9), their last template argument, as the planes'
// FORWARD_MASK and FORWARD_NORMALIZED (kernels/ssim_forward.cu, same values) and masked tails: the forward's
// block sums hold sum(m S) and sum(m) (WeightedSums), its partial maps m * weight * P, the backward scales
// each volume by 1 / its total (the volume_weights argument: WeightedSums' plane scales) and weights the L1
// term by m. VOLUME_NORMALIZED (with VOLUME_MASK): normalised convolution, the moments F(m x) / W, ... with
// W = F(m) (x and y 0 where m is 0, so nothing there is read into the arithmetic), the map and the partials 0
// where the centre weighs 0, the partials divided by W; the backward's gradient all times m (0 where m is
// 0). Only these specialisations read the mask: VOLUME_UNMASKED's compile as without it.
enum VolumeMask { VOLUME_UNMASKED = 0, VOLUME_MASK = 64, VOLUME_NORMALIZED = 128 };

}  // namespace cussim

template <class T, int R, int Mask = cussim::VOLUME_UNMASKED>
__global__ void __launch_bounds__(
    256, cussim::Window3d<T, R, Mask & cussim::VOLUME_NORMALIZED ? 6 : 5, Mask != 0>::kMinBlocks) ssim3d_forward(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_depth, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_depth, long long y_row, long long y_col,
    typename cussim::ComputeType<T>::type* __restrict__ map, long long m_outer, long long m_inner, long long m_depth,
    long long m_row, long long m_col, double* __restrict__ block_sums,
    typename cussim::ComputeType<T>::type* __restrict__ grad_maps, long long volumes, long long inner_count, int depth,
    int height, int width, int chunk, int padding, int crop, int term, int formula,
    const typename cussim::ComputeType<T>::type* __restrict__ taps, typename cussim::ComputeType<T>::type inv_range,
    typename cussim::ComputeType<T>::type c1, typename cussim::ComputeType<T>::type c2,
    typename cussim::ComputeType<T>::type cov, typename cussim::ComputeType<T>::type weight, double sum_scale,
    double l1, const typename cussim::ComputeType<T>::type* __restrict__ mask, long long k_outer, long long k_inner,
    long long k_depth, long long k_row, long long k_col) {
    using namespace cussim;
    using C = typename ComputeType<T>::type;
    constexpr int kSide = kTile + 2 * R;
    constexpr bool kMasked = (Mask & VOLUME_MASK) != 0, kNormalized = (Mask & VOLUME_NORMALIZED) != 0;
    static_assert(!kNormalized || kMasked, "normalised convolution: with its mask");
    constexpr int Q = kNormalized ? 6 : 5;  // the quantities filtered
    // x and y around the tile, one plane, shifted by (kx, ky); normalized: 0 where m is 0, and m
    __shared__ C tiles[kNormalized ? 3 : 2][kSide][kSide];
    using Config = Window3d<T, R, Q, kMasked>;
    constexpr bool kRing = Config::kRing;
    constexpr int kGroup = (Q + 1) / 2;  // with the ring: the moments of the 2-D filter's first pass
    constexpr int kColumns = kRing ? 2 : 1;  // the horizontal pass's columns a thread (filter_tile)
    // filtered along rows: mx, md, Exx, Eyy, Edd; normalized: m x, m d, m, m x^2, m y^2, m d^2 (with the ring:
    // in its free slot)
    __shared__ C rows[kRing ? 1 : Q][kRing ? 1 : kSide][kTile];
    __shared__ C weights[2 * R + 1];
    __shared__ double scratch[kMasked ? kTile * kTile / 16 : kTile * kTile / 32];  // block_sum(_pair)'s warp sums
    using Window = RollingWindow<C, R, Q, Config::kRegisterPlanes>;
    static_assert(!kRing || kGroup * kSide * kTile <= Q * kTile * kTile, "a group's rows fit a ring slot");
    __shared__ int centre_voxel[3];  // the shifts' voxel (below)
    __shared__ unsigned char column_flags[kTile * kTile];
    extern __shared__ __align__(16) unsigned char dynamic_shared[];  // the ring: forward_shared_bytes bytes
    typename Window::Ring& ring = *reinterpret_cast<typename Window::Ring*>(dynamic_shared);

    const BrickGeometry g = brick_geometry<R>(padding, depth, height, width, chunk, true);
    const long long maps_size = volumes * g.map_voxels;
    const int tid = threadIdx.y * kTile + threadIdx.x;
    if (tid < 2 * R + 1) weights[tid] = taps[tid];
    const int row = g.row + threadIdx.y, col = g.col + threadIdx.x;
    // whether this thread's column lies in the map (1) and is counted (2), read back per output voxel from
    // its own byte (kept in predicates through the march, they were spilled at 80 registers, normalized)
    column_flags[tid] = (row < g.map_h && col < g.map_w ? 1 : 0) |
                        (row >= crop && row < g.map_h - crop && col >= crop && col < g.map_w - crop ? 2 : 0);
    const volatile unsigned char* flags = column_flags + tid;

    if (tid == 0) {
        centre_voxel[0] = min(g.first + g.offset + chunk / 2, depth - 1);
        centre_voxel[1] = min(g.row + g.offset + kTile / 2, height - 1);
        centre_voxel[2] = min(g.col + g.offset + kTile / 2, width - 1);
    }
    __syncthreads();
    PlaneIndex volume = grid_plane_index(inner_count);  // (outer, inner) of p: no 64-bit division per volume
    for (long long p = blockIdx.y; p < volumes; p += gridDim.y, volume.advance(inner_count)) {
        const long long outer = volume.outer, inner = volume.inner;
        const T* xp = x + outer * x_outer + inner * x_inner;
        const T* yp = y + outer * y_outer + inner * y_inner;
        // The shifts (pixel.cuh's ssim_pixel): the voxel nearest the brick's centre, or 0 where it is not
        // finite, so that a NaN or an infinity there stays in the windows that hold it (as tile_shift does;
        // tile_shift's element offset made ptxas spill here, python -m bench.sass and bench/NOTES.md).
        // (read back from shared memory per volume: computed once, their offsets stayed in registers through
        // the march and ptxas spilled them at 64 registers)
        const volatile int* centre = centre_voxel;
        const int centre_z = centre[0], centre_row = centre[1], centre_col = centre[2];
        const C x_centre = load_voxel(xp, x_depth, x_row, x_col, centre_z, centre_row, centre_col, depth, height,
                                      width, PAD_SAME, inv_range);
        const C y_centre = load_voxel(yp, y_depth, y_row, y_col, centre_z, centre_row, centre_col, depth, height,
                                      width, PAD_SAME, inv_range);
        C kx = is_finite(x_centre) ? x_centre : C(0), ky = is_finite(y_centre) ? y_centre : C(0);
        // the mask's volume
        const C* kp = kMasked ? mask + outer * k_outer + inner * k_inner : nullptr;
        // normalized: no shift from a voxel of weight 0, whose value may be anything
        if (kNormalized && !(load_voxel(kp, k_depth, k_row, k_col, centre_z, centre_row, centre_col, depth, height,
                                        width, PAD_SAME, C(1)) > C(0)))
            kx = ky = C(0);
        // The weight of map voxel (d, row, col): mask voxel (d + offset, row + offset, col + offset)
        const auto centre_weight = [&](const C* weights, int d) {
            return weights[outer * k_outer + inner * k_inner + (d + g.offset) * k_depth + (row + g.offset) * k_row +
                           (col + g.offset) * k_col];
        };
        Window window = {};
        double thread_sum = 0.0, weight_sum = 0.0;  // weight_sum: masked, the weights' (below)
        // Input plane z feeds map planes z - offset - R .. z - offset + R.
        for (int z = g.first + g.offset - R; z < g.last + g.offset + R; ++z) {
            // a loop per padding (zero outside for "same" and "valid"), as the backward's
            const auto fill = [&](int loaded_padding) {
#pragma unroll 1
                for (int k = tid; k < kSide * kSide; k += kTile * kTile) {
                    const int r = k / kSide, c = k % kSide;
                    const int in_row = g.row + g.offset - R + r, in_col = g.col + g.offset - R + c;
                    if constexpr (kNormalized) {  // the weight (padded as the images), x' and y' 0 where it is 0
                        const C w = load_voxel(kp, k_depth, k_row, k_col, z, in_row, in_col, depth, height, width,
                                               loaded_padding, C(1));
                        tiles[2][r][c] = w;
                        tiles[0][r][c] = w > C(0) ? load_voxel(xp, x_depth, x_row, x_col, z, in_row, in_col, depth,
                                                               height, width, loaded_padding, inv_range) - kx
                                                  : C(0);
                        tiles[1][r][c] = w > C(0) ? load_voxel(yp, y_depth, y_row, y_col, z, in_row, in_col, depth,
                                                               height, width, loaded_padding, inv_range) - ky
                                                  : C(0);
                    } else {
                        tiles[0][r][c] = load_voxel(xp, x_depth, x_row, x_col, z, in_row, in_col, depth, height,
                                                    width, loaded_padding, inv_range) - kx;
                        tiles[1][r][c] = load_voxel(yp, y_depth, y_row, y_col, z, in_row, in_col, depth, height,
                                                    width, loaded_padding, inv_range) - ky;
                    }
                }
            };
            if (padding == PAD_REFLECT) {
                fill(PAD_REFLECT);
            } else {
                fill(PAD_SAME);
            }
            __syncthreads();
            const auto sample = [&](int r, int c, C (&v)[Q]) {
                if constexpr (kNormalized) {
                    const C a = tiles[0][r][c], b = tiles[1][r][c], w = tiles[2][r][c], d = a - b;
                    v[0] = w * a;
                    v[1] = w * d;
                    v[2] = w;
                    v[3] = w * a * a;
                    v[4] = w * b * b;
                    v[5] = w * d * d;
                } else {
                    moment_terms(tiles[0][r][c], tiles[1][r][c], v);
                }
            };
            C m[Q];
            if constexpr (kRing) {  // two groups of moments through the ring's free slot, a barrier after each
                filter_tile<C, R, Q, kColumns, 0, kGroup>(sample, *reinterpret_cast<C(*)[kGroup][kSide][kTile]>(
                                                            window.free_slot(ring)),
                                                weights, tid, m);
                __syncthreads();
                filter_tile<C, R, Q, kColumns, kGroup, Q - kGroup>(
                    sample, *reinterpret_cast<C(*)[Q - kGroup][kSide][kTile]>(window.free_slot(ring)), weights, tid,
                    m);
                __syncthreads();
            } else {
                filter_tile<C, R, Q, kColumns>(sample, rows, weights, tid, m);
            }
            window.push(m, ring, tid);
            const int d = z - g.offset - R;  // the map plane whose window is now complete
            const int column = *flags;
            if (d >= g.first && (column & 1)) {
                C moments[5], inv_w = C(1), centre = C(1);
                if constexpr (kNormalized) {  // F(m x') / W, ... and 1 / W (0 where W is 0)
                    C f[6];
                    window.filtered(weights, ring, tid, f);
                    inv_w = f[2] > C(0) ? C(1) / f[2] : C(0);
                    moments[0] = f[0] * inv_w;
                    moments[1] = f[1] * inv_w;
                    moments[2] = f[3] * inv_w;
                    moments[3] = f[4] * inv_w;
                    moments[4] = f[5] * inv_w;
                    centre = centre_weight(mask, d);
                } else {
                    window.filtered(weights, ring, tid, moments);
                }
                Pixel<C> px = ssim_pixel(moments, kx, ky, c1, c2, cov, term, grad_maps ? formula : 0);
                // normalized: 0 (value and partials) where the centre weighs 0 (there W may be 0 too)
                if (kNormalized && !(centre > C(0))) px.s = px.partial[0] = px.partial[1] = px.partial[2] = C(0);
                if (map) map[outer * m_outer + inner * m_inner + d * m_depth + row * m_row + col * m_col] = px.s;
                const bool counted = (column & 2) && d >= crop && d < g.map_d - crop;
                // masked: this voxel's weight, 0 where the mean does not count it, scales its share of the sums;
                // the weights' sum in the voxels' order, NaN from a negative weight on (a NaN or an infinite
                // weight makes it NaN or infinite by itself: the host refuses every such total)
                C mv = C(0);
                if constexpr (kMasked) {
                    const C read = kNormalized ? centre : counted ? centre_weight(mask, d) : C(0);
                    mv = counted ? read : C(0);
                    weight_sum = read < C(0) ? (double)__uint_as_float(0x7fc00000u) : weight_sum + (double)mv;
                }
                // mean mode: m S in C (m = 1: bitwise S); with the L1 term weighted after it is added (double)
                double value = counted ? (double)(kMasked && !kNormalized && l1 == 0.0 ? px.s * mv : px.s) : 0.0;
                if (counted && l1 != 0.0) {  // the fused L1 term ("same" padding: the voxel is (d, row, col))
                    // normalized: 0 where the weight is 0, whose values are never read
                    const C dx = kNormalized && !(centre > C(0))
                                     ? C(0)
                                     : load_voxel(xp, x_depth, x_row, x_col, d, row, col, depth, height, width,
                                                  PAD_SAME, inv_range) -
                                           load_voxel(yp, y_depth, y_row, y_col, d, row, col, depth, height, width,
                                                      PAD_SAME, inv_range);
                    value = with_l1(value, dx, sum_scale, l1);
                    if (kMasked && !kNormalized) value *= (double)mv;
                }
                if (kNormalized) value *= (double)mv;
                thread_sum += value;
                if (grad_maps) {
                    // partial[0] moves from the moments shifted by kx (x) and kx - ky (d = x - y) to
                    // unshifted ones: ssim3d_backward combines the maps with x and x - y themselves. It is
                    // moved_partial with moves -2 kx and -2 (kx - ky), factored as before: that form cost 1
                    // instruction more per voxel for double at R = 5 (python -m bench.sass).
                    // masked: m weight (m 0 where not counted); normalized: divided by W too
                    const C w = kMasked ? mv * weight * inv_w : partial_weight(counted, formula, weight);
                    const long long at = p * g.map_voxels + ((long long)d * g.map_h + row) * g.map_w + col;
                    const C partials[3] = {px.partial[0] - C(2) * (kx * px.partial[1] + (kx - ky) * px.partial[2]),
                                           px.partial[1], px.partial[2]};
                    for (int q = 0; q < 3; ++q) grad_maps[q * maps_size + at] = w * partials[q];
                }
            }
        }
        if (block_sums && kMasked) {  // the weights' sums follow the values' (WeightedSums)
            block_sum_pair(thread_sum, weight_sum, scratch, tid);
            if (tid == 0) {
                block_sums[p * gridDim.x + blockIdx.x] = thread_sum;
                block_sums[(volumes + p) * gridDim.x + blockIdx.x] = weight_sum;
            }
        } else if (block_sums) {
            const double total = block_sum(thread_sum, scratch, tid);
            if (tid == 0) block_sums[p * gridDim.x + blockIdx.x] = total;
        }
    }
}

template <class T, int R, int Mask = cussim::VOLUME_UNMASKED>
__global__ void __launch_bounds__(256, cussim::Window3d<T, R, 3>::kMinBlocks) ssim3d_backward(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_depth, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_depth, long long y_row, long long y_col,
    const typename cussim::ComputeType<T>::type* __restrict__ grad_maps,
    typename cussim::GradientType<T>::type* __restrict__ grad, long long g_outer, long long g_inner, long long g_depth,
    long long g_row, long long g_col, long long volumes, long long inner_count, int depth, int height, int width,
    int chunk, int padding, const typename cussim::ComputeType<T>::type* __restrict__ taps,
    typename cussim::ComputeType<T>::type inv_range, const double* __restrict__ volume_weights,
    const typename cussim::ComputeType<T>::type* __restrict__ coarse, int variant,
    typename cussim::ComputeType<T>::type l1, int accumulate,
    const typename cussim::ComputeType<T>::type* __restrict__ mask, long long k_outer, long long k_inner,
    long long k_depth, long long k_row, long long k_col) {
    using namespace cussim;
    using C = typename ComputeType<T>::type;
    constexpr int kSide = kTile + 2 * R;
    constexpr bool kMasked = (Mask & VOLUME_MASK) != 0, kNormalized = (Mask & VOLUME_NORMALIZED) != 0;
    static_assert(!kNormalized || kMasked, "normalised convolution: with its mask");
    __shared__ C tile[3][kSide][kSide];  // g*Pmu, g*Pxx, g*Pdd around the tile, one map plane
    __shared__ C rows[3][kSide][kTile];
    __shared__ C weights[2 * R + 1];
    using Window = RollingWindow<C, R, 3, Window3d<T, R, 3>::kRegisterPlanes>;
    __shared__ typename Window::Ring ring;

    const BrickGeometry g = brick_geometry<R>(padding, depth, height, width, chunk, false);
    const long long maps_size = volumes * g.map_voxels;
    const int tid = threadIdx.y * kTile + threadIdx.x;
    // The window is symmetric, so the adjoint's flipped taps are the taps.
    if (tid < 2 * R + 1) weights[tid] = taps[tid];
    const int row = g.row + threadIdx.y, col = g.col + threadIdx.x;

    for (long long p = blockIdx.y; p < volumes; p += gridDim.y) {
        const long long outer = p / inner_count, inner = p % inner_count;
        const C* maps = grad_maps + p * g.map_voxels;
        Window window = {};
        // Map plane d feeds volume planes d + offset - R .. d + offset + R.
        for (int d = g.first - g.offset - R; d < g.last - g.offset + R; ++d) {
            int map_d = d;
            bool plane_inside = d >= 0 && d < g.map_d;
            if (padding == PAD_REFLECT) {  // F is symmetric with reflection: F^T reflects too
                map_d = reflect_index(d, g.map_d);
                plane_inside = true;
            }
            // one 64-bit product per plane, 32-bit offsets in it (a plane has < 2^31 voxels: _launch3d)
            const C* map_plane = maps + (long long)(plane_inside ? map_d : 0) * g.map_h * g.map_w;
            // a loop per padding: in one loop the compiler computed the reflections for every padding and
            // selected (python -m bench.sass)
            const auto fill = [&](bool reflect) {
#pragma unroll 1
                for (int k = tid; k < kSide * kSide; k += kTile * kTile) {
                    const int r = k / kSide, c = k % kSide;
                    int map_row = g.row - R + r - g.offset, map_col = g.col - R + c - g.offset;
                    bool inside =
                        plane_inside && map_row >= 0 && map_row < g.map_h && map_col >= 0 && map_col < g.map_w;
                    if (reflect) {
                        map_row = reflect_index(map_row, g.map_h);
                        map_col = reflect_index(map_col, g.map_w);
                        inside = true;
                    }
                    const int at = map_row * g.map_w + map_col;
                    for (int q = 0; q < 3; ++q) tile[q][r][c] = inside ? map_plane[q * maps_size + at] : C(0);
                }
            };
            if (padding == PAD_REFLECT) {
                fill(true);
            } else {
                fill(false);
            }
            __syncthreads();
            C b[3];
            filter_tile<C, R, 3>(
                [&](int r, int c, C (&v)[3]) {
#pragma unroll
                    for (int q = 0; q < 3; ++q) v[q] = tile[q][r][c];
                },
                rows, weights, tid, b);
            window.push(b, ring, tid);
            const int z = d + g.offset - R;  // the volume plane whose window is now complete
            if (z >= g.first && row < height && col < width) {
                C blurred[3];
                window.filtered(weights, ring, tid, blurred);
                const T* xp = x + outer * x_outer + inner * x_inner;
                const T* yp = y + outer * y_outer + inner * y_inner;
                const C xv = load_voxel(xp, x_depth, x_row, x_col, z, row, col, depth, height, width, PAD_SAME,
                                        inv_range);
                const C yv = load_voxel(yp, y_depth, y_row, y_col, z, row, col, depth, height, width, PAD_SAME,
                                        inv_range);
                // P0 + 2 x P1 + 2 (x - y) P2 of the unshifted moments' partials: moved_partial with moves 2 x
                // and 2 (x - y), factored with one multiply fewer per voxel (python -m bench.sass)
                const C combined = blurred[0] + C(2) * (xv * blurred[1] + (xv - yv) * blurred[2]);
                C value;
                if constexpr (kMasked) {
                    // the volume's 1 / total weight (volume_weights: the forward's plane scales) folded into the
                    // constants; the L1 term weighted by m (normalized: all of it, below), 0 where m is 0
                    const C scale = (C)volume_weights[p];
                    value = combined * (inv_range * scale);
                    const bool reads_mask = kNormalized || l1 != C(0);
                    const C mv = reads_mask ? mask[outer * k_outer + inner * k_inner + z * k_depth + row * k_row +
                                                   col * k_col]
                                            : C(0);
                    if (l1 != C(0)) value += kNormalized ? l1_gradient(xv, yv, l1 * scale)
                                                         : mv * l1_gradient(xv, yv, l1 * scale);
                    if (kNormalized) value = mv > C(0) ? mv * value : C(0);
                } else {
                    value = combined * inv_range;
                    if (volume_weights) value *= (C)volume_weights[p];
                    if (coarse) value += pooled_adjoint3d(coarse, p, z, row, col, depth, height, width, variant);
                    if (l1 != C(0)) value += l1_gradient(xv, yv, l1);
                }
                typename GradientType<T>::type* gp =
                    grad + outer * g_outer + inner * g_inner + z * g_depth + row * g_row + col * g_col;
                if (accumulate) value += (C)element_value(*gp);
                store(gp, value);
            }
        }
    }
}

// A masked forward's finish (the forward's second launch, as ssim_finish is the unmasked one's): block
// (256), one block per output (gridDim.x of them at most, each looping), the block sums laid out as
// WeightedSums with `sums` of each kind and one plane slot per volume.
template <class O>
__global__ void __launch_bounds__(256) ssim3d_weighted_finish(double* __restrict__ block_sums, long long sums,
                                                              long long outputs, long long volumes, double a,
                                                              double b, O* __restrict__ out, long long out_stride) {
    __shared__ double scratch[256];
    cussim::weighted_finish_values(cussim::WeightedSums{block_sums, sums, outputs, volumes}, a, b, out, out_stride,
                                   scratch, blockIdx.x, gridDim.x, (int)threadIdx.x);
}

// Masked: the mask (compute type, its own strides, 0 to broadcast) pooled the same way into mask_out, laid out as
// x_out (a pooled mask per volume: MS-SSIM with a mask); the others ignore those arguments.
template <class T, bool Masked = false>
__global__ void __launch_bounds__(256, cussim::MinBlocks<T>::value) msssim3d_downsample(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_depth, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_depth, long long y_row, long long y_col,
    typename cussim::ComputeType<T>::type* __restrict__ x_out, typename cussim::ComputeType<T>::type* __restrict__ y_out,
    long long volumes, long long inner_count, int depth, int height, int width, int variant,
    const typename cussim::ComputeType<T>::type* __restrict__ mask, long long k_outer, long long k_inner,
    long long k_depth, long long k_row, long long k_col, typename cussim::ComputeType<T>::type* __restrict__ mask_out) {
    using namespace cussim;
    using C = typename ComputeType<T>::type;
    const long long out_d = pooled_size(depth, variant), out_h = pooled_size(height, variant),
                    out_w = pooled_size(width, variant);
    const long long total = volumes * out_d * out_h * out_w;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long p = i / (out_d * out_h * out_w);
        const int o_z = (int)(i / (out_h * out_w) % out_d), o_row = (int)(i / out_w % out_h), o_col = (int)(i % out_w);
        const long long outer = p / inner_count, inner = p % inner_count;
        const T* xp = x + outer * x_outer + inner * x_inner;
        const T* yp = y + outer * y_outer + inner * y_inner;
        const C* kp = Masked ? mask + outer * k_outer + inner * k_inner : nullptr;
        C sx = C(0), sy = C(0), sk = C(0);
        for (int k = 0; k < 8; ++k) {
            const int z = pooled_source(o_z, k / 4, depth, variant);
            const int row = pooled_source(o_row, k / 2 % 2, height, variant);
            const int col = pooled_source(o_col, k % 2, width, variant);
            if (z >= 0 && row >= 0 && col >= 0) {
                sx += (C)element_value(xp[z * x_depth + row * x_row + col * x_col]);
                sy += (C)element_value(yp[z * y_depth + row * y_row + col * y_col]);
                if (Masked) sk += kp[z * k_depth + row * k_row + col * k_col];
            }
        }
        x_out[i] = C(0.125) * sx;
        y_out[i] = C(0.125) * sy;
        if (Masked) mask_out[i] = C(0.125) * sk;
    }
}
