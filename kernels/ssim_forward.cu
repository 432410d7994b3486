// ssim_forward.cu: SSIM and its mean (docs/spec.rst sections 1 to 3) for a batch of image planes,
// with the partial maps that the backward turns into the gradient (sections 4 and 5); compiled
// after pixel.cuh, tile.cuh and msssim.cuh (cussim/_kernels.py, SOURCES).
//
// Kernels (T: float, double, __half, unsigned char or unsigned short, the
// stored element type; R: window radius, win_size = 2R+1; C, the compute type,
// is double for double inputs and float otherwise):
//   ssim_forward<T, R, Options>
//                        the map value at every map pixel; the per-block sums
//                        of the pixels that the mean counts (float64, fixed
//                        order), and as Options (ForwardOption) asks, the map
//                        and the three partial maps the gradient needs: g*Pmu,
//                        g*Pxx, g*Pdd (the exact gradient) or the terms of
//                        scikit-image's formula. Given `out`,
//                        the last block to finish writes the values as
//                        ssim_finish does (finish_if_last): one launch. With
//                        FORWARD_COMBINE (MS-SSIM's last scale), the last
//                        block of each image combines every scale's sums
//                        as msssim_combine does (combine_if_last).
//                        MS-SSIM's other scales take FORWARD_CS: the
//                        contrast-structure map A2 / B2 (section 6).
//                        FORWARD_MASK weights the mean by a mask, and
//                        FORWARD_NORMALIZED with it computes normalised
//                        convolution's map (section 9).
//   ssim_finish<O>       each output value from its block sums (float64, fixed
//                        order), as a + b * sum / count, stored as O (float or
//                        double), for block sums that no forward finished
//                        (MS-SSIM's per-image values, scikit-image's float64
//                        mean).
//
// Launch shapes: ssim_forward takes block (16, 16) and grid
// (tiles_h * tiles_w, rows <= min(planes, 65535): cussim._launch.plane_rows),
// tiles of 16 columns by Tile::kHeight rows (64 in float arithmetic, 16 in
// double) covering the map; blocks loop over planes, so any number of planes
// works. ssim_finish takes
// block (256) and one block per output.

