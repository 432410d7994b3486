// ssim.cu: SSIM, its mean and its exact gradient (docs/spec.rst sections 1 to 4) for a
// batch of image planes.
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
//   ssim_backward<T, R, Tail>  the gradient with respect to x: the adjoint
//                        filter F^T of the three partial maps, combined with x
//                        and y (docs/spec.rst section 4), written into grad
//                        (Tail GRAD_WRITE, the default) or added to it
//                        (cussim::GRAD_ADD); GRAD_WRITE_L1 and GRAD_ADD_L1 add
//                        the fused L1 term's l1 sign(x - y); GRAD_MSSSIM adds
//                        MS-SSIM's terms (per-plane weights, the adjoint of the
//                        next scale's 2x2 mean). Each tail's code is compiled
//                        only into its own specialisation (GradientTail).
//   ssim_finish<O>       each output value from its block sums (float64, fixed
//                        order), as a + b * sum / count, stored as O (float or
//                        double), for block sums that no forward finished
//                        (MS-SSIM's per-image values, scikit-image's float64
//                        mean).
// MS-SSIM (docs/spec.rst section 6) reuses the forward (term TERM_CS gives the
// contrast-structure map A2 / B2) and the backward (tail GRAD_MSSSIM), plus:
//   msssim_fold<C>       the adjoint of torchmetrics' whole-sample extension
//                        of its last scale.
//   msssim_pyramid<T, D> D successive 2x2 means of x and y (the next D scales),
//                        as a variant does them, into contiguous planes of
//                        the compute type, in one launch.
//   msssim_combine<O>    per image: the scales' means from their block sums,
//                        the relu'd weighted product, and d product / d mean
//                        spread over the planes as backward weights; then, by
//                        the last block, the mean of the images' values of
//                        each output, stored as O (finish_if_last). It
//                        serves volumes (kernels/ssim3d.cu); for planes the
//                        last scale's ssim_forward does the same
//                        (FORWARD_COMBINE, the same combine_image).
// They live in this file because the backward's fused adjoint and the
// downsampling share one geometry (pooled_source / pooled_target).
//
// Launch shapes: forward and backward take block (16, 16) and grid
// (tiles_h * tiles_w, min(planes, 65535)), tiles of 16 columns by
// Tile::kHeight rows (64 in float arithmetic, 16 in double) covering the map
// (forward) or the image (backward); blocks loop over planes, so any number
// of planes works. ssim_finish and msssim_combine take block (256) and one
// block per output (per image); msssim_pyramid and msssim_fold any 1-D launch.
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
// The map a forward computes: SSIM, or MS-SSIM's contrast-structure term A2 / B2.
enum Term { TERM_SSIM = 0, TERM_CS = 1 };
// MS-SSIM's 2x2 downsampling (docs/spec.rst section 6).
enum Variant { VARIANT_PYTORCH_MSSSIM = 0, VARIANT_TENSORFLOW = 1, VARIANT_TORCHMETRICS = 2 };
constexpr int kMaxScales = 16;

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

// Where position i of a halo (outside [0, n) or not) reads from, along a
// side of n pixels: i inside, its reflection for "reflect", -1 (a zero) else.
__device__ inline int halo_source(int i, int n, int padding) {
    if (padding == PAD_REFLECT) return reflect_index(i, n);
    return i >= 0 && i < n ? i : -1;
}

// True for a finite value: v - v is 0, where a NaN or an infinity gives NaN.
template <class C> __device__ inline bool is_finite(C v) { return v - v == C(0); }

// A tile's shift (see Tile): the scaled image value at element offset `at`
// of a plane, the pixel nearest the tile's centre, or 0 where that value is
// not finite, so that a NaN or an infinity stays in the windows that hold it.
template <class T, class C>
__device__ inline C tile_shift(const T* plane, long long at, C inv_range) {
    const C k = (C)element_value(plane[at]) * inv_range;
    return is_finite(k) ? k : C(0);
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

// P0 = dS/dmx' of moments shifted by kx (x) and kd = kx - ky (d = x - y), moved
// to the shifts (own_x, own_d): P0 + 2 (own_x - kx) P1 + 2 (own_d - kd) P2, given
// the doubled differences move_x = 2 (own_x - kx) and move_d = 2 (own_d - kd)
// (see backward_planes).
template <class C>
__device__ inline C moved_partial(const C (&p)[3], C move_x, C move_d) {
    return p[0] + move_x * p[1] + move_d * p[2];
}

// The five terms whose window means are the moments mx', md', Exx', Eyy',
// Edd' (ssim_pixel) at a pixel of shifted values a = x', b = y': a, d = a - b,
// a^2, b^2, d^2, each formed once (then 5 fused multiply-adds per tap); with
// x == y bitwise, d = 0, so md' and Edd' are exactly 0 and Eyy' is bitwise Exx'.
template <class C>
__device__ inline void moment_terms(C a, C b, C (&v)[5]) {
    const C d = a - b;
    v[0] = a;
    v[1] = d;
    v[2] = a * a;
    v[3] = b * b;
    v[4] = d * d;
}

// What the forward writes into the three partial maps (the backward combines
// them as map0 + 2 x map1 + 2 (x - y) map2, each blurred by F^T):
//   GRADIENT_EXACT: dS/dmx, dS/dExx, dS/dEdd with Edd = E[(x - y)^2], the moments
//                   of ssim_pixel (docs/spec.rst section 4 in those moments), zero
//                   where a clamp is active; the gradient of the returned mean wrt x.
//   GRADIENT_SKIMAGE: scikit-image's formula (docs/spec.rst section 5), which the
//                   drop-in reproduces, map0 + 2 x P1 + y P2 with P1 = A1 / (2 D)
//                   and P2 = -S / B2: (mx (A2 - A1) - my (B2 - B1) S) / D,
//                   P1 + P2 / 2 and -P2 / 2, weighted over the whole map.
enum GradientFormula { GRADIENT_NONE = 0, GRADIENT_EXACT = 1, GRADIENT_SKIMAGE = 2 };

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
    FORWARD_COMBINE = 32  // MS-SSIM's last scale: the combine of every scale folded in (combine_if_last)
};
__device__ constexpr int forward_formula(int options) { return options & (FORWARD_EXACT | FORWARD_SKIMAGE); }
__device__ constexpr int forward_term(int options) { return options & FORWARD_CS ? TERM_CS : TERM_SSIM; }

// SSIM (or, for TERM_CS, A2 / B2) at one pixel from the five filtered moments
// (docs/spec.rst section 1): variances clamped at 0, no covariance where a window
// is flat, the value clamped to [-1, 1]; and the three partial-map values of
// `formula`: those of the exact gradient are zero where the value is clamped,
// and d/dExx is zero where sxx is. scikit-image's formula is for TERM_SSIM.
template <class C> struct Pixel {
    C s, partial[3];
};

