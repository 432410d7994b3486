// pixel.cuh: the per-pixel maths that every kernel family shares (docs/spec.rst sections 1, 4
// and 5): the stored element types T (float, double, __half, unsigned char or unsigned short) and
// their compute type C (double for double inputs, float otherwise), loads, stores and the
// padding of a halo ("same": zeros, "valid", "reflect": half-sample reflection), the five moment
// terms of a pixel, and ssim_pixel: SSIM (or MS-SSIM's contrast-structure term) at one pixel from
// its five filtered moments, with the three partial-map values of a gradient formula.
//
// No file of kernels/ includes another: cussim/_kernels.py compiles a family as its files
// concatenated (SOURCES: pixel.cuh, tile.cuh, msssim.cuh, then the family's .cu files), so each
// compiles unchanged with NVRTC and, for the CPU emulator, with g++ after cuda_emulator.h.

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

enum Padding { PAD_SAME = 0, PAD_VALID = 1, PAD_REFLECT = 2 };
// The map a forward computes: SSIM, or MS-SSIM's contrast-structure term A2 / B2.
enum Term { TERM_SSIM = 0, TERM_CS = 1 };

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

// A non-negative index as a 64-bit one, zero-extended: its products with the 64-bit strides take fewer
// instructions than those of a sign-extended int (no sign word).
__device__ inline long long unsigned_index(int i) { return (long long)(unsigned)i; }

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
    // Clamped where <= 0, never where NaN: a NaN or infinite pixel keeps the value and the
    // partials of its windows NaN, so the gradient is NaN where it reaches, never 0.
    const bool free_sxx = !(sxx_raw <= C(0)), free_syy = !(syy_raw <= C(0)), free_sxy = free_sxx && free_syy;
    const C sxx = free_sxx ? sxx_raw : C(0);
    const C syy = free_syy ? syy_raw : C(0);
    // var(d) = sxx + syy - 2 sxy; with no covariance where a window is flat, sxx + syy.
    const C vd = free_sxy ? (vd_raw <= C(0) ? C(0) : vd_raw) : add(sxx, syy);
    const C mx = add(m[0], kx), md = add(m[1], add(kx, -ky)), my = add(mx, -md);
    const C b1 = add(add(mul(mx, mx), mul(my, my)), c1);
    const C b2 = add(add(sxx, syy), c2);
    const C d = mul(b1, b2);
    const C inv_b1 = C(1) / b1, inv_b2 = C(1) / b2;
    const C u = mul(vd, inv_b2);  // 1 - A2 / B2
    // A2 / B2: for a flat window (no covariance) c2 / B2, exactly 1 where B2 is c2 (flat x == y)
    const C flat_cs = b2 == c2 ? C(1) : mul(c2, inv_b2), cs = free_sxy ? add(C(1), -u) : flat_cs;
    const C l = term == TERM_CS ? C(1) : add(C(1), -mul(mul(md, inv_b1), md));  // A1 / B1
    const C s_raw = mul(l, cs);
    Pixel<C> out;
    // Statistics beyond the compute type (finite means, an infinite denominator):
    // the pixel and its partials are NaN (docs/spec.rst section 1), never 0. Means
    // that are not finite (a NaN or an infinity in the window) make md or my NaN
    // (inf - inf), and with it the value and the partials: one test of the
    // denominator covers both.
    const C denominator = term == TERM_CS ? b2 : d;
    if (!is_finite(denominator)) {
        out.s = out.partial[0] = out.partial[1] = out.partial[2] = denominator - denominator;  // NaN
        return out;
    }
    out.s = s_raw > C(1) ? C(1) : (s_raw < C(-1) ? C(-1) : s_raw);
    out.partial[0] = out.partial[1] = out.partial[2] = C(0);
    if (formula == GRADIENT_NONE) return out;
    const C s = out.s;
    if (formula == GRADIENT_EXACT && !(s_raw > C(1) || s_raw < C(-1))) {  // not clamped (NaN is not)
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

// The fused L1 term of the L1 + DSSIM loss (docs/spec.rst section 4): a counted pixel's share of the
// block sum, its value scaled by sum_scale plus l1 |x - y| (dx = x - y, in the range-scaled units),
// and l1 |x - y|'s derivative with respect to x, l1 sign(x - y) (0 where x equals y).
template <class C>
__device__ inline double with_l1(double value, C dx, double sum_scale, double l1) {
    return sum_scale * value + l1 * (double)fabs(dx);
}
template <class C>
__device__ inline C l1_gradient(C xv, C yv, C l1) {
    return xv > yv ? l1 : (xv < yv ? -l1 : C(0));
}

// The weight of a map pixel's partials in the gradient of the mean: `weight` where the mean counts
// the pixel, 0 elsewhere; scikit-image's gradient is that of the uncropped map's mean (every pixel).
template <class C>
__device__ inline C partial_weight(bool counted, int formula, C weight) {
    return (counted || formula == GRADIENT_SKIMAGE) ? weight : C(0);
}

}  // namespace cussim
