// ssim.cu: SSIM, its mean and its exact gradient (spec.md sections 1 to 4) for a
// batch of image planes.
//
// Kernels (T: float, double, __half, unsigned char or unsigned short, the
// stored element type; R: window radius, win_size = 2R+1; C, the compute type,
// is double for double inputs and float otherwise):
//   ssim_forward<T, R>   the map value at every map pixel; optionally the map,
//                        the per-block sums of the pixels that the mean counts
//                        (float64, fixed order), and the three partial maps the
//                        gradient needs: g*Pmu, g*Pxx, g*Pxy (the exact gradient)
//                        or the terms of scikit-image's formula.
//   ssim_backward<T, R>  the gradient with respect to x: the adjoint filter F^T
//                        of the three partial maps, combined with x and y
//                        (spec.md section 4), written or added into grad.
//   ssim_finish<O>       each output value from its block sums (float64, fixed
//                        order), as a + b * sum / count, stored as O (float or
//                        double).
//
// Launch shapes: forward and backward take block (16, 16) and grid
// (tiles_h * tiles_w, min(planes, 65535)), the tiles covering the map
// (forward) or the image (backward); blocks loop over planes, so any number
// of planes works. ssim_finish takes block (256) and one block per output.
// Every image array is addressed by element strides (int64): plane
// p = outer * inner_count + inner, then row and column; a stride of 0
// broadcasts (one reference image for a whole batch). Workspace arrays
// (the partial maps, three planes x map blocks; the block sums) are contiguous.
//
// Per block, the (16+2R)^2 halo tile goes to shared memory, a horizontal pass
// filters each tile row, and a vertical pass finishes the filter in
// registers. Zero padding ("same"), the valid interior ("valid") or
// half-sample reflection ("reflect") decide what the halo holds.
//
// This file compiles unchanged with NVRTC and, for the CPU emulator, with g++
// after cuda_emulator.h; it includes no header.

#ifndef CUSSIM_EMULATOR
// NVRTC has no cuda_fp16.h of its own: a 16-bit storage type of the same name.
struct __align__(2) __half {
    unsigned short __x;
};
__device__ inline unsigned short __half_as_ushort(__half h) { return h.__x; }
__device__ inline __half __ushort_as_half(unsigned short bits) {
    __half h;
    h.__x = bits;
    return h;
}
#endif

namespace cussim {

constexpr int kTile = 16;
enum Padding { PAD_SAME = 0, PAD_VALID = 1, PAD_REFLECT = 2 };

template <class T> struct ComputeType { using type = float; };
template <> struct ComputeType<double> { using type = double; };
// Blocks per SM that ptxas must fit (it caps registers at 64K / (256 * n)):
// 4 for float arithmetic (64 registers), 1 for double, whose kernels would
// spill under a lower cap on some architectures.
template <class T> struct MinBlocks { static constexpr int value = 4; };
template <> struct MinBlocks<double> { static constexpr int value = 1; };
// The gradient has x's floating type; integer images get a float gradient.
template <class T> struct GradientType { using type = float; };
template <> struct GradientType<double> { using type = double; };
template <> struct GradientType<__half> { using type = __half; };

// IEEE half bits to float, exactly (no header, no intrinsic needed).
__device__ inline float half_bits_to_float(unsigned short h) {
    const unsigned int sign = (unsigned int)(h & 0x8000u) << 16;
    const unsigned int exponent = (h >> 10) & 0x1fu;
    const unsigned int mantissa = h & 0x3ffu;
    if (exponent == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0) return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = (float)mantissa * 5.9604644775390625e-08f;
    return sign ? -magnitude : magnitude;
}

__device__ inline float element_value(float v) { return v; }
__device__ inline double element_value(double v) { return v; }
__device__ inline float element_value(unsigned char v) { return (float)v; }
__device__ inline float element_value(unsigned short v) { return (float)v; }
__device__ inline float element_value(__half v) { return half_bits_to_float(__half_as_ushort(v)); }

// float to IEEE half bits, round to nearest even (overflow to infinity, NaN kept).
__device__ inline unsigned short float_to_half_bits(float f) {
    const unsigned int x = __float_as_uint(f), sign = (x >> 16) & 0x8000u, magnitude = x & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);
    if (magnitude >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);
    if (magnitude < 0x38800000u) {  // a subnormal half (or zero): round magnitude / 2^-24
        const float scaled = __uint_as_float(magnitude) * 16777216.0f;  // exact
        return (unsigned short)(sign | (unsigned int)__float2int_rn(scaled));
    }
    unsigned int bits = (magnitude >> 13) - (112u << 10);
    const unsigned int rest = magnitude & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (bits & 1u))) ++bits;
    return (unsigned short)(sign | bits);
}