// The moments m (mx', md', Exx', Eyy', Edd') are those of x' = x - kx, y' = y - ky
// and d' = x' - y', shifted by (kx, ky), constants near the window's values: the
// variances, which are shift-invariant, then lose no digits to E[x^2] - mx^2
// cancellation, and the means are mx = mx' + kx, md = md' + kx - ky, my = mx - md.
// With var(d) = sxx + syy - 2 sxy carried as Edd' - md'^2, the formula reads
//   S = A1 / B1 * A2 / B2 = (1 - md^2 / B1) (1 - var(d) / B2),
// without the cancellation of sxx + syy - 2 sxy, which float32 cannot resolve
// where a window holds a step (zero padding beside bright values) and x, y
// differ by little, and S cannot round above 1 there (both factors lie in
// [0, 1] when x and y are close; the clamp would zero the partials). The
// partials are those of the shifted moments: partial[0] is dS/dmx' with my',
// Exx', Edd' held fixed, partial[1] dS/dExx', partial[2] dS/dEdd' (the backward
// combines them as map0 + 2 x' map1 + 2 d' map2), each computed without
// cancellation: for x == y all but partial[2] are exactly 0, and d' is exactly 0.
template <class C>
__device__ inline Pixel<C> ssim_pixel(const C (&m)[5], C kx, C ky, C c1, C c2, C cov, int term, int formula) {
    const C my_shifted = add(m[0], -m[1]);
    const C sxx_raw = mul(cov, add(m[2], -mul(m[0], m[0])));
    const C syy_raw = mul(cov, add(m[3], -mul(my_shifted, my_shifted)));
    const C vd_raw = mul(cov, add(m[4], -mul(m[1], m[1])));
    const bool free_sxx = sxx_raw > C(0), free_sxy = free_sxx && syy_raw > C(0);
    const C sxx = free_sxx ? sxx_raw : C(0);
    const C syy = syy_raw > C(0) ? syy_raw : C(0);
    // var(d) = sxx + syy - 2 sxy; with no covariance where a window is flat, sxx + syy.
    const C vd = free_sxy ? (vd_raw > C(0) ? vd_raw : C(0)) : add(sxx, syy);
    const C mx = add(m[0], kx), md = add(m[1], add(kx, -ky)), my = add(mx, -md);
    const C b1 = add(add(mul(mx, mx), mul(my, my)), c1);
    const C b2 = add(add(sxx, syy), c2);
    const C d = mul(b1, b2);
    const C inv_b1 = C(1) / b1, inv_b2 = C(1) / b2;
    const C u = mul(vd, inv_b2);  // 1 - A2 / B2
    // A2 / B2: for a flat window (no covariance) c2 / B2, exactly 1 where B2 is c2 (flat x == y)
    const C cs = free_sxy ? add(C(1), -u) : (b2 == c2 ? C(1) : mul(c2, inv_b2));
    const C l = term == TERM_CS ? C(1) : add(C(1), -mul(mul(md, inv_b1), md));  // A1 / B1
    const C s_raw = mul(l, cs);
    Pixel<C> out;
    // Statistics beyond the compute type (finite means, an infinite denominator):
    // the pixel and its partials are NaN (docs/spec.rst section 1), never 0.
    const C denominator = term == TERM_CS ? b2 : d;
    if (is_finite(mx) && is_finite(my) && !is_finite(denominator)) {
        out.s = out.partial[0] = out.partial[1] = out.partial[2] = denominator - denominator;  // NaN
        return out;
    }
    out.s = s_raw > C(1) ? C(1) : (s_raw < C(-1) ? C(-1) : s_raw);
    out.partial[0] = out.partial[1] = out.partial[2] = C(0);
    if (formula == GRADIENT_NONE) return out;
    const C s = out.s;
    if (formula == GRADIENT_EXACT && s == s_raw) {
        // dS/dmx' = dl/dmx cs + l dcs/dmx', dl/dmx = -2 md (1 - mx md / B1) / B1 (0 for TERM_CS),
        // dcs/dmx' = 2 c (md' - mx' u) / B2 (through var(d) and sxx). Derivatives of the
        // unclamped covariance: at a flat window of x, var(d) moves to first order with x
        // while sxx moves only to second order, so only the sxx terms vanish there.
        const C dl = term == TERM_CS ? C(0) : -C(2) * md * (C(1) - mx * md * inv_b1) * inv_b1;
        const C dcs = C(2) * cov * (m[1] - (free_sxx ? m[0] * u : C(0))) * inv_b2;
        out.partial[0] = dl * cs + l * dcs;
        out.partial[1] = free_sxx ? cov * l * u * inv_b2 : C(0);
        out.partial[2] = -cov * l * inv_b2;
    } else if (formula == GRADIENT_SKIMAGE) {
        // scikit-image's map0 + 2 x P1 + y P2 with P1 = A1 / (2 D), P2 = -S / B2, as
        // map0 + 2 x (P1 + P2 / 2) + 2 d (-P2 / 2).
        const C a1 = add(mul(C(2), mul(mx, my)), c1), a2 = free_sxy ? add(b2, -vd) : c2;
        const C inv_d = inv_b1 * inv_b2;
        const C p1 = C(0.5) * a1 * inv_d, p2 = -s * inv_b2;
        out.partial[0] = (mx * (a2 - a1) - my * (b2 - b1) * s) * inv_d + C(2) * kx * p1 + ky * p2;
        out.partial[1] = p1 + C(0.5) * p2;
        out.partial[2] = -C(0.5) * p2;
    }
    return out;
}

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

