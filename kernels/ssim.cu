// ssim.cu: the SSIM map (spec.md sections 1 to 3) of a batch of image planes.
//
// Kernels
//   ssim_map<T, R>   T: float, double, __half, unsigned char or unsigned short
//                    (the stored element type); R: window radius (win_size = 2R+1).
//                    Computes in double for double inputs, in float otherwise.
//
// Launch shape: block (16, 16); grid (tiles_h * tiles_w, min(planes, 65535)),
// where the tiles cover the map (H x W, or (H-2R) x (W-2R) for "valid"); blocks
// loop over planes, so any number of planes works. Every array is addressed by
// element strides (int64): plane p = outer * inner_count + inner, then row and
// column. A stride of 0 broadcasts (one reference image for a whole batch).
//
// Per block: the (16+2R)^2 halo tile of x and y, scaled by 1/L, goes to shared
// memory; a horizontal pass produces the five moments for each tile row, a
// vertical pass finishes them in registers, and the map value follows.
//
// This file compiles unchanged with NVRTC and, for the CPU emulator, with g++
// after cuda_emulator.h; it includes no header.

#ifndef CUSSIM_EMULATOR
// NVRTC has no cuda_fp16.h of its own: a 16-bit storage type of the same name.
struct __align__(2) __half {
    unsigned short __x;
};
__device__ inline unsigned short __half_as_ushort(__half h) { return h.__x; }
#endif

namespace cussim {

constexpr int kTile = 16;
enum Padding { PAD_SAME = 0, PAD_VALID = 1, PAD_REFLECT = 2 };

template <class T> struct ComputeType { using type = float; };
template <> struct ComputeType<double> { using type = double; };

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

// The SSIM value from the five filtered moments (spec.md section 1): variances
// clamped at 0, no covariance where a window is flat, S clamped to [-1, 1].
// NaN moments give NaN.
template <class C>
__device__ inline C ssim_from_moments(C mx, C my, C exx, C eyy, C exy, C c1, C c2, C cov) {
    const C mxx = mul(mx, mx), myy = mul(my, my), mxy = mul(mx, my);
    const C sxx_raw = mul(cov, add(exx, -mxx));
    const C syy_raw = mul(cov, add(eyy, -myy));
    const bool free_sxx = sxx_raw > C(0), free_syy = syy_raw > C(0);
    const C sxx = free_sxx ? sxx_raw : C(0);
    const C syy = free_syy ? syy_raw : C(0);
    const C sxy = (free_sxx && free_syy) ? mul(cov, add(exy, -mxy)) : C(0);
    const C a1 = add(mul(C(2), mxy), c1);
    const C a2 = add(mul(C(2), sxy), c2);
    const C b1 = add(add(mxx, myy), c1);
    const C b2 = add(add(sxx, syy), c2);
    const C s = mul(a1, a2) / mul(b1, b2);
    return s > C(1) ? C(1) : (s < C(-1) ? C(-1) : s);
}

}  // namespace cussim

template <class T, int R>
__global__ void __launch_bounds__(256) ssim_map(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_row, long long y_col,
    typename cussim::ComputeType<T>::type* __restrict__ map, long long m_outer, long long m_inner, long long m_row,
    long long m_col, long long planes, long long inner_count, int height, int width, int padding,
    const typename cussim::ComputeType<T>::type* __restrict__ taps, typename cussim::ComputeType<T>::type inv_range,
    typename cussim::ComputeType<T>::type c1, typename cussim::ComputeType<T>::type c2,
    typename cussim::ComputeType<T>::type cov) {
    using namespace cussim;
    using C = typename ComputeType<T>::type;
    constexpr int kSide = kTile + 2 * R;  // halo tile side
    constexpr int kThreads = kTile * kTile;
    __shared__ C tile_x[kSide][kSide];
    __shared__ C tile_y[kSide][kSide];
    __shared__ C rows[5][kSide][kTile];  // horizontally filtered mx, my, Exx, Eyy, Exy
    __shared__ C weights[2 * R + 1];

    const int offset = padding == PAD_VALID ? R : 0;
    const int map_h = height - 2 * offset, map_w = width - 2 * offset;
    const int tiles_w = (map_w + kTile - 1) / kTile;
    const int tile_row = (int)(blockIdx.x / tiles_w) * kTile, tile_col = (int)(blockIdx.x % tiles_w) * kTile;
    const int tid = threadIdx.y * kTile + threadIdx.x;
    if (tid < 2 * R + 1) weights[tid] = taps[tid];

    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const long long outer = p / inner_count, inner = p % inner_count;
        const T* xp = x + outer * x_outer + inner * x_inner;
        const T* yp = y + outer * y_outer + inner * y_inner;
        for (int k = tid; k < kSide * kSide; k += kThreads) {
            const int r = k / kSide, c = k % kSide;
            const int row = tile_row + offset - R + r, col = tile_col + offset - R + c;
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
        C m[5] = {0, 0, 0, 0, 0};
#pragma unroll
        for (int t = 0; t <= 2 * R; ++t) {
            const C w = weights[t];
#pragma unroll
            for (int q = 0; q < 5; ++q) m[q] += w * rows[q][threadIdx.y + t][threadIdx.x];
        }
        const int row = tile_row + threadIdx.y, col = tile_col + threadIdx.x;
        if (row < map_h && col < map_w) {
            map[outer * m_outer + inner * m_inner + row * m_row + col * m_col] =
                ssim_from_moments(m[0], m[1], m[2], m[3], m[4], c1, c2, cov);
        }
        __syncthreads();  // the next plane overwrites the tiles
    }
}