__device__ inline void store(float* p, float v) { *p = v; }
__device__ inline void store(double* p, double v) { *p = v; }
__device__ inline void store(__half* p, float v) { *p = __ushort_as_half(float_to_half_bits(v)); }

// Round-to-nearest products and sums that the compiler may not fuse: with x == y
// bitwise, A1 == B1 and A2 == B2 exactly, so S is exactly 1.
__device__ inline float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ inline float add(float a, float b) { return __fadd_rn(a, b); }
__device__ inline double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ inline double add(double a, double b) { return __dadd_rn(a, b); }

// Half-sample symmetric index (dcba abcd dcba), any distance outside [0, n).
__device__ inline int reflect_index(int i, int n) {
    const int period = 2 * n;
    i %= period;
    if (i < 0) i += period;
    return i < n ? i : period - 1 - i;
}

template <class T, class C>
__device__ inline C load_scaled(const T* plane, long long row_stride, long long col_stride, int row, int col,
                                int height, int width, int padding, C inv_range) {
    if (padding == PAD_REFLECT) {
        row = reflect_index(row, height);
        col = reflect_index(col, width);
    } else if (row < 0 || row >= height || col < 0 || col >= width) {
        return C(0);
    }
    return (C)element_value(plane[row * row_stride + col * col_stride]) * inv_range;
}

// What the forward writes into the three partial maps (the backward combines
// them as map0 + 2 x map1 + y map2, each blurred by F^T):
//   GRADIENT_EXACT: dS/dmx, dS/dExx, dS/dExy (spec.md section 4), zero where a
//                   clamp is active; the gradient of the returned mean wrt x.
//   GRADIENT_SKIMAGE: scikit-image's formula (spec.md section 5), which the
//                   drop-in reproduces: (mx (A2 - A1) - my (B2 - B1) S) / D,
//                   A1 / (2 D) and -S / B2, weighted over the whole map.
enum GradientFormula { GRADIENT_NONE = 0, GRADIENT_EXACT = 1, GRADIENT_SKIMAGE = 2 };

// SSIM at one pixel from the five filtered moments (spec.md section 1):
// variances clamped at 0, no covariance where a window is flat, S clamped to
// [-1, 1]; and the three partial-map values of `formula`: those of the exact
// gradient are zero where S is clamped, and dS/dExx is zero where sxx is.
template <class C> struct Pixel {
    C s, partial[3];
};