// Each output value o = first, first + step, ... < outputs from its
// per_output block sums, as a + b * sum / count stored as O: 256 threads add
// strided partial sums, then a fixed tree in `scratch` (256 doubles), so the
// order depends on nothing but the sizes. The sums are read as volatile: the
// forward's last block reads what other blocks wrote in the same launch.
template <class O>
__device__ inline void finish_values(const volatile double* block_sums, long long per_output, long long outputs,
                                     double count, double a, double b, O* out, long long out_stride,
                                     double* scratch, long long first, long long step, int tid) {
    for (long long o = first; o < outputs; o += step) {
        double sum = 0.0;
        for (long long j = tid; j < per_output; j += 256) sum += block_sums[o * per_output + j];
        scratch[tid] = sum;
        __syncthreads();
        for (int k = 128; k > 0; k >>= 1) {
            if (tid < k) scratch[tid] += scratch[tid + k];
            __syncthreads();
        }
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

// MS-SSIM's 2x2 mean along one side of n pixels (docs/spec.rst section 6): output
// o averages sources 2o + k - pad, k = 0, 1. pytorch_msssim pads an odd side
// with a zero on both sides (pad 1, the zeros counted); tensorflow repeats the
// last pixel; torchmetrics drops it.
__device__ inline int pooled_size(int n, int variant) {
    return variant == VARIANT_TORCHMETRICS ? n / 2 : (n + 1) / 2;
}

// The source of slot k of output o, or -1 for a padded zero.
__device__ inline int pooled_source(int o, int k, int n, int variant) {
    int i = 2 * o + k;
    if (variant == VARIANT_PYTORCH_MSSSIM) i -= n & 1;
    if (variant == VARIANT_TENSORFLOW && i >= n) i = n - 1;
    return i >= 0 && i < n ? i : -1;
}

// Where source i goes: its output, and how many of that output's slots it
// fills (0 when dropped, 2 for tensorflow's repeated last pixel).
struct PooledTarget {
    int index, slots;
};

__device__ inline PooledTarget pooled_target(int i, int n, int variant) {
    PooledTarget t;
    if (variant == VARIANT_PYTORCH_MSSSIM) {
        t.index = (i + (n & 1)) / 2;
        t.slots = 1;
    } else {
        t.index = i / 2;
        t.slots = variant == VARIANT_TORCHMETRICS ? (i < (n & ~1) ? 1 : 0) : ((n & 1) && i == n - 1 ? 2 : 1);
    }
    return t;
}

// The positions in [0, n + 2 margin) of a whole-sample extension by `margin`
// (< n) that hold pixel t: t itself, and one or two reflections (fixed
// slots, so that they stay in registers).
struct MirrorSources {
    int at[3];
    bool valid[3];
};

__device__ inline MirrorSources mirror_sources(int t, int n, int margin) {
    MirrorSources s;
    s.at[0] = t + margin;
    s.valid[0] = true;
    s.at[1] = margin - t;
    s.valid[1] = t >= 1 && t <= margin;
    s.at[2] = 2 * n - 2 - t + margin;
    s.valid[2] = t <= n - 2 && t > n - 2 - margin;
    return s;
}

// MS-SSIM's pyramid (msssim_pyramid): the sides of levels 0..D, where
// each level's planes start in the outputs, and the plane at hand.
template <class T, class C, int D>
struct PyramidLevels {
    int height[D + 1], width[D + 1];
    long long offset[D + 1];
    const T *xp, *yp;  // the plane's level 0
    long long x_row, x_col, y_row, y_col, p;
    C *x_out, *y_out;
    int variant;

    // Level l's pixels that are roots: all of level D; those of a lower level
    // that the next level drops (torchmetrics: the last row and column of an odd side).
    __device__ __forceinline__ long long roots(int l) const {
        const long long all = (long long)height[l] * width[l];
        if (l == D) return all;
        const int rows = variant == VARIANT_TORCHMETRICS ? 2 * height[l + 1] : height[l];
        const int cols = variant == VARIANT_TORCHMETRICS ? 2 * width[l + 1] : width[l];
        return all - (long long)rows * cols;
    }
};

// The 2x2 mean at level L of pixel (row, col), from its subtree; stored at
// its level unless L is the last, which the root stores (extended).
template <class T, class C, int L, int D>
struct PyramidNode {
    __device__ __forceinline__ static void eval(const PyramidLevels<T, C, D>& a, int row, int col, C& vx, C& vy) {
        C sx = C(0), sy = C(0);
#pragma unroll(L <= 2 ? 4 : 1)  // 32 loads in flight (a subtree of 16 leaves); above, a loop keeps the code small
        for (int k = 0; k < 4; ++k) {
            const int r = pooled_source(row, k / 2, a.height[L - 1], a.variant);
            const int c = pooled_source(col, k % 2, a.width[L - 1], a.variant);
            if (r >= 0 && c >= 0) {
                C cx, cy;
                PyramidNode<T, C, L - 1, D>::eval(a, r, c, cx, cy);
                sx += cx;
                sy += cy;
            }
        }
        vx = C(0.25) * sx;
        vy = C(0.25) * sy;
        if (L < D) {
            const long long at =
                a.offset[L] + (a.p * a.height[L] + row) * (long long)a.width[L] + col;
            a.x_out[at] = vx;
            a.y_out[at] = vy;
        }
    }
};

template <class T, class C, int D>
struct PyramidNode<T, C, 0, D> {  // level 0: the input pixel
    __device__ __forceinline__ static void eval(const PyramidLevels<T, C, D>& a, int row, int col, C& vx, C& vy) {
        vx = (C)element_value(a.xp[row * a.x_row + col * a.x_col]);
        vy = (C)element_value(a.yp[row * a.y_row + col * a.y_col]);
    }
};

// Root k (of the level's roots in one plane) of level L, or of a lower level:
// its subtree computed and stored; level D's root also at each position of
// the extension by `margin` (< the level's sides) that holds it.
template <class T, class C, int L, int D>
struct PyramidRoot {
    __device__ __forceinline__ static void run(const PyramidLevels<T, C, D>& a, int level, long long k, int margin) {
        if (level != L) {
            PyramidRoot<T, C, L - 1, D>::run(a, level, k, margin);
            return;
        }
        const int h = a.height[L], w = a.width[L];
        int row, col;
        if (L == D) {
            row = (int)(k / w);
            col = (int)(k % w);
        } else {  // the dropped last row, then the dropped last column above it
            const int rows = 2 * a.height[L + 1], cols = 2 * a.width[L + 1];
            const long long below = (long long)(h - rows) * w;
            row = k < below ? rows + (int)(k / w) : (int)((k - below) / (w - cols));
            col = k < below ? (int)(k % w) : cols + (int)((k - below) % (w - cols));
        }
        C vx, vy;
        PyramidNode<T, C, L, D>::eval(a, row, col, vx, vy);
        if (L < D) return;
        const int ext_h = h + 2 * margin, ext_w = w + 2 * margin;
        const MirrorSources rs = mirror_sources(row, h, margin), cs = mirror_sources(col, w, margin);
#pragma unroll
        for (int i = 0; i < 3; ++i)
#pragma unroll
            for (int j = 0; j < 3; ++j)
                if (rs.valid[i] && cs.valid[j]) {
                    const long long at = a.offset[L] + (a.p * ext_h + rs.at[i]) * (long long)ext_w + cs.at[j];
                    a.x_out[at] = vx;
                    a.y_out[at] = vy;
                }
    }
};

template <class T, class C, int D>
struct PyramidRoot<T, C, 0, D> {
    __device__ static void run(const PyramidLevels<T, C, D>&, int, long long, int) {}
};

// A pixel's row (column) as the adjoint of the 2x2 mean needs it: 4 times
// the offset of its target's row (its target column) in the coarse plane,
// plus the slots it fills (pooled_target).
__device__ inline long long pooled_code(PooledTarget t, long long stride) { return 4 * t.index * stride + t.slots; }

// The adjoint of the 2x2 mean at the pixel of codes (row_code, col_code): a
// quarter of the coarse gradient (coarse_plane: the next scale's plane) per
// slot the pixel fills.
template <class C>
__device__ inline C pooled_adjoint(const C* coarse_plane, long long row_code, int col_code) {
    const int slots = (int)(row_code & 3) * (col_code & 3);
    return slots == 0 ? C(0) : C(0.25) * C(slots) * coarse_plane[(row_code >> 2) + (col_code >> 2)];
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
//   the 32 rows fall in 32 different banks.
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

// The forward's five moments mx, md, Exx, Eyy, Edd in float: (mx, md) and (Exx, Eyy) as 8-byte pairs,
// so that a row is three loads in the vertical pass, not five. Bank conflicts, none: 8-byte accesses
// are served per half-warp; a half-warp of the horizontal pass stores one column of 16 consecutive rows,
// the pitch of 17 pairs puts row r + 1 at banks 2 further (16 different bank pairs); one of the vertical
// pass loads 16 consecutive pairs of one row.
template <int R> struct MomentRows {
    static constexpr int kHaloRows = Tile<float, R>::kHaloRows, kPitch = Tile<float, R>::kRowsPitch;
    float2 pairs[2][kHaloRows][kPitch];
    float dd[kHaloRows][kPitch];

    __device__ void store(int r, int c, const float (&v)[5]) {
        float2 mean, square;
        mean.x = v[0];
        mean.y = v[1];
        square.x = v[2];
        square.y = v[3];
        pairs[0][r][c] = mean;
        pairs[1][r][c] = square;
        dd[r][c] = v[4];
    }
    __device__ void load(int r, int c, float (&v)[5]) const {
        const float2 mean = pairs[0][r][c], square = pairs[1][r][c];
        v[0] = mean.x;
        v[1] = mean.y;
        v[2] = square.x;
        v[3] = square.y;
        v[4] = dd[r][c];
    }
};
template <class C, int R> struct ForwardRows { using type = FilteredRows<C, R, 5>; };
template <int R> struct ForwardRows<float, R> { using type = MomentRows<R>; };

// The horizontal half of the separable filter over a Tile's halo rows, into
// `rows` (FilteredRows or MomentRows): warp w filters columns 4 (w % 4) ..
// 4 (w % 4) + 3 of the halo rows 32 (w / 4) + lane + 64 i, each loaded value
// serving up to 4 outputs. load(r, c, v) gives the Q quantities of halo pixel (r, c).
template <class C, int R, int Q, class Rows, class Load>
__device__ inline void horizontal_pass(Rows& rows, const C* weights, int warp, int lane, Load load) {
    using Shape = Tile<C, R>;
    constexpr int kCols = Shape::kHorizontalCols, kColGroups = kTile / kCols;
    constexpr int kRowStride = 32 * (kTile * kTile / 32 / kColGroups);
    const int c = kCols * (warp % kColGroups);
#pragma unroll 1
    for (int r = lane + 32 * (warp / kColGroups); r < Shape::kHaloRows; r += kRowStride) {
        C b[kCols][Q] = {};
#pragma unroll
        for (int j = 0; j < 2 * R + kCols; ++j) {
            C v[Q];
            load(r, c + j, v);
            add_tap<C, R>(b, j, v, weights);
        }
#pragma unroll
        for (int o = 0; o < kCols; ++o) rows.store(r, c + o, b[o]);
    }
}

// The vertical half: this thread's kRows outputs of column `col` from rows
// first_row .. first_row + kRows + 2R - 1, each loaded value serving up to
// kRows of them; finish(i, b) takes row i's Q filtered values as soon as its
// last tap is in (fewer live registers).
template <class C, int R, int Q, class Rows, class Finish>
__device__ inline void vertical_rows(const Rows& rows, const C* weights, int first_row, int col, Finish finish) {
    constexpr int kRows = Tile<C, R>::kRows;
    C b[kRows][Q] = {};
#pragma unroll
    for (int j = 0; j < kRows + 2 * R; ++j) {
        C v[Q];
        rows.load(first_row + j, col, v);
        add_tap<C, R>(b, j, v, weights);
        if (j >= 2 * R) finish(j - 2 * R, b[j - 2 * R]);
    }
}

// MS-SSIM's combine of one image (`group` consecutive planes, whose means
// pool before the product, as torchmetrics pools channels), by the 256
// threads of a block: each scale's mean m_j from its block sums in a fixed
// order, value = prod_j max(m_j, 0)^w_j into image_values[image], and, if
// plane_weights is given, each plane's backward weight d value / d m_j /
// (pixels averaged) * share: 0 where a relu'd mean is 0 (the product is 0
// around there), and with max(m_j, guard) in the power's derivative, so
// finite inputs never give infinity or NaN. Thread j handles scale j
// (scales <= kMaxScales <= 256). scale_table holds, per scale: w_j, map
// pixels per plane, tiles per plane, and the offset of the scale's block sums
// (planes x tiles, plane-major). The sums are read as volatile: the last
// scale's forward combines the sums that its other blocks wrote in the same
// launch (combine_if_last). scratch: kCombineScratch doubles, free on entry
// (after a barrier) and on return. msssim_combine and the folded combine run
// this one piece of code, so their values and weights are bitwise the same.
constexpr int kCombineScratch = 256 + 3 * kMaxScales;
__device__ inline void combine_image(long long image, const volatile double* block_sums, const double* scale_table,
                                     int scales, long long planes, long long group, double share, double guard,
                                     double* image_values, double* plane_weights, double* scratch, int tid) {
    constexpr int Threads = 256;
    static_assert(Threads >= kMaxScales && (Threads & (Threads - 1)) == 0, "a power of two >= the scales");
    double* means = scratch + Threads;
    double* weighted_logs = means + kMaxScales;          // w_j log m_j (0 where w_j = 0)
    double* scale_weights = weighted_logs + kMaxScales;  // d value / d m_j * share / pixels averaged
    const int j = tid;
    for (int s = 0; s < scales; ++s) {
        const long long tiles = (long long)scale_table[4 * s + 2];
        const volatile double* sums = block_sums + (long long)scale_table[4 * s + 3] + image * group * tiles;
        double partial = 0.0;
        for (long long k = tid; k < group * tiles; k += Threads) partial += sums[k];
        scratch[tid] = partial;
        __syncthreads();
        for (int k = Threads / 2; k > 0; k >>= 1) {
            if (tid < k) scratch[tid] += scratch[tid + k];
            __syncthreads();
        }
        if (tid == 0) {  // relu, keeping a NaN mean NaN (fmax would make it 0)
            const double mean = scratch[0] / (scale_table[4 * s + 1] * (double)group);
            means[s] = mean < 0.0 ? 0.0 : mean;
        }
        __syncthreads();
    }
    // zero: some scale with weight > 0 has a relu'd mean of 0, so the product is 0
    bool zero = false;
    for (int s = 0; s < scales; ++s) zero = zero || (means[s] == 0.0 && scale_table[4 * s] > 0.0);
    if (j < scales) {
        const double w = scale_table[4 * j];
        weighted_logs[j] = (w == 0.0 || zero) ? 0.0 : w * log(means[j]);
    }
    __syncthreads();
    double total_log = 0.0;
    for (int s = 0; s < scales; ++s) total_log += weighted_logs[s];
    if (j == 0) image_values[image] = zero ? 0.0 : exp(total_log);
    if (j < scales) {
        const double w = scale_table[4 * j];
        const double others = total_log - weighted_logs[j];
        scale_weights[j] = (zero || w == 0.0)
                               ? 0.0
                               : w * exp(others + (w - 1.0) * log(fmax(means[j], guard))) * share /
                                     (scale_table[4 * j + 1] * (double)group);
    }
    __syncthreads();
    if (plane_weights) {
        for (int s = 0; s < scales; ++s)
            for (long long q = tid; q < group; q += Threads)
                plane_weights[s * planes + image * group + q] = scale_weights[s];
    }
    __syncthreads();  // scratch is free again
}

// The counters of MS-SSIM's combine, unsigned ints in the doubles after the
// images' values: counter 0 (msssim_combine's blocks, or the folded
// combine's images), then one per image (the folded combine's forward
// blocks of each image): 1 + images doubles, zero between launches.
__device__ inline unsigned int* combine_counter(double* image_values, long long images, long long k) {
    return reinterpret_cast<unsigned int*>(image_values + images + k);
}

// MS-SSIM's combine folded into its last scale's forward (FORWARD_COMBINE),
// called where that forward would finish (finish_if_last), with its arguments:
// block_sums is the last scale's, at offset scale_table[4 (scales - 1) + 3]
// from the first scale's. Each image's blocks (its planes times the tiles)
// count on the image's counter; the last of them combines the image
// (combine_image, as msssim_combine's block of that image does), so images
// combine in parallel, as in msssim_combine; the last image to be combined
// (counter 0) writes the `outputs` values, each the mean of its images'
// values, as msssim_combine's last block does (finish_values).
template <class O>
__device__ inline void combine_if_last(double* block_sums, const double* scale_table, int scales, long long planes,
                                       long long group, double share, double guard, double* image_values,
                                       double* plane_weights, O* out, long long out_stride, long long outputs,
                                       double count, double a, double b, double* scratch, int tid) {
    const long long images = planes / group;
    const double* first_scale = block_sums - (long long)scale_table[4 * (scales - 1) + 3];
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {  // the planes whose sums this block stored
        const long long image = p / group;
        if (!last_arrival(combine_counter(image_values, images, 1 + image), (unsigned int)(group * gridDim.x),
                          scratch, tid))
            continue;
        combine_image(image, first_scale, scale_table, scales, planes, group, share, guard, image_values,
                      plane_weights, scratch, tid);
        if (last_arrival(combine_counter(image_values, images, 0), (unsigned int)images, scratch, tid))
            finish_values(image_values, images / outputs, outputs, count, a, b, out, out_stride, scratch, 0, 1, tid);
    }
}

}  // namespace cussim

// The forward's blocks per SM (TileMinBlocks): its block loads x and y and filters five moments. At
// R = 7 at most 3 (80 registers): at 64, the passes' 20 sums and 8 taps left no room for a few set-up
// values, which spilled (8 to 16 bytes). With FORWARD_COMBINE 1: that forward is MS-SSIM's last scale,
// the smallest image (a few blocks per plane), whose occupancy does not matter, and the combine's
// float64 log and exp need registers.
template <class T, int R, int Options> struct ForwardMinBlocks {
    using C = typename cussim::ComputeType<T>::type;
    static constexpr int value =
        Options & cussim::FORWARD_COMBINE
            ? 1
            : cussim::TileMinBlocks<T, cussim::TileSharedBytes<C, 7, 2, 5>::value, R < 7 ? 4 : 3>::value;
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
    double share, double guard, double* __restrict__ image_values, double* __restrict__ plane_weights) {
    using namespace cussim;
    using C = typename ComputeType<T>::type;
    using Shape = Tile<C, R>;
    constexpr int formula = forward_formula(Options);
    static_assert(formula != GRADIENT_SKIMAGE || forward_term(Options) == TERM_SSIM, "skimage's formula is SSIM's");
    constexpr int kRows = Shape::kRows, kHeight = Shape::kHeight, kHaloRows = Shape::kHaloRows;
    constexpr int kWarps = kTile * kTile / 32;
    __shared__ C tile[2][kHaloRows][Shape::kPitch];  // x', y': x and y scaled and shifted, around the tile
    __shared__ typename ForwardRows<C, R>::type rows;  // horizontally filtered mx, md, Exx, Eyy, Edd (d = x - y)
    __shared__ C weights[2 * R + 1];
    __shared__ double scratch[kWarps];
    // The plane index, the map's plane offset, the shifts and the inputs' strides wait in shared memory,
    // not in registers through the passes (which spilled under the register cap: ptxas kept each
    // thread's tile-load offsets across the planes). Thread 0 writes them; the barriers before and after
    // the tile load and in the block sum order it.
    __shared__ struct {
        PlaneIndex plane;
        long long map_offset, x_row, x_col, y_row, y_col;
        C shift[2];
    } held;

    const TileGeometry g = tile_geometry<R, kHeight>(padding, height, width, true);
    const long long maps_size = planes * g.map_pixels;
    const int tid = threadIdx.y * kTile + threadIdx.x, warp = tid >> 5, lane = tid & 31;
    if (tid < 2 * R + 1) weights[tid] = taps[tid];
    const int top = g.row + g.offset - R, left = g.col + g.offset - R;  // the halo, in image pixels
    const bool inside = top >= 0 && left >= 0 && top + kHaloRows <= height && left + Shape::kHaloCols <= width;
    const int shift_row = Shape::shift_row(g.row + g.offset, height);
    const int shift_col = Shape::shift_col(g.col + g.offset, width);
    // this thread's map pixels: column col, rows first_row .. first_row + kRows - 1 of the tile
    const int first_row = Shape::first_row(warp, lane), col = g.col + (lane & 15);
    // how many of them lie in the map (one number, not kRows tests kept across the plane loop)
    const int rows_here = col < g.map_w ? min(kRows, g.map_h - (g.row + first_row)) : 0;
    // whether the mean counts this thread's column (the rows are tested per pixel)
    const bool col_counted = col >= crop && col < g.map_w - crop;
    // Border tiles (the halo leaves the image): the image row of each halo row and this lane's image
    // column, or -1 for a zero (halo_source), worked out once for every plane.
    __shared__ int halo_rows[kHaloRows];
    if (tid < kHaloRows) halo_rows[tid] = halo_source(top + tid, height, padding);
    const int halo_col = halo_source(left + lane, width, padding);
    if (tid == 0) {
        held.plane.start(inner_count);
        held.x_row = x_row;
        held.x_col = x_col;
        held.y_row = y_row;
        held.y_col = y_col;
    }

    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        if (tid == 0) {
            const long long outer = held.plane.outer, inner = held.plane.inner;
            held.shift[0] = tile_shift(x + outer * x_outer + inner * x_inner, shift_row * x_row + shift_col * x_col,
                                       inv_range);
            held.shift[1] = tile_shift(y + outer * y_outer + inner * y_inner, shift_row * y_row + shift_col * y_col,
                                       inv_range);
            if (Options & FORWARD_MAP) held.map_offset = outer * m_outer + inner * m_inner;
        }
        __syncthreads();
        const long long outer = held.plane.outer, inner = held.plane.inner;
        const T* xp = x + outer * x_outer + inner * x_inner;
        const T* yp = y + outer * y_outer + inner * y_inner;
        const C kx = held.shift[0], ky = held.shift[1];
        if (lane < Shape::kHaloCols) {  // warp w loads halo rows w, w + 8, ..., lane = column
            if (inside) {
                // The fast path (most tiles): the halo inside the image, no bounds test, no padding, all
                // loads in flight (warp_halo_rows), addresses from the strides read back from `held` in
                // each plane, shared ones at constant offsets.
                const T* xo = xp + (top + warp) * held.x_row + (left + lane) * held.x_col;
                const T* yo = yp + (top + warp) * held.y_row + (left + lane) * held.y_col;
                const long long x_step = kWarps * x_row, y_step = kWarps * y_row;
                C* tx = &tile[0][warp][lane];
                C* ty = &tile[1][warp][lane];
                warp_halo_rows<kHaloRows>(warp, [&](int i) {
                    tx[kWarps * Shape::kPitch * i] = (C)element_value(xo[i * x_step]) * inv_range - kx;
                    ty[kWarps * Shape::kPitch * i] = (C)element_value(yo[i * y_step]) * inv_range - ky;
                });
            } else {
#pragma unroll 1
                for (int r = warp; r < kHaloRows; r += kWarps) {
                    const int row = halo_rows[r];
                    C vx = C(0), vy = C(0);
                    if (row >= 0 && halo_col >= 0) {
                        vx = (C)element_value(xp[row * x_row + halo_col * x_col]) * inv_range;
                        vy = (C)element_value(yp[row * y_row + halo_col * y_col]) * inv_range;
                    }
                    tile[0][r][lane] = vx - kx;
                    tile[1][r][lane] = vy - ky;
                }
            }
        }
        __syncthreads();
        if (tid == 0) held.plane.advance(inner_count);  // every thread has read it: the next plane's
        horizontal_pass<C, R, 5>(rows, weights, warp, lane,
                                 [&](int r, int c, C (&v)[5]) { moment_terms(tile[0][r][c], tile[1][r][c], v); });
        __syncthreads();
        // The vertical pass leaves each pixel's five moments in the space of the rows (once every thread
        // has read them), moments[q][i][tid]: the pixels' formulas then run one at a time, not kRows at
        // once in registers (which spilled under the 64-register cap). A warp stores and loads 32
        // consecutive words.
        C m[kRows][5];
        vertical_rows<C, R, 5>(rows, weights, first_row, lane & 15, [&](int i, const C (&v)[5]) {
            for (int q = 0; q < 5; ++q) m[i][q] = v[q];
        });
        __syncthreads();
        static_assert(sizeof(rows) >= 5 * kRows * kTile * kTile * sizeof(C), "the rows hold the moments");
        C (*moments)[kRows][kTile * kTile] = reinterpret_cast<C (*)[kRows][kTile * kTile]>(&rows);
#pragma unroll
        for (int i = 0; i < kRows; ++i)
#pragma unroll
            for (int q = 0; q < 5; ++q) moments[q][i][tid] = m[i][q];
        double counted_sum = 0.0;  // this thread's pixels that the mean counts, in row order
#pragma unroll 1
        for (int i = 0; i < rows_here; ++i) {
            const int row = g.row + first_row + i;
            const C v[5] = {moments[0][i][tid], moments[1][i][tid], moments[2][i][tid], moments[3][i][tid],
                            moments[4][i][tid]};
            const C sx = held.shift[0], sy = held.shift[1];  // kx, ky
            const Pixel<C> px = ssim_pixel(v, sx, sy, c1, c2, cov, forward_term(Options), formula);
            if (Options & FORWARD_MAP) map[held.map_offset + row * m_row + col * m_col] = px.s;
            const bool counted = col_counted && row >= crop && row < g.map_h - crop;
            double counted_value = counted ? (double)px.s : 0.0;
            if (Options & FORWARD_L1 && counted) {  // the fused L1 term: the tile holds this pixel, scaled and shifted
                const int r = R + first_row + i, c = R + (lane & 15);
                const C dx = (tile[0][r][c] + sx) - (tile[1][r][c] + sy);
                counted_value = sum_scale * counted_value + l1 * (double)fabs(dx);
            }
            counted_sum += counted_value;
            if (formula != GRADIENT_NONE) {
                // skimage's gradient is that of the uncropped map's mean
                const C w = (counted || formula == GRADIENT_SKIMAGE) ? weight : C(0);
                const long long at = p * g.map_pixels + (long long)row * g.map_w + col;
                for (int q = 0; q < 3; ++q) grad_maps[q * maps_size + at] = w * px.partial[q];
            }
        }
        if (block_sums) {
            const double total = block_sum(counted_sum, scratch, tid);
            if (tid == 0) block_sums[p * gridDim.x + blockIdx.x] = total;
        } else {
            __syncthreads();  // the next plane overwrites the tiles
        }
    }
    // rows (at least 5 * 18 * 17 values of C, over 6 KiB) serves as the finish's 256 doubles, or the
    // combine's kCombineScratch.
    if (outputs) {
        static_assert(sizeof(rows) >= kCombineScratch * sizeof(double), "rows holds the finish's scratch");
        double* last_scratch = reinterpret_cast<double*>(&rows);
        if constexpr ((Options & FORWARD_COMBINE) != 0)
            combine_if_last(block_sums, scale_table, scales, planes, group, share, guard, image_values,
                            plane_weights, out, out_stride, outputs, count, a, b, last_scratch, tid);
        else
            finish_if_last(block_sums, planes * gridDim.x, outputs, count, a, b, out, out_stride, last_scratch, tid);
    }
}

namespace cussim {

// MS-SSIM's extras of a backward (GRAD_MSSSIM): each plane's weight, and
// the adjoint of the next scale's 2x2 mean of `variant` (coarse: contiguous
// planes of the next scale's gradient; null at the last scale).
template <class C> struct PyramidTerms {
    const double* plane_weights;
    const C* coarse;
    int variant;
};

// The backward's tile (Tile): the partial maps' halo, three maps loaded and
// filtered, and the table of shift moves of the forward tiles its halo reads.
template <class C, int R> struct BackwardTile : Tile<C, R> {
    // forward tiles whose shifts the halo can need (see backward_planes)
    static constexpr int kMoveRows = 4, kMoveCols = 4;
    static constexpr int kSharedBytes = TileSharedBytes<C, R, 3, 3>::value;
};

// The backward's blocks per SM (TileMinBlocks); MS-SSIM's backward (GRAD_MSSSIM) at most 3 blocks, 80
// registers: its per-pixel pyramid terms spilled a few bytes at 64 on sm_100.
template <class T, bool MsSsim = false> struct BackwardMinBlocks {
    static constexpr int value =
        TileMinBlocks<T, BackwardTile<typename ComputeType<T>::type, 7>::kSharedBytes, MsSsim ? 3 : 4>::value;
};

// What a backward's last step does (a template argument of ssim_backward, so
// that each version's code is compiled only where a call asks for it): write
// the gradient or add it to grad's values (bit 1), with the fused L1 term
// l1 sign(x - y) or without (bit 2); or, GRAD_MSSSIM, with MS-SSIM's terms
// (per-plane weights, the adjoint of the next scale's 2x2 mean), written or
// added as the `accumulate` argument says (the others ignore it and those terms).
enum GradientTail { GRAD_WRITE = 0, GRAD_ADD = 1, GRAD_WRITE_L1 = 2, GRAD_ADD_L1 = 3, GRAD_MSSSIM = 4 };

// The body of ssim_backward<T, R, Tail>. Block (16, 16); grid (tiles of 16 columns and
// BackwardTile<C, R>::kHeight rows covering the image, min(planes, 65535)).
template <class T, int R, int Tail>
__device__ inline void backward_planes(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_row, long long y_col,
    const typename ComputeType<T>::type* __restrict__ grad_maps, typename GradientType<T>::type* __restrict__ grad,
    long long g_outer, long long g_inner, long long g_row, long long g_col, long long planes, long long inner_count,
    int height, int width, int padding, const typename ComputeType<T>::type* __restrict__ taps,
    typename ComputeType<T>::type inv_range, PyramidTerms<typename ComputeType<T>::type> pyramid,
    typename ComputeType<T>::type l1, int accumulate) {
    using C = typename ComputeType<T>::type;
    using Shape = BackwardTile<C, R>;
    constexpr bool MsSsim = Tail == GRAD_MSSSIM;
    constexpr int kRows = Shape::kRows, kHeight = Shape::kHeight;
    constexpr int kHaloRows = Shape::kHaloRows, kHaloCols = Shape::kHaloCols;
    constexpr int kWarps = kTile * kTile / 32;
    static_assert(R <= 8, "the move table covers halos of R <= 8");
    constexpr int kLog2 = Shape::kHeightLog2;
    __shared__ C tile[3][kHaloRows][Shape::kPitch];  // g*Pmu (moved), g*Pxx, g*Pdd around the tile
    __shared__ FilteredRows<C, R, 3> rows;
    // moves[0 or 1][i][j]: twice this tile's shift of x (of x - y) minus that of
    // forward tile (base_row + i, base_col + j), forward tiles being kHeight rows by
    // 16 columns (Tile). The halo reads map rows of the forward tiles from
    // top / kHeight to (top + kHaloRows - 1) / kHeight and, reflected past the
    // map's end, rows down to top + 2 - kHeight (the tile lies at or above the
    // map's last row): from (top - kHeight) / kHeight on, at most 4 tiles for
    // 2R <= kHeight; columns likewise (16 + 2R halo columns), 4 tiles.
    __shared__ C moves[2][Shape::kMoveRows][Shape::kMoveCols];
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
    const bool inside = top >= 0 && left >= 0 && top + kHaloRows <= g.map_h && left + kHaloCols <= g.map_w;
    // this thread's output pixels: column out_col, rows first_row .. first_row + kRows - 1 of the tile
    const int out_col = lane & 15, first_row = Shape::first_row(warp, lane);
    // how many of them lie in the image (one number, not kRows tests kept across the plane loop)
    const int rows_here = g.col + out_col < width ? min(kRows, height - (g.row + first_row)) : 0;
    // Thread t < 2 (kEntries + 1) reads one shift each plane: of x (of y, t > kEntries) at forward tile
    // e = t % (kEntries + 1), or, e = kEntries, this tile's own at its centre; shift_offset is that
    // pixel's element offset in its plane (Tile::shift_row, shift_col).
    constexpr int kEntries = Shape::kMoveRows * Shape::kMoveCols;
    long long shift_offset = 0;
    {
        const int e = tid % (kEntries + 1);
        const bool own = e == kEntries;
        const int row = Shape::shift_row(own ? g.row : (base_row + e / Shape::kMoveCols) * kHeight + g.offset, height);
        const int col = Shape::shift_col(own ? g.col : (base_col + e % Shape::kMoveCols) * kTile + g.offset, width);
        shift_offset = tid > kEntries ? row * y_row + col * y_col : row * x_row + col * x_col;
    }
    // This thread's halo column in the tile load (lane < kHaloCols): its map column, whether it holds
    // one (or reflects to one), and the column of the forward tile that holds it, there; and the map
    // row of each halo row, or -1 for a row of zeros (for tiles whose halo leaves the map).
    // (F is symmetric with reflection: F^T reflects too.)
    const int map_col = halo_source(left + lane, g.map_w, padding);
    const bool col_inside = map_col >= 0;
    const int j = (map_col >> 4) - base_col;
    __shared__ int halo_rows[kHaloRows];
    if (tid < kHaloRows) halo_rows[tid] = halo_source(top + tid, g.map_h, padding);
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

    PlaneIndex plane;
    plane.start(inner_count);
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const T* xp = x + plane.outer * x_outer + plane.inner * x_inner;
        const T* yp = y + plane.outer * y_outer + plane.inner * y_inner;
        const C* maps = grad_maps + p * g.map_pixels;
        const C* coarse_plane = MsSsim ? pyramid.coarse + p * coarse_size : nullptr;
        // The partial maps are those of moments shifted by the forward tile's
        // kx and kd = kx - ky (ssim_pixel); with this tile's own shifts (bx, bd),
        // the same for every window here,
        // dL/dx = F^T(P0 + 2 (bx - kx) P1 + 2 (bd - kd) P2) + 2 (x - bx) F^T(P1)
        // + 2 (x - y - bd) F^T(P2): no term is larger than the gradient where the
        // image is bright and flat.
        if (tid < 2 * (kEntries + 1))
            shifts[tid > kEntries][tid % (kEntries + 1)] =
                tile_shift(tid > kEntries ? yp : xp, shift_offset, inv_range);
        __syncthreads();
        // this tile's shifts, doubled (exactly): the gradient is P0 + 2 x' P1 + 2 d' P2 (ssim_pixel)
        const C own_x = C(2) * shifts[0][kEntries], own_d = own_x - C(2) * shifts[1][kEntries];
        if (tid < kEntries) {
            const int i = tid / Shape::kMoveCols, j = tid % Shape::kMoveCols;
            moves[0][i][j] = own_x - C(2) * shifts[0][tid];
            moves[1][i][j] = own_d - C(2) * (shifts[0][tid] - shifts[1][tid]);
        }
        __syncthreads();
        if (lane < kHaloCols) {  // warp w loads halo rows w, w + 8, ..., lane = column
            if (inside) {
                // The fast path (most tiles): the halo inside the map, no bounds test.
                const C* m0 = maps + (long long)(top + warp) * g.map_w + left + lane;
                const long long step = kWarps * (long long)g.map_w;
                warp_halo_rows<kHaloRows>(warp, [&](int k) {
                    const int r = warp + kWarps * k, i = ((top + r) >> kLog2) - base_row;
                    const C* m = m0 + k * step;
                    const C value[3] = {m[0], m[maps_size], m[2 * maps_size]};
                    tile[0][r][lane] = moved_partial(value, moves[0][i][j], moves[1][i][j]);
                    tile[1][r][lane] = value[1];
                    tile[2][r][lane] = value[2];
                });
            } else {
#pragma unroll 1
                for (int r = warp; r < kHaloRows; r += kWarps) {
                    const int map_row = halo_rows[r];
                    C value[3] = {C(0), C(0), C(0)};
                    if (col_inside && map_row >= 0) {
                        const long long at = (long long)map_row * g.map_w + map_col;
                        for (int q = 0; q < 3; ++q) value[q] = maps[q * maps_size + at];
                        const int i = (map_row >> kLog2) - base_row;
                        value[0] = moved_partial(value, moves[0][i][j], moves[1][i][j]);
                    }
                    for (int q = 0; q < 3; ++q) tile[q][r][lane] = value[q];
                }
            }
        }
        __syncthreads();
        horizontal_pass<C, R, 3>(rows, weights, warp, lane, [&](int r, int c, C (&v)[3]) {
            for (int q = 0; q < 3; ++q) v[q] = tile[q][r][c];
        });
        __syncthreads();
        // Vertical pass: each row's gradient is finished as soon as its last tap is in.
        const int col = g.col + out_col;
        const T* xq = xp + (long long)(g.row + first_row) * x_row + col * x_col;
        const T* yq = yp + (long long)(g.row + first_row) * y_row + col * y_col;
        typename GradientType<T>::type* gq = grad + plane.outer * g_outer + plane.inner * g_inner +
                                             (long long)(g.row + first_row) * g_row + col * g_col;
        vertical_rows<C, R, 3>(rows, weights, first_row, out_col, [&](int i, const C (&b)[3]) {
            if (i < rows_here) {
                // 2 x' and 2 d' at this tile's shifts (x - y before the scaling: exact where x and y are close)
                const C xv = (C)element_value(*xq), yv = (C)element_value(*yq);
                const C twice_x = xv * twice_inv_range - own_x, twice_d = (xv - yv) * twice_inv_range - own_d;
                C value = (b[0] + twice_x * b[1] + twice_d * b[2]) * inv_range;
                if (MsSsim) {
                    value *= (C)pyramid.plane_weights[p];
                    if (pyramid.coarse)
                        value += pooled_adjoint(coarse_plane, pooled_rows[first_row + i], pooled_cols[out_col]);
                }
                if (Tail & GRAD_WRITE_L1) value += xv > yv ? l1 : (xv < yv ? -l1 : C(0));  // d l1 |x - y| / dx
                if ((Tail & GRAD_ADD) || (MsSsim && accumulate)) value += (C)element_value(*gq);
                store(gq, value);
            }
            xq += x_row;  // a pointer step per row
            yq += y_row;
            gq += g_row;
        });
        __syncthreads();  // the next plane overwrites the tiles and the moves
        plane.advance(inner_count);
    }
}

}  // namespace cussim