namespace cussim {

// ssim_forward's compile-time options, its third template argument: a bitmask
// of the gradient formula whose partial maps it writes (none for FORWARD_VALUE),
// MS-SSIM's contrast-structure term in place of SSIM, whether it writes the
// map, whether the block sums hold the fused L1 term, and whether its last
// blocks combine MS-SSIM's scales (its last scale). A value call's kernel
// then holds no gradient, no map, no L1 and no combine code; name
// expressions spell them, e.g. ssim_forward<float, 5, cussim::FORWARD_CS | cussim::FORWARD_EXACT>.
enum ForwardOption {
    FORWARD_VALUE = 0,
    FORWARD_EXACT = GRADIENT_EXACT,
    FORWARD_SKIMAGE = GRADIENT_SKIMAGE,
    FORWARD_CS = 4,
    FORWARD_MAP = 8,
    FORWARD_L1 = 16,
    FORWARD_COMBINE = 32,  // MS-SSIM's last scale: the combine of every scale folded in (combine_if_last)
    // A mask's weights m (docs/spec.rst section 9, mask_mode="mean"): the block sums hold sum(m S) and sum(m),
    // the partial maps m * weight * P, and the finish divides by each result's total weight
    // (weighted_finish_if_last). Only this bit's specialisations read the mask: the others compile as
    // without it.
    FORWARD_MASK = 64,
    // With FORWARD_MASK, mask_mode="normalized" (normalised convolution): the moments F(m x) / W, ... with
    // W = F(m), the map 0 where m is 0, the partial maps divided by W (normalized_moments).
    FORWARD_NORMALIZED = 128
};
__device__ constexpr int forward_formula(int options) { return options & (FORWARD_EXACT | FORWARD_SKIMAGE); }
__device__ constexpr int forward_term(int options) { return options & FORWARD_CS ? TERM_CS : TERM_SSIM; }

// The forward's five moments mx, md, Exx, Eyy, Edd in float: (mx, md, Exx, Eyy) as one 16-byte element and
// Edd, so that a row is two loads in the vertical pass, not five, and an output two stores in the horizontal
// one. Bank conflicts, none: 16-byte accesses are served per quarter-warp; a quarter-warp of the horizontal
// pass stores one column of 8 consecutive rows, the pitch of 17 elements (68 words) puts row r + 1 at banks 4
// further (8 different groups of 4 banks); one of the vertical pass loads 8 consecutive elements of one row.
template <int R> struct MomentRows {
    static constexpr int kHaloRows = Tile<float, R>::kHaloRows, kPitch = Tile<float, R>::kRowsPitch;
    float4 quads[kHaloRows][kPitch];
    float dd[kHaloRows][kPitch];

    __device__ void store(int r, int c, const float (&v)[5]) {
        quads[r][c] = make_float4(v[0], v[1], v[2], v[3]);
        dd[r][c] = v[4];
    }
    __device__ void load(int r, int c, float (&v)[5]) const {
        const float4 q = quads[r][c];
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
        v[4] = dd[r][c];
    }
};
// Normalised convolution's rows (FORWARD_NORMALIZED): three quantities (the six would pass the 48 KiB of
// static shared memory beside the third tile, the weights; the other three lie over the tiles after the
// horizontal pass, normalized_moments), as a pair (PairOf) and a
// third value, so that a row is two loads in the vertical pass, not three, and an output two stores in the
// horizontal one. Bank conflicts, none: 8-byte (float) accesses are served per half-warp, 16-byte (double)
// per quarter-warp; the horizontal pass's half-warp (quarter-warp) stores one column of 16 (8) consecutive
// rows, 34 (68) words apart, at 16 (8) different bank pairs (quads); the vertical pass's loads consecutive
// elements of one row.
template <class C, int R> struct PairRows {
    static constexpr int kHaloRows = Tile<C, R>::kHaloRows, kPitch = Tile<C, R>::kRowsPitch;
    typename PairOf<C>::type pairs[kHaloRows][kPitch];
    C third[kHaloRows][kPitch];

    __device__ void store(int r, int c, const C (&v)[3]) {
        pairs[r][c] = pair(v[0], v[1]);
        third[r][c] = v[2];
    }
    __device__ void load(int r, int c, C (&v)[3]) const {
        const typename PairOf<C>::type p = pairs[r][c];
        v[0] = p.x;
        v[1] = p.y;
        v[2] = third[r][c];
    }
};
template <class C, int R, bool Normalized = false> struct ForwardRows { using type = PairRows<C, R>; };
template <int R> struct ForwardRows<double, R, false> { using type = FilteredRows<double, R, 5>; };
template <int R> struct ForwardRows<float, R, false> { using type = MomentRows<R>; };

// A pixel of normalised convolution (FORWARD_NORMALIZED) at a centre of weight `centre`: as it is where the
// weight is > 0, 0 (value and partials) where it is 0 (there W may be 0 too).
template <class C>
__device__ inline Pixel<C> centre_weighted(Pixel<C> px, C centre) {
    if (!(centre > C(0))) px.s = px.partial[0] = px.partial[1] = px.partial[2] = C(0);
    return px;
}

// The horizontal pass's rows of normalised convolution's six quantities (FORWARD_NORMALIZED): the first three
// (m x', m d', m) stored as they come, into `first`; the other three (m x'^2, m y'^2, m d'^2) held in
// registers, per filter call of the pass (its swept rows, then the rows left: at most two per thread, see
// horizontal_pass) and output, until every thread has read the tiles, then stored into `second`, which lies
// over them (release, after a barrier).
template <class C, int R> struct HeldRows {
    static constexpr int kHaloRows = Tile<C, R>::kHaloRows, kCols = Tile<C, R>::kHorizontalCols;
    static constexpr int kSwept = kHaloRows < 64 ? kHaloRows : kHaloRows / 64 * 64;  // horizontal_pass's, packed
    PairRows<C, R>& first;
    C held[2][kCols][3];

    __device__ void store(int r, int c, const C (&v)[6]) {
        const C head[3] = {v[0], v[1], v[2]};
        first.store(r, c, head);
        // which call and output: known at compile time in each store (warp & 7: the swept rows < 64), so the
        // held values stay in registers (indices written out, no array indexed at run time)
        if (r < kSwept)
            hold<0>(r, c, v);
        else
            hold<1>(r, c, v);
    }
    template <int kCall> __device__ void hold(int r, int c, const C (&v)[6]) {
#pragma unroll
        for (int o = 0; o < kCols; ++o)
            if ((c & (kCols - 1)) == o) {
#pragma unroll
                for (int q = 0; q < 3; ++q) held[kCall][o][q] = v[3 + q];
            }
    }
    // Each call's row and columns, as horizontal_pass (packed) gives them to thread t = 32 warp + lane: worked
    // out again here, not held across the pass (kept live through it, they spilled on sm_100).
    __device__ void release(PairRows<C, R>& second, int warp, int lane) const {
        constexpr int kLeft = kHaloRows - kSwept, kColGroups = kTile / kCols;
        const int r = lane + 32 * (warp / kColGroups), t = 32 * warp + lane;
        if (kSwept % 64 == 0 || r < kSwept)
            for (int o = 0; o < kCols; ++o) second.store(r, kCols * (warp % kColGroups) + o, held[0][o]);
        if constexpr (kLeft > 0)
            if (t < kColGroups * kLeft)
                for (int o = 0; o < kCols; ++o) second.store(kSwept + t % kLeft, kCols * (t / kLeft) + o, held[1][o]);
    }
};

// Normalised convolution's six filtered rows, read as one: `first` (m x', m d', m) and `second` (m x'^2,
// m y'^2, m d'^2).
template <class C, int R> struct SixRows {
    const PairRows<C, R>& first;
    const PairRows<C, R>& second;

    __device__ void load(int r, int c, C (&v)[6]) const {
        C a[3], b[3];
        first.load(r, c, a);
        second.load(r, c, b);
        for (int q = 0; q < 3; ++q) v[q] = a[q], v[3 + q] = b[q];
    }
};

// Normalised convolution's moments (FORWARD_NORMALIZED; docs/spec.rst section 9) of this thread's kRows
// pixels, from the tile of (x', y') pairs (0 where the weight is 0) and that of m: one horizontal pass over six
// quantities, m x', m d', m, m x'^2, m y'^2, m d'^2 (d' = x' - y'), the first three into `rows`, the others
// into `second`, which lies over the tiles (HeldRows: stored after a barrier); one vertical pass over the six;
// the moments F(m x') / W, F(m d') / W, ... into m[i], and 1 / W (0 where W is 0) into inv_w[i]. The shifts
// pass through the normalisation unchanged (F(m k) / W = k). Called by all 256 threads after the tile load's
// barrier; the tiles are overwritten: the next barrier (the block sum's) orders the next plane's tile load.
// With kL1 (the fused L1 term), the pixels' x - y (dx: 0 where the weight is 0) replace their centre weights in
// weight_tile, which the pass no longer reads after its barrier, for the pixel loop (the pairs are overwritten).
template <class C, int R, bool kL1, bool kPaired, class Pairs, class Weights>
__device__ inline void normalized_moments(PairRows<C, R>& rows, PairRows<C, R>& second, const Pairs& tile,
                                          Weights& weight_tile, const C* weights, int warp, int lane,
                                          int first_row, C kx, C ky, C (&m)[Tile<C, R>::kRows][5],
                                          C (&inv_w)[Tile<C, R>::kRows]) {
    constexpr int kRows = Tile<C, R>::kRows;
    HeldRows<C, R> held{rows};
#ifndef CUSSIM_EMULATOR
    // the block's 256 threads: horizontal_pass's rows left (t < 4 kLeft) then lie past its swept rows, at compile
    // time too (HeldRows)
    const int t = threadIdx.y * kTile + threadIdx.x;
    __builtin_assume(t >= 0 && t < kTile * kTile);
#endif
    const auto terms = [](C a, C b, C w, C (&v)[6]) {
        const C d = a - b, wa = w * a, wd = w * d;
        v[0] = wa;
        v[1] = wd;
        v[2] = w;
        v[3] = wa * a;
        v[4] = w * b * b;
        v[5] = wd * d;
    };
    // kPaired: two pixels per load (the tiles' pitch of 2 mod 4, ssim_forward's kPairedLoads)
    if constexpr (kPaired) {
        horizontal_pass<C, R, 6, true, 2>(held, weights, warp & 7, lane, [&](int r, int c, C (&v)[2][6]) {
            const float4 xyxy = *reinterpret_cast<const float4*>(&tile[r][c]);
            const float2 ww = *reinterpret_cast<const float2*>(&weight_tile[r][c]);
            terms(xyxy.x, xyxy.y, ww.x, v[0]);
            terms(xyxy.z, xyxy.w, ww.y, v[1]);
        });
    } else {
        horizontal_pass<C, R, 6, true>(held, weights, warp & 7, lane, [&](int r, int c, C (&v)[6]) {
            terms(tile[r][c].x, tile[r][c].y, weight_tile[r][c], v);
        });
    }
    C dx[kRows];
    if constexpr (kL1)
        for (int i = 0; i < kRows; ++i) {
            const auto xy = tile[R + first_row + i][R + (lane & 15)];
            dx[i] = (xy.x + kx) - (xy.y + ky);
        }
    __syncthreads();
    held.release(second, warp & 7, lane);
    if constexpr (kL1)
        for (int i = 0; i < kRows; ++i) weight_tile[R + first_row + i][R + (lane & 15)] = dx[i];
    __syncthreads();
    vertical_rows<C, R, 6>(SixRows<C, R>{rows, second}, weights, first_row, lane & 15, [&](int i, const C (&v)[6]) {
        const C inv = v[2] > C(0) ? C(1) / v[2] : C(0);
        inv_w[i] = inv;
        m[i][0] = v[0] * inv;
        m[i][1] = v[1] * inv;
        m[i][2] = v[3] * inv;
        m[i][3] = v[4] * inv;
        m[i][4] = v[5] * inv;
    });
}

}  // namespace cussim