template <class C>
__device__ inline Pixel<C> ssim_pixel(C mx, C my, C exx, C eyy, C exy, C c1, C c2, C cov, int formula) {
    const C mxx = mul(mx, mx), myy = mul(my, my), mxy = mul(mx, my);
    const C sxx_raw = mul(cov, add(exx, -mxx));
    const C syy_raw = mul(cov, add(eyy, -myy));
    const bool free_sxx = sxx_raw > C(0), free_sxy = free_sxx && syy_raw > C(0);
    const C sxx = free_sxx ? sxx_raw : C(0);
    const C syy = syy_raw > C(0) ? syy_raw : C(0);
    const C sxy = free_sxy ? mul(cov, add(exy, -mxy)) : C(0);
    const C a1 = add(mul(C(2), mxy), c1);
    const C a2 = add(mul(C(2), sxy), c2);
    const C b1 = add(add(mxx, myy), c1);
    const C b2 = add(add(sxx, syy), c2);
    const C d = mul(b1, b2);
    const C s_raw = mul(a1, a2) / d;
    Pixel<C> out;
    out.s = s_raw > C(1) ? C(1) : (s_raw < C(-1) ? C(-1) : s_raw);
    out.partial[0] = out.partial[1] = out.partial[2] = C(0);
    if (formula == GRADIENT_NONE) return out;
    const C s = out.s, inv_b1 = C(1) / b1, inv_b2 = C(1) / b2, inv_d = inv_b1 * inv_b2;
    if (formula == GRADIENT_EXACT && s == s_raw) {
        // Derivatives of the unclamped covariance: at a flat window of x, sxy
        // moves to first order with x while sxx moves only to second order.
        out.partial[0] = C(2) * my * (a2 - cov * a1) * inv_d - C(2) * mx * s * inv_b1 +
                         (free_sxx ? C(2) * cov * mx * s * inv_b2 : C(0));
        out.partial[1] = free_sxx ? -cov * s * inv_b2 : C(0);
        out.partial[2] = C(2) * cov * a1 * inv_d;
    } else if (formula == GRADIENT_SKIMAGE) {
        out.partial[0] = (mx * (a2 - a1) - my * (b2 - b1) * s) * inv_d;
        out.partial[1] = C(0.5) * a1 * inv_d;
        out.partial[2] = -s * inv_b2;
    }
    return out;
}

// Sums `value` over the block's 256 threads in a fixed order (float64).
__device__ inline double block_sum(double value, double* scratch, int tid) {
    scratch[tid] = value;
    __syncthreads();
    for (int k = kTile * kTile / 2; k > 0; k >>= 1) {
        if (tid < k) scratch[tid] += scratch[tid + k];
        __syncthreads();
    }
    const double total = scratch[0];
    __syncthreads();
    return total;
}

// Where a block's 16x16 tile lies, over the map (forward) or over the image
// (backward). offset: map pixel (i, j) is centred on image pixel
// (i + offset, j + offset); R for "valid", 0 otherwise.
struct TileGeometry {
    int offset, map_h, map_w, row, col;
    long long map_pixels;
};

template <int R>
__device__ inline TileGeometry tile_geometry(int padding, int height, int width, bool tiles_cover_map) {
    TileGeometry g;
    g.offset = padding == PAD_VALID ? R : 0;
    g.map_h = height - 2 * g.offset;
    g.map_w = width - 2 * g.offset;
    g.map_pixels = (long long)g.map_h * g.map_w;
    const int tiles_w = ((tiles_cover_map ? g.map_w : width) + kTile - 1) / kTile;
    g.row = (int)(blockIdx.x / tiles_w) * kTile;
    g.col = (int)(blockIdx.x % tiles_w) * kTile;
    return g;
}

// The vertical half of the separable filter: this thread's pixel from Q
// horizontally filtered tiles.
template <class C, int R, int Q>
__device__ inline void vertical_pass(const C (&rows)[Q][kTile + 2 * R][kTile], const C* weights, C (&out)[Q]) {
#pragma unroll
    for (int q = 0; q < Q; ++q) out[q] = C(0);
#pragma unroll
    for (int t = 0; t <= 2 * R; ++t) {
        const C w = weights[t];
#pragma unroll
        for (int q = 0; q < Q; ++q) out[q] += w * rows[q][threadIdx.y + t][threadIdx.x];
    }
}

}  // namespace cussim