template <class T, int R, int Tail = cussim::GRAD_WRITE>
__global__ void __launch_bounds__(256, cussim::BackwardMinBlocks<T, Tail == cussim::GRAD_MSSSIM>::value) ssim_backward(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_row, long long y_col,
    const typename cussim::ComputeType<T>::type* __restrict__ grad_maps,
    typename cussim::GradientType<T>::type* __restrict__ grad, long long g_outer, long long g_inner, long long g_row,
    long long g_col, long long planes, long long inner_count, int height, int width, int padding,
    const typename cussim::ComputeType<T>::type* __restrict__ taps, typename cussim::ComputeType<T>::type inv_range,
    typename cussim::ComputeType<T>::type l1, const double* __restrict__ plane_weights,
    const typename cussim::ComputeType<T>::type* __restrict__ coarse, int variant, int accumulate) {
    cussim::backward_planes<T, R, Tail>(x, x_outer, x_inner, x_row, x_col, y, y_outer, y_inner, y_row, y_col,
                                        grad_maps, grad, g_outer, g_inner, g_row, g_col, planes, inner_count, height,
                                        width, padding, taps, inv_range, {plane_weights, coarse, variant}, l1,
                                        accumulate);
}

template <class O>
__global__ void __launch_bounds__(256) ssim_finish(const double* __restrict__ block_sums, long long per_output,
                                                   long long outputs, double count, double a, double b,
                                                   O* __restrict__ out, long long out_stride) {
    __shared__ double scratch[256];
    cussim::finish_values(block_sums, per_output, outputs, count, a, b, out, out_stride, scratch, blockIdx.x,
                          gridDim.x, (int)threadIdx.x);
}