// The forward's blocks per SM (TileMinBlocks): its block loads x and y and filters five moments. At
// R = 7 at most 3 (80 registers): at 64, the passes' 20 sums and 8 taps left no room for a few set-up
// values, which spilled (8 to 16 bytes). With FORWARD_COMBINE 1: that forward is MS-SSIM's last scale,
// the smallest image (a few blocks per plane), whose occupancy does not matter, and the combine's
// float64 log and exp need registers. __half's masked forward with partials at most 3 (80 registers): at 64,
// with the moments in registers through the formulas, it spilled 4 to 8 bytes on sm_90 (float's does not).
// sm_100 to sm_103 hold 4 blocks by shared memory as sm_90 does, but there ptxas spilled 4 to 16 bytes at 64
// registers in some 70 specialisations that fit on sm_90 (float and __half, R = 5 and 6): at most 3 blocks
// (80 registers). __half's fused L1 forward at R = 7 spilled 4 bytes at 80 (sm_80, sm_90): at most 2 (128).
// Normalised convolution's forward with partials (one pass over six quantities, normalized_moments) spilled 8
// to 16 bytes at 80 registers on sm_100 (R = 5; sm_90 fits): there at most 2 blocks (128). Its fused L1 form
// spilled 4 bytes at 80 on sm_80 (R = 5: float, unsigned char, unsigned short, under CuPy's -ftz=true): at
// most 2 blocks there (sm_87 builds as sm_80).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000 && __CUDA_ARCH__ < 1100
constexpr int kForwardMostBlocks = 3, kNormalizedPartialsMostBlocks = 2, kNormalizedL1PartialsMostBlocks = 2;
#elif defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 800 || __CUDA_ARCH__ == 870)
constexpr int kForwardMostBlocks = 4, kNormalizedPartialsMostBlocks = 3, kNormalizedL1PartialsMostBlocks = 2;
#else
constexpr int kForwardMostBlocks = 4, kNormalizedPartialsMostBlocks = 3, kNormalizedL1PartialsMostBlocks = 3;
#endif
template <class T> struct IsHalf { static constexpr bool value = false; };
template <> struct IsHalf<__half> { static constexpr bool value = true; };
template <class T, int R, int Options> struct ForwardMinBlocks {
    using C = typename cussim::ComputeType<T>::type;
    static constexpr bool kHalfMaskedPartials =
        IsHalf<T>::value && (Options & cussim::FORWARD_MASK) && cussim::forward_formula(Options) != cussim::GRADIENT_NONE;
    static constexpr bool kHalfL1Wide = IsHalf<T>::value && R == 7 && (Options & cussim::FORWARD_L1);
    static constexpr int value =
        Options & cussim::FORWARD_COMBINE ? 1
        // normalised convolution: 3 tiles and 3 filtered rows, its moments in registers: 80 registers (at
        // R = 7, 128: 80 spilled 8 bytes on sm_90)
        : Options & cussim::FORWARD_NORMALIZED
            ? cussim::TileMinBlocks<T, cussim::TileSharedBytes<C, 7, 3, 3>::value,
                                    R == 7                                                  ? 2
                                    : cussim::forward_formula(Options) == cussim::GRADIENT_NONE ? 3
                                    : Options & cussim::FORWARD_L1 ? kNormalizedL1PartialsMostBlocks
                                                                   : kNormalizedPartialsMostBlocks>::value
            : cussim::TileMinBlocks<T, cussim::TileSharedBytes<C, 7, 2, 5>::value,
                                    kHalfL1Wide ? 2 : R < 7 && !kHalfMaskedPartials ? kForwardMostBlocks : 3>::value;
};