template <class T, int R>
__global__ void __launch_bounds__(256, cussim::MinBlocks<T>::value) ssim_forward(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_row, long long y_col,
    typename cussim::ComputeType<T>::type* __restrict__ map, long long m_outer, long long m_inner, long long m_row,
    long long m_col, double* __restrict__ block_sums, typename cussim::ComputeType<T>::type* __restrict__ grad_maps,
    long long planes, long long inner_count, int height, int width, int padding, int crop, int formula,
    const typename cussim::ComputeType<T>::type* __restrict__ taps, typename cussim::ComputeType<T>::type inv_range,
    typename cussim::ComputeType<T>::type c1, typename cussim::ComputeType<T>::type c2,
    typename cussim::ComputeType<T>::type cov, typename cussim::ComputeType<T>::type weight) {
    using namespace cussim;
    using C = typename ComputeType<T>::type;
    constexpr int kSide = kTile + 2 * R;  // halo tile side
    constexpr int kThreads = kTile * kTile;
    __shared__ C tile_x[kSide][kSide];
    __shared__ C tile_y[kSide][kSide];
    __shared__ C rows[5][kSide][kTile];  // horizontally filtered mx, my, Exx, Eyy, Exy
    __shared__ C weights[2 * R + 1];
    __shared__ double scratch[kThreads];

    const TileGeometry g = tile_geometry<R>(padding, height, width, true);
    const long long maps_size = planes * g.map_pixels;
    const int tid = threadIdx.y * kTile + threadIdx.x;
    if (tid < 2 * R + 1) weights[tid] = taps[tid];

    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const long long outer = p / inner_count, inner = p % inner_count;
        const T* xp = x + outer * x_outer + inner * x_inner;
        const T* yp = y + outer * y_outer + inner * y_inner;
        for (int k = tid; k < kSide * kSide; k += kThreads) {
            const int r = k / kSide, c = k % kSide;
            const int row = g.row + g.offset - R + r, col = g.col + g.offset - R + c;
            tile_x[r][c] = load_scaled(xp, x_row, x_col, row, col, height, width, padding, inv_range);
            tile_y[r][c] = load_scaled(yp, y_row, y_col, row, col, height, width, padding, inv_range);
        }
        __syncthreads();
        for (int k = tid; k < kSide * kTile; k += kThreads) {
            const int r = k / kTile, c = k % kTile;
            C mx = 0, my = 0, exx = 0, eyy = 0, exy = 0;
#pragma unroll
            for (int t = 0; t <= 2 * R; ++t) {
                const C a = tile_x[r][c + t], b = tile_y[r][c + t], w = weights[t];
                mx += w * a;
                my += w * b;
                exx += w * (a * a);
                eyy += w * (b * b);
                exy += w * (a * b);
            }
            rows[0][r][c] = mx;
            rows[1][r][c] = my;
            rows[2][r][c] = exx;
            rows[3][r][c] = eyy;
            rows[4][r][c] = exy;
        }
        __syncthreads();
        C m[5];
        vertical_pass<C, R, 5>(rows, weights, m);
        const int row = g.row + threadIdx.y, col = g.col + threadIdx.x;
        double counted_value = 0.0;
        if (row < g.map_h && col < g.map_w) {
            const Pixel<C> px = ssim_pixel(m[0], m[1], m[2], m[3], m[4], c1, c2, cov, grad_maps ? formula : 0);
            if (map) map[outer * m_outer + inner * m_inner + row * m_row + col * m_col] = px.s;
            const bool counted = row >= crop && row < g.map_h - crop && col >= crop && col < g.map_w - crop;
            if (counted) counted_value = px.s;
            if (grad_maps) {
                // skimage's gradient is that of the uncropped map's mean
                const C w = (counted || formula == GRADIENT_SKIMAGE) ? weight : C(0);
                const long long at = p * g.map_pixels + (long long)row * g.map_w + col;
                for (int q = 0; q < 3; ++q) grad_maps[q * maps_size + at] = w * px.partial[q];
            }
        }
        if (block_sums) {
            const double total = block_sum(counted_value, scratch, tid);
            if (tid == 0) block_sums[p * gridDim.x + blockIdx.x] = total;
        } else {
            __syncthreads();  // the next plane overwrites the tiles
        }
    }
}