// D successive 2x2 means of x and y (docs/spec.rst section 6): levels 1..D of
// the pyramid whose level 0 is the input, in one launch. The levels go to
// contiguous planes of the compute type, unscaled, one level after another
// (x_out holds level 1's planes, then level 2's, ...); the last is extended
// by `margin` on every side by whole-sample reflection (0 but for
// torchmetrics' last scale); the forward's strides for the input.
// One thread per root of the pyramid: each pixel of level D, and each pixel
// of a lower level that no coarser pixel averages (torchmetrics drops an odd
// side's last pixel; the other variants average every pixel). The thread
// computes its root's whole subtree depth first and stores every node; each
// node sums its children in slot order and takes a quarter, as one 2x2 mean
// from the stored finer level does, so the levels are bitwise those of D
// separate means.
template <class T, int D>
__global__ void __launch_bounds__(256, 1) msssim_pyramid(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_row, long long y_col,
    typename cussim::ComputeType<T>::type* __restrict__ x_out,
    typename cussim::ComputeType<T>::type* __restrict__ y_out, long long planes, long long inner_count, int height,
    int width, int variant, int margin) {
    using namespace cussim;
    using C = typename ComputeType<T>::type;
    PyramidLevels<T, C, D> a;
    a.height[0] = height;
    a.width[0] = width;
    a.x_row = x_row;
    a.x_col = x_col;
    a.y_row = y_row;
    a.y_col = y_col;
    a.x_out = x_out;
    a.y_out = y_out;
    a.variant = variant;
    long long offset = 0, roots = 0;
#pragma unroll
    for (int l = 1; l <= D; ++l) {
        a.height[l] = pooled_size(a.height[l - 1], variant);
        a.width[l] = pooled_size(a.width[l - 1], variant);
        a.offset[l] = offset;
        const int extension = l == D ? 2 * margin : 0;
        offset += planes * (a.height[l] + extension) * (a.width[l] + extension);
        roots += planes * a.roots(l);
    }
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < roots;
         i += (long long)gridDim.x * blockDim.x) {
        long long k = i, per_plane = 1;  // the root's index among its level's, and their number per plane
        int level = 0;
#pragma unroll
        for (int l = D; l >= 1; --l) {
            const long long n = a.roots(l);
            if (level == 0 && k < planes * n) {
                level = l;
                per_plane = n;
            } else if (level == 0) {
                k -= planes * n;
            }
        }
        const long long p = k / per_plane;
        const long long outer = p / inner_count, inner = p % inner_count;
        a.p = p;
        a.xp = x + outer * x_outer + inner * x_inner;
        a.yp = y + outer * y_outer + inner * y_inner;
        PyramidRoot<T, C, D, D>::run(a, level, k % per_plane, margin);
    }
}