template <class T, int R, int Options>
__global__ void __launch_bounds__(256, ForwardMinBlocks<T, R, Options>::value) ssim_forward(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_row, long long y_col,
    typename cussim::ComputeType<T>::type* __restrict__ map, long long m_outer, long long m_inner, long long m_row,
    long long m_col, double* __restrict__ block_sums, typename cussim::ComputeType<T>::type* __restrict__ grad_maps,
    long long planes, long long inner_count, int height, int width, int padding, int crop,
    const typename cussim::ComputeType<T>::type* __restrict__ taps, typename cussim::ComputeType<T>::type inv_range,
    typename cussim::ComputeType<T>::type c1, typename cussim::ComputeType<T>::type c2,
    typename cussim::ComputeType<T>::type cov, typename cussim::ComputeType<T>::type weight, double sum_scale,
    double l1, typename cussim::ComputeType<T>::type* __restrict__ out, long long out_stride, long long outputs,
    double count, double a, double b, const double* __restrict__ scale_table, int scales, long long group,
    double share, double guard, double* __restrict__ image_values, double* __restrict__ plane_weights,
    const typename cussim::ComputeType<T>::type* __restrict__ mask, long long k_outer, long long k_inner,
    long long k_row, long long k_col) {
    using namespace cussim;
    using C = typename ComputeType<T>::type;
    using Shape = Tile<C, R>;
    constexpr int formula = forward_formula(Options);
    static_assert(formula != GRADIENT_SKIMAGE || forward_term(Options) == TERM_SSIM, "skimage's formula is SSIM's");
    constexpr int kRows = Shape::kRows, kHeight = Shape::kHeight, kHaloRows = Shape::kHaloRows;
    constexpr int kWarps = kTile * kTile / 32;
    constexpr bool kMasked = (Options & FORWARD_MASK) != 0, kNormalized = (Options & FORWARD_NORMALIZED) != 0;
    static_assert(!kNormalized || (kMasked && forward_term(Options) == TERM_SSIM && formula != GRADIENT_SKIMAGE),
                  "normalised convolution: SSIM's, with its mask");
    // (x', y'): x and y scaled and shifted, around the tile, as pairs (one 8-byte load per halo pixel in the
    // horizontal pass, not two); normalized: 0 where m is 0, and the weights m around the tile
    // normalized: rows enough for the second three filtered quantities too, which lie over it after the
    // horizontal pass (normalized_moments)
    constexpr int kPairBytes = (int)sizeof(typename PairOf<C>::type), kSecondBytes = (int)sizeof(PairRows<C, R>);
    // float's halo: a pitch of 2 mod 4 pairs (26 at R = 5, not tile.cuh's odd 27), so that the horizontal pass
    // reads two pairs per 16-byte load (columns c, c + 1 with c even: 16-byte aligned; normalized: and two
    // weights per 8-byte load); a quarter-warp's 8 consecutive rows then lie an odd number of 16 bytes apart
    // (13 at R = 5): 8 different groups of 4 banks, no conflict (the weights: a half-warp's 16 rows at 16
    // different pairs of banks). The tile load's stores stay one row per warp (consecutive elements).
    // Not normalized with the L1 term or the map (normalized_moments): paired, those spilled 8 to 16 bytes at 80
    // registers (with the L1 term on sm_80, with the map on sm_90); they keep one pixel per load.
    constexpr bool kPairedLoads = sizeof(C) == 4 && !(kNormalized && (Options & (FORWARD_L1 | FORWARD_MAP)));
    constexpr int kTilePitch = kPairedLoads ? Shape::kHaloCols + (6 - Shape::kHaloCols % 4) % 4 : Shape::kPitch;
    static_assert(!kPairedLoads || (kTilePitch % 4 == 2 && kTilePitch >= Shape::kHaloCols), "pairs 16-byte aligned");
    constexpr int kTileRows = kNormalized && kSecondBytes > kHaloRows * kTilePitch * kPairBytes
                                  ? (kSecondBytes + kTilePitch * kPairBytes - 1) / (kTilePitch * kPairBytes)
                                  : kHaloRows;
    __shared__ __align__(16) typename PairOf<C>::type tile[kTileRows][kTilePitch];
    __shared__ __align__(16) C weight_tile[kNormalized ? kHaloRows : 1][kNormalized ? kTilePitch : 1];
    // horizontally filtered mx, md, Exx, Eyy, Edd (d = x - y); normalized: m x, m d, m, then m x^2, m y^2,
    // m d^2 (16-byte aligned: MomentRows' elements)
    __shared__ __align__(16) typename ForwardRows<C, R, kNormalized>::type rows;
    __shared__ C weights[2 * R + 1];
    __shared__ double scratch[kMasked ? 2 * kWarps : kWarps];  // masked: the weights' block sum has 8 more
    // The plane index, the planes' offsets, the shifts and their pixel's offsets wait in shared memory,
    // not in registers through the passes (which spilled under the register cap: ptxas kept each
    // thread's tile-load offsets across the planes). Thread 0 writes them; the barriers before and after
    // the tile load and in the block sum order it.
    __shared__ struct {
        PlaneIndex plane;
        long long map_offset, mask_offset;
        long long grad_at;  // the plane's first element in each partial map (p * map_pixels), thread 0's
        long long maps_size;  // the partial maps' distance (planes * map_pixels), thread 0's, once
        long long shift_at[2];  // the shift pixel's offset in x's and y's plane (thread 0's, not every thread's)
        long long plane_at[3];  // the plane's offset in x, in y and (normalized) in the mask
        C shift[2];
    } held;

    const TileGeometry g = tile_geometry<R, kHeight>(padding, height, width, true);
    const int tid = threadIdx.y * kTile + threadIdx.x, warp = tid >> 5, lane = tid & 31;
    if (tid < 2 * R + 1) weights[tid] = taps[tid];
    const int top = g.row + g.offset - R, left = g.col + g.offset - R;  // the halo, in image pixels
    // The fast tile load (below): the halo inside the image, and x's and y's steps of kWarps rows as 32-bit
    // numbers (one widening multiply-add per address, not a 64-bit addition); the other tiles load as the
    // border tiles do.
    constexpr long long kNarrowRow = (1LL << 31) / kWarps;
    const bool inside = top >= 0 && left >= 0 && top + kHaloRows <= height && left + Shape::kHaloCols <= width &&
                        x_row > -kNarrowRow && x_row < kNarrowRow && y_row > -kNarrowRow && y_row < kNarrowRow &&
                        (!kNormalized || (k_row > -kNarrowRow && k_row < kNarrowRow));  // and the weights'
    const int shift_row = Shape::shift_row(g.row + g.offset, height);
    const int shift_col = Shape::shift_col(g.col + g.offset, width);
    // this thread's map pixels: column col, rows first_row .. first_row + kRows - 1 of the tile
    const int first_row = Shape::first_row(warp, lane), col = g.col + (lane & 15);
    // how many of them lie in the map (one number, not kRows tests kept across the plane loop)
    const int rows_here = col < g.map_w ? min(kRows, g.map_h - (g.row + first_row)) : 0;
    // whether the mean counts this thread's column (the rows are tested per pixel)
    const bool col_counted = col >= crop && col < g.map_w - crop;
    // Border tiles (the halo leaves the image): the image row of each halo row and the image column of
    // each halo column, or -1 for a zero (halo_source), worked out once for every plane by the threads
    // t < kHaloRows and t < kHaloCols (a reflection's division in one or three warps, not in every one).
    __shared__ int halo_rows[kHaloRows], halo_cols[Shape::kHaloCols];
    if (tid < kHaloRows) halo_rows[tid] = halo_source(top + tid, height, padding);
    if (tid < Shape::kHaloCols) halo_cols[tid] = halo_source(left + tid, width, padding);
    // Interior tiles: the element offsets in a plane of x, of y (and normalized, of the mask) of each warp's
    // first halo row (top + w) and of each lane's halo column (left + l), worked out once for every plane by
    // the threads t < kWarps + kHaloCols, so that a thread's first address in a plane is three additions, not
    // four 64-bit products.
    __shared__ long long halo_at[kNormalized ? 3 : 2][kWarps + Shape::kHaloCols];
    if (tid < kWarps) {
        halo_at[0][tid] = (long long)(top + tid) * x_row;
        halo_at[1][tid] = (long long)(top + tid) * y_row;
        if constexpr (kNormalized) halo_at[2][tid] = (long long)(top + tid) * k_row;
    } else if (tid < kWarps + Shape::kHaloCols) {
        halo_at[0][tid] = (long long)(left + tid - kWarps) * x_col;
        halo_at[1][tid] = (long long)(left + tid - kWarps) * y_col;
        if constexpr (kNormalized) halo_at[2][tid] = (long long)(left + tid - kWarps) * k_col;
    }
    if (tid == 0) {
        held.maps_size = planes * g.map_pixels;  // read per plane: not a 64-bit product per thread and plane
        held.plane.start(inner_count);
        held.shift_at[0] = shift_row * x_row + shift_col * x_col;
        held.shift_at[1] = shift_row * y_row + shift_col * y_col;
    }

    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        if (tid == 0) {
            const long long outer = held.plane.outer, inner = held.plane.inner;
            held.plane_at[0] = outer * x_outer + inner * x_inner;
            held.plane_at[1] = outer * y_outer + inner * y_inner;
            held.shift[0] = tile_shift(x + held.plane_at[0], held.shift_at[0], inv_range);
            held.shift[1] = tile_shift(y + held.plane_at[1], held.shift_at[1], inv_range);
            if (Options & FORWARD_MAP) held.map_offset = outer * m_outer + inner * m_inner;
            if (formula != GRADIENT_NONE) held.grad_at = p * g.map_pixels;  // a 64-bit product once, not per thread
            // the mask's plane, at the map's origin (map pixel (i, j) weighs mask pixel (i + offset, j + offset))
            if (kMasked) {
                held.plane_at[2] = outer * k_outer + inner * k_inner;
                held.mask_offset = held.plane_at[2] + g.offset * (k_row + k_col);
            }
            // normalized: no shift from a pixel of weight 0, whose value may be anything (the backward agrees)
            if (kNormalized && !(mask[held.plane_at[2] + shift_row * k_row + shift_col * k_col] > C(0)))
                held.shift[0] = held.shift[1] = C(0);
        }
        __syncthreads();
        const long long outer = held.plane.outer, inner = held.plane.inner;
        const T* xp = x + held.plane_at[0];
        const T* yp = y + held.plane_at[1];
        const C kx = held.shift[0], ky = held.shift[1];
        if (lane < Shape::kHaloCols) {  // warp w loads halo rows w, w + 8, ..., lane = column
            if (inside) {
                // The fast path (most tiles): the halo inside the image, no bounds test, no padding, all
                // loads in flight (warp_halo_rows), a thread's first addresses from the plane's offsets and
                // the tables halo_at, the next ones a row step further, shared ones at constant offsets.
                const T* xo = xp + (halo_at[0][warp] + halo_at[0][kWarps + lane]);
                const T* yo = yp + (halo_at[1][warp] + halo_at[1][kWarps + lane]);
                const int x_step = (int)(kWarps * x_row), y_step = (int)(kWarps * y_row);
                typename PairOf<C>::type* to = &tile[warp][lane];
                if constexpr (kNormalized) {  // and the weights, x' and y' 0 where they are 0
                    const C* ko = mask + (held.plane_at[2] + halo_at[2][warp] + halo_at[2][kWarps + lane]);
                    const int k_step = (int)(kWarps * k_row);
                    C* tm = &weight_tile[warp][lane];
                    // x and y loaded wherever the weight is (the halo lies inside the images), then
                    // selected: no address formed under the weight's predicate
                    warp_halo_rows<kHaloRows>(warp, [&](int i) {
                        const C w = ko[(long long)k_step * i];
                        const C vx = (C)element_value(xo[(long long)x_step * i]) * inv_range - kx;
                        const C vy = (C)element_value(yo[(long long)y_step * i]) * inv_range - ky;
                        to[kWarps * kTilePitch * i] = w > C(0) ? pair(vx, vy) : pair(C(0), C(0));
                        tm[kWarps * kTilePitch * i] = w;
                    });
                } else {
                    warp_halo_rows<kHaloRows>(warp, [&](int i) {
                        to[kWarps * kTilePitch * i] =
                            pair((C)element_value(xo[(long long)x_step * i]) * inv_range - kx,
                                 (C)element_value(yo[(long long)y_step * i]) * inv_range - ky);
                    });
                }
            } else {
                // the image row and column where they are >= 0, zero-extended: 32 x 64-bit products without
                // the sign word (the same offsets)
                const int halo_col = halo_cols[lane];
                const long long col_at = unsigned_index(halo_col);
#pragma unroll 1
                for (int r = warp; r < kHaloRows; r += kWarps) {
                    const int row = halo_rows[r];
                    const long long row_at = unsigned_index(row);
                    C vx = C(0), vy = C(0);
                    if (row >= 0 && halo_col >= 0) {
                        vx = (C)element_value(xp[row_at * x_row + col_at * x_col]) * inv_range;
                        vy = (C)element_value(yp[row_at * y_row + col_at * y_col]) * inv_range;
                    }
                    if constexpr (kNormalized) {  // the weight (0 outside, as the images), x' and y' 0 where it is 0
                        const C w = row >= 0 && halo_col >= 0
                                        ? mask[outer * k_outer + inner * k_inner + row_at * k_row + col_at * k_col]
                                        : C(0);
                        weight_tile[r][lane] = w;
                        if (!(w > C(0))) vx = kx, vy = ky;
                    }
                    tile[r][lane] = pair(vx - kx, vy - ky);
                }
            }
        }
        __syncthreads();
        if (tid == 0) held.plane.advance(inner_count);  // every thread has read it: the next plane's
        double counted_sum = 0.0;  // this thread's pixels that the mean counts, in row order
        // Masked: their weights' sum in the same order, whether one was negative (a NaN or an infinite weight
        // makes the sum NaN or infinite by itself: the host refuses every such total), and this thread's
        // first weight, then one row further per pixel (a pointer step, not a 64-bit product per pixel).
        // Normalized: the least weight, 0 at most, in place of the flag (a min per pixel, not a test and a flag;
        // in the mean mode the min spilled 8 bytes on sm_90 in the exact L1 forwards at 64 registers).
        double weight_sum = 0.0;
        bool negative = false;
        C lowest = C(0);
        if constexpr (kNormalized) {
            // Normalised convolution (docs/spec.rst section 9): its moments stay in registers (the rows
            // are too small to hold them), and each pixel's centre weight decides its map value (0 where
            // it is 0) and scales its share of the sums, its partials divided by W (as the loop below).
            C m[kRows][5], inv_w[kRows];
            normalized_moments<C, R, (Options & FORWARD_L1) != 0, kPairedLoads>(
                rows, *reinterpret_cast<PairRows<C, R>*>(&tile[0][0]), tile, weight_tile, weights, warp, lane, first_row,
                kx, ky, m, inv_w);
            // the centre weights from the weights' tile (one shared load per pixel), or with the L1 term, whose x - y
            // lies there now, from the mask
            const C* kq = (Options & FORWARD_L1) != 0
                              ? mask + held.mask_offset + (long long)(g.row + first_row) * k_row + col * k_col
                              : nullptr;
#pragma unroll
            for (int i = 0; i < kRows; ++i) {
                if (i >= rows_here) break;
                const int row = g.row + first_row + i;
                const C sx = held.shift[0], sy = held.shift[1];  // kx, ky
                C centre;
                if constexpr ((Options & FORWARD_L1) != 0) {
                    centre = *kq;
                    kq += k_row;
                } else {
                    centre = weight_tile[R + first_row + i][R + (lane & 15)];
                }
                const Pixel<C> px =
                    centre_weighted(ssim_pixel(m[i], sx, sy, c1, c2, cov, TERM_SSIM, formula), centre);
                if (Options & FORWARD_MAP) map[held.map_offset + row * m_row + col * m_col] = px.s;
                const bool counted = col_counted && row >= crop && row < g.map_h - crop;
                const C weight_here = counted ? centre : C(0);
                lowest = fmin(lowest, centre);
                weight_sum += (double)weight_here;
                double counted_value = counted ? (double)px.s : 0.0;
                if (Options & FORWARD_L1 && counted)  // the L1 term: x - y where the centre weight was (normalized_moments)
                    counted_value = with_l1(counted_value, weight_tile[R + first_row + i][R + (lane & 15)], sum_scale, l1);
                counted_sum += (double)weight_here * counted_value;
                if (formula != GRADIENT_NONE) {
                    const C w = weight_here * weight * inv_w[i];
                    const long long at = held.grad_at + (long long)row * g.map_w + col;
                    for (int q = 0; q < 3; ++q) grad_maps[q * held.maps_size + at] = w * px.partial[q];
                }
            }
        } else {
        if constexpr (kPairedLoads) {  // two pairs per load (kTilePitch): columns c and c + 1
            horizontal_pass<C, R, 5, true, 2>(rows, weights, warp, lane, [&](int r, int c, C (&v)[2][5]) {
                const float4 xyxy = *reinterpret_cast<const float4*>(&tile[r][c]);
                moment_terms(xyxy.x, xyxy.y, v[0]);
                moment_terms(xyxy.z, xyxy.w, v[1]);
            });
        } else {
            horizontal_pass<C, R, 5, true>(rows, weights, warp, lane, [&](int r, int c, C (&v)[5]) {
                const auto xy = tile[r][c];
                moment_terms(xy.x, xy.y, v);
            });
        }
        __syncthreads();
        // The vertical pass leaves each pixel's five moments in registers, m[i], and the pixels' formulas
        // follow, unrolled (m indexed at compile time; no staging through shared memory, no barrier).
        C m[kRows][5];
        vertical_rows<C, R, 5>(rows, weights, first_row, lane & 15, [&](int i, const C (&v)[5]) {
            for (int q = 0; q < 5; ++q) m[i][q] = v[q];
        });
        // The partial maps' plane and distance from held.grad_at and held.maps_size (thread 0's products), but in
        // SSIM's mean-mode masked forward, where those spilled 8 and 16 bytes on sm_90 under 64 registers (it
        // makes the products again).
        constexpr bool kMaskedMean = kMasked && forward_term(Options) == TERM_SSIM;
        const C* kq = kMasked ? mask + held.mask_offset + (long long)(g.row + first_row) * k_row + col * k_col
                              : nullptr;
        // Without partials or map every row's formula runs, and the sums count none past the map; with them the
        // rows past it are skipped (a branch between the formulas: without it, the exact forward spilled 24 to
        // 32 bytes on sm_90 under its 64 registers, the map 4).
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
            if ((formula != GRADIENT_NONE || Options & FORWARD_MAP) && i >= rows_here) break;
            const int row = g.row + first_row + i;
            C v[5];
            for (int q = 0; q < 5; ++q) v[q] = m[i][q];
            const C sx = held.shift[0], sy = held.shift[1];  // kx, ky
            const Pixel<C> px = ssim_pixel(v, sx, sy, c1, c2, cov, forward_term(Options), formula);
            if (Options & FORWARD_MAP) map[held.map_offset + row * m_row + col * m_col] = px.s;
            const bool counted = col_counted && row >= crop && row < g.map_h - crop;
            // masked: this pixel's weight m, 0 where the mean does not count it, scales its share of the sums
            C m = C(0);
            if (kMasked) {
                m = counted ? *kq : C(0);
                negative |= m < C(0);
                weight_sum += (double)m;
                kq += k_row;
            }
            // m S in C (m = 1: bitwise S); the L1 term's value is weighted after it is added (in double)
            constexpr bool kWeightInC = kMasked && !(Options & FORWARD_L1);
            double counted_value = counted ? (double)(kWeightInC ? px.s * m : px.s) : 0.0;
            if (Options & FORWARD_L1 && counted) {  // the fused L1 term: the tile holds this pixel, scaled and shifted
                const int r = R + first_row + i, c = R + (lane & 15);
                const C dx = (tile[r][c].x + sx) - (tile[r][c].y + sy);
                counted_value = with_l1(counted_value, dx, sum_scale, l1);
                if (kMasked) counted_value *= (double)m;
            }
            counted_sum += counted_value;
            if (formula != GRADIENT_NONE) {
                const C w = kMasked ? m * weight : partial_weight(counted, formula, weight);  // m: 0 where not counted
                const long long at = (kMaskedMean ? p * g.map_pixels : held.grad_at) + (long long)row * g.map_w + col;
                for (int q = 0; q < 3; ++q)
                    grad_maps[q * (kMaskedMean ? planes * g.map_pixels : held.maps_size) + at] = w * px.partial[q];
            }
        }
        }
        if (kMasked && (negative || lowest < C(0))) weight_sum = (double)__uint_as_float(0x7fc00000u);  // NaN: a negative weight
        if (block_sums && kMasked) {  // the weights' sums follow the values' (WeightedSums)
            block_sum_pair(counted_sum, weight_sum, scratch, tid);
            if (tid == 0) {
                block_sums[p * gridDim.x + blockIdx.x] = counted_sum;
                block_sums[(planes + p) * gridDim.x + blockIdx.x] = weight_sum;
            }
        } else if (block_sums) {
            const double total = block_sum(counted_sum, scratch, tid);
            if (tid == 0) block_sums[p * gridDim.x + blockIdx.x] = total;
        } else {
            __syncthreads();  // the next plane overwrites the tiles
        }
    }
    // rows (at least 5 * 18 * 17 values of C, over 6 KiB) serves as the finish's 256 doubles, or the
    // combine's kCombineScratch.
    if (outputs) {
        static_assert(sizeof(rows) >= (kMasked ? kMaskedCombineScratch : kCombineScratch) * sizeof(double),
                      "rows holds the finish's scratch");
        double* last_scratch = reinterpret_cast<double*>(&rows);
        if constexpr ((Options & FORWARD_COMBINE) != 0)  // masked: the scales' weighted means (MS-SSIM's mask)
            combine_if_last<kMasked>(block_sums, scale_table, scales, planes, group, share, guard, image_values,
                            plane_weights, out, out_stride, outputs, count, a, b, last_scratch, tid);
        else if constexpr (kMasked)
            weighted_finish_if_last(WeightedSums{block_sums, planes * gridDim.x, outputs, planes}, a, b, out,
                                    out_stride, last_scratch, tid);
        else
            finish_if_last(block_sums, planes * gridDim.x, outputs, count, a, b, out, out_stride, last_scratch, tid);
    }
}

template <class O>
__global__ void __launch_bounds__(256) ssim_finish(const double* __restrict__ block_sums, long long per_output,
                                                   long long outputs, double count, double a, double b,
                                                   O* __restrict__ out, long long out_stride) {
    __shared__ double scratch[256];
    cussim::finish_values(block_sums, per_output, outputs, count, a, b, out, out_stride, scratch, blockIdx.x,
                          gridDim.x, (int)threadIdx.x);
}