template <class T, int R>
__global__ void __launch_bounds__(256, cussim::MinBlocks<T>::value) ssim_backward(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_row, long long y_col,
    const typename cussim::ComputeType<T>::type* __restrict__ grad_maps,
    typename cussim::GradientType<T>::type* __restrict__ grad, long long g_outer, long long g_inner, long long g_row,
    long long g_col, long long planes, long long inner_count, int height, int width, int padding,
    const typename cussim::ComputeType<T>::type* __restrict__ taps, typename cussim::ComputeType<T>::type inv_range,
    int accumulate) {
    using namespace cussim;
    using C = typename ComputeType<T>::type;
    constexpr int kSide = kTile + 2 * R;
    constexpr int kThreads = kTile * kTile;
    __shared__ C tile[3][kSide][kSide];  // g*Pmu, g*Pxx, g*Pxy around the tile
    __shared__ C rows[3][kSide][kTile];
    __shared__ C weights[2 * R + 1];

    const TileGeometry g = tile_geometry<R>(padding, height, width, false);
    const long long maps_size = planes * g.map_pixels;
    const int tid = threadIdx.y * kTile + threadIdx.x;
    // The window is symmetric, so the adjoint's flipped taps are the taps.
    if (tid < 2 * R + 1) weights[tid] = taps[tid];

    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const long long outer = p / inner_count, inner = p % inner_count;
        const C* maps = grad_maps + p * g.map_pixels;
        for (int k = tid; k < kSide * kSide; k += kThreads) {
            const int r = k / kSide, c = k % kSide;
            int map_row = g.row - R + r - g.offset, map_col = g.col - R + c - g.offset;
            bool inside = map_row >= 0 && map_row < g.map_h && map_col >= 0 && map_col < g.map_w;
            if (padding == PAD_REFLECT) {  // F is symmetric with reflection: F^T reflects too
                map_row = reflect_index(map_row, g.map_h);
                map_col = reflect_index(map_col, g.map_w);
                inside = true;
            }
            const long long at = (long long)map_row * g.map_w + map_col;
            for (int q = 0; q < 3; ++q) tile[q][r][c] = inside ? maps[q * maps_size + at] : C(0);
        }
        __syncthreads();
        for (int k = tid; k < kSide * kTile; k += kThreads) {
            const int r = k / kTile, c = k % kTile;
            C b[3] = {0, 0, 0};
#pragma unroll
            for (int t = 0; t <= 2 * R; ++t) {
                const C w = weights[t];
#pragma unroll
                for (int q = 0; q < 3; ++q) b[q] += w * tile[q][r][c + t];
            }
            for (int q = 0; q < 3; ++q) rows[q][r][c] = b[q];
        }
        __syncthreads();
        C b[3];
        vertical_pass<C, R, 3>(rows, weights, b);
        const int row = g.row + threadIdx.y, col = g.col + threadIdx.x;
        if (row < height && col < width) {
            const T* xp = x + outer * x_outer + inner * x_inner;
            const T* yp = y + outer * y_outer + inner * y_inner;
            const C xv = load_scaled(xp, x_row, x_col, row, col, height, width, PAD_SAME, inv_range);
            const C yv = load_scaled(yp, y_row, y_col, row, col, height, width, PAD_SAME, inv_range);
            C value = (b[0] + C(2) * xv * b[1] + yv * b[2]) * inv_range;
            typename GradientType<T>::type* gp = grad + outer * g_outer + inner * g_inner + row * g_row + col * g_col;
            if (accumulate) value += (C)element_value(*gp);
            store(gp, value);
        }
        __syncthreads();  // the next plane overwrites the tiles
    }
}

template <class O>
__global__ void __launch_bounds__(256) ssim_finish(const double* __restrict__ block_sums, long long per_output,
                                                   long long outputs, double count, double a, double b,
                                                   O* __restrict__ out, long long out_stride) {
    __shared__ double scratch[256];
    for (long long o = blockIdx.x; o < outputs; o += gridDim.x) {
        double sum = 0.0;
        for (long long j = threadIdx.x; j < per_output; j += 256) sum += block_sums[o * per_output + j];
        scratch[threadIdx.x] = sum;
        __syncthreads();
        for (int k = 128; k > 0; k >>= 1) {
            if ((int)threadIdx.x < k) scratch[threadIdx.x] += scratch[threadIdx.x + k];
            __syncthreads();
        }
        if (threadIdx.x == 0) out[o * out_stride] = (O)(a + b * (scratch[0] / count));  // N ones: exactly 1
        __syncthreads();
    }
}