// Per image (one block each): MS-SSIM's combine of the scales' means
// (combine_image); the last block to finish then writes the `outputs`
// values, each the mean of its images' values, as ssim_finish does
// (finish_if_last; the counter is combine_counter 0, the element after the
// image values): one launch for both. The last scale's forward does all of
// this itself (FORWARD_COMBINE); this kernel serves the volumes.
template <class O>
__global__ void __launch_bounds__(256, 1) msssim_combine(
    const double* __restrict__ block_sums, long long planes, const double* __restrict__ scale_table, int scales,
    long long group, double share, double guard, double* __restrict__ image_values,
    double* __restrict__ plane_weights, O* __restrict__ out, long long out_stride, long long outputs, double count,
    double a, double b) {
    using namespace cussim;
    __shared__ double scratch[kCombineScratch];
    const long long images = planes / group;
    for (long long image = blockIdx.x; image < images; image += gridDim.x)
        combine_image(image, block_sums, scale_table, scales, planes, group, share, guard, image_values,
                      plane_weights, scratch, (int)threadIdx.x);
    finish_if_last(image_values, images, outputs, count, a, b, out, out_stride, scratch, (int)threadIdx.x);
}

// The adjoint of a whole-sample extension by `margin` (< n): each extended
// position's value summed onto the pixel it copies (torchmetrics' last
// MS-SSIM scale). extended: contiguous planes of (h + 2 margin) x
// (w + 2 margin); out: contiguous planes of h x w.
template <class C>
__global__ void __launch_bounds__(256) msssim_fold(const C* __restrict__ extended, C* __restrict__ out,
                                                   long long planes, int height, int width, int margin) {
    using namespace cussim;
    const int ext_h = height + 2 * margin, ext_w = width + 2 * margin;
    const long long total = planes * height * width;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long p = i / ((long long)height * width);
        const int row = (int)(i / width % height), col = (int)(i % width);
        const C* plane = extended + p * ext_h * ext_w;
        const MirrorSources rows = mirror_sources(row, height, margin), cols = mirror_sources(col, width, margin);
        C sum = C(0);
#pragma unroll
        for (int a = 0; a < 3; ++a)
#pragma unroll
            for (int b = 0; b < 3; ++b)
                if (rows.valid[a] && cols.valid[b]) sum += plane[(long long)rows.at[a] * ext_w + cols.at[b]];
        out[i] = sum;
    }
}
