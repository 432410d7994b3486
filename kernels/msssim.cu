// msssim.cu: MS-SSIM's pyramid and the combine of its scales (docs/spec.rst section 6), for planes
// (and, msssim_combine, for volumes); compiled after pixel.cuh, tile.cuh and msssim.cuh
// (cussim/_kernels.py, SOURCES). MS-SSIM reuses the forward (ssim_forward.cu: FORWARD_CS gives the
// contrast-structure map A2 / B2, FORWARD_COMBINE folds this combine into the last scale) and the
// backward (ssim_backward.cu, tail GRAD_MSSSIM), plus:
//   msssim_pyramid<T, D, Masked>
//                        D successive 2x2 means of x and y (the next D scales),
//                        as a variant does them, into contiguous planes of
//                        the compute type, in one launch; Masked: of a mask
//                        too (MS-SSIM with a mask), as a third image.
//   msssim_combine<O, Masked>
//                        per image: the scales' means from their block sums,
//                        the relu'd weighted product, and d product / d mean
//                        spread over the planes as backward weights; then, by
//                        the last block, the mean of the images' values of
//                        each output, stored as O (finish_if_last). It
//                        serves volumes (kernels/ssim3d.cu); for planes the
//                        last scale's ssim_forward does the same
//                        (FORWARD_COMBINE, the same combine_image). Masked:
//                        of masked forwards' sums (volumes with a mask), the
//                        scales' totals written just before the image values.
//   msssim_fold<C>       the adjoint of torchmetrics' whole-sample extension
//                        of its last scale.
// (T, C as in ssim_forward.cu; O: float or double.)
//
// Launch shapes: msssim_combine takes block (256) and one block per image;
// msssim_pyramid block (256), grid (any, any <= 65535): x over a plane's roots,
// y over the planes; msssim_fold any 1-D launch.

namespace cussim {

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
// each level's planes start in the outputs, and the plane at hand. Offsets
// in a plane are 32-bit (a plane has < 2^31 pixels: cussim/_launch.py).
// Masked: the mask's plane (kp, compute type) is pooled as a third image into k_out.
template <class T, class C, int D, bool Masked = false>
struct PyramidLevels {
    int height[D + 1], width[D + 1];
    long long offset[D + 1];
    const T *xp, *yp;  // the plane's level 0
    const C* kp;
    long long x_row, x_col, y_row, y_col, k_row, k_col, p;
    C *x_out, *y_out, *k_out;
    int variant;

    // Level l's pixels in a plane that are roots: all of level D; those of a lower level
    // that the next level drops (torchmetrics: the last row and column of an odd side).
    __device__ __forceinline__ int roots(int l) const {
        const int all = height[l] * width[l];
        if (l == D) return all;
        const int rows = variant == VARIANT_TORCHMETRICS ? 2 * height[l + 1] : height[l];
        const int cols = variant == VARIANT_TORCHMETRICS ? 2 * width[l + 1] : width[l];
        return all - rows * cols;
    }
};

// The 2x2 mean at level L of pixel (row, col), from its subtree; stored at
// its level unless L is the last, which the root stores (extended).
// Masked: vk, the mask's, likewise (unused otherwise).
template <class T, class C, int L, int D, bool Masked>
struct PyramidNode {
    __device__ __forceinline__ static void eval(const PyramidLevels<T, C, D, Masked>& a, int row, int col, C& vx,
                                                C& vy, C& vk) {
        C sx = C(0), sy = C(0), sk = C(0);
#pragma unroll(L <= 1 ? 4 : 1)  // 8 loads in flight (a subtree of 4 leaves); above, a loop keeps the code small
        for (int k = 0; k < 4; ++k) {
            const int r = pooled_source(row, k / 2, a.height[L - 1], a.variant);
            const int c = pooled_source(col, k % 2, a.width[L - 1], a.variant);
            if (r >= 0 && c >= 0) {
                C cx, cy, ck;
                PyramidNode<T, C, L - 1, D, Masked>::eval(a, r, c, cx, cy, ck);
                sx += cx;
                sy += cy;
                if (Masked) sk += ck;
            }
        }
        vx = C(0.25) * sx;
        vy = C(0.25) * sy;
        if (Masked) vk = C(0.25) * sk;
        if (L < D) {
            const long long at = a.offset[L] + a.p * a.height[L] * a.width[L] + (row * a.width[L] + col);
            a.x_out[at] = vx;
            a.y_out[at] = vy;
            if (Masked) a.k_out[at] = vk;
        }
    }
};

template <class T, class C, int D, bool Masked>
struct PyramidNode<T, C, 0, D, Masked> {  // level 0: the input pixel
    __device__ __forceinline__ static void eval(const PyramidLevels<T, C, D, Masked>& a, int row, int col, C& vx,
                                                C& vy, C& vk) {
        vx = (C)element_value(a.xp[row * a.x_row + col * a.x_col]);
        vy = (C)element_value(a.yp[row * a.y_row + col * a.y_col]);
        if (Masked) vk = a.kp[row * a.k_row + col * a.k_col];
    }
};

// Root k (of the level's roots in one plane) of level L, or of a lower level:
// its subtree computed and stored; level D's root also at each position of
// the extension by `margin` (< the level's sides) that holds it.
template <class T, class C, int L, int D, bool Masked>
struct PyramidRoot {
    __device__ __forceinline__ static void run(const PyramidLevels<T, C, D, Masked>& a, int level, int k,
                                               int margin) {
        if (level != L) {
            PyramidRoot<T, C, L - 1, D, Masked>::run(a, level, k, margin);
            return;
        }
        const int h = a.height[L], w = a.width[L];
        int row, col;
        if (L == D) {
            row = k / w;
            col = k - row * w;
        } else {  // the dropped last row, then the dropped last column above it
            const int rows = 2 * a.height[L + 1], cols = 2 * a.width[L + 1];
            const int below = (h - rows) * w;
            if (k < below) {
                row = k / w;
                col = k - row * w;
                row += rows;
            } else {
                row = (k - below) / (w - cols);
                col = cols + (k - below) - row * (w - cols);
            }
        }
        C vx, vy, vk;
        PyramidNode<T, C, L, D, Masked>::eval(a, row, col, vx, vy, vk);
        if (L < D) return;
        const int ext_h = h + 2 * margin, ext_w = w + 2 * margin;
        const long long plane = a.offset[L] + a.p * ext_h * ext_w;
        const MirrorSources rs = mirror_sources(row, h, margin), cs = mirror_sources(col, w, margin);
#pragma unroll
        for (int i = 0; i < 3; ++i)
#pragma unroll
            for (int j = 0; j < 3; ++j)
                if (rs.valid[i] && cs.valid[j]) {
                    const long long at = plane + (rs.at[i] * ext_w + cs.at[j]);
                    a.x_out[at] = vx;
                    a.y_out[at] = vy;
                    if (Masked) a.k_out[at] = vk;
                }
    }
};

template <class T, class C, int D, bool Masked>
struct PyramidRoot<T, C, 0, D, Masked> {
    __device__ static void run(const PyramidLevels<T, C, D, Masked>&, int, int, int) {}
};

// Four blocks of 256 threads (64 registers) fit without a spill on sm_75 and
// newer; sm_70, without a uniform datapath (the levels' sides and offsets take
// vector registers there), spills at 64 and at 80 registers and keeps the whole
// register file.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
constexpr int kPyramidMinBlocks = 1;
#else
constexpr int kPyramidMinBlocks = 4;
#endif
// With a mask (a third image): 3 blocks (80 registers) in double, whose 4-level pyramid spilled 40 bytes on
// sm_90 at 64.
template <class T, bool Masked> struct PyramidMinBlocks {
    static constexpr int value =
        Masked && sizeof(typename ComputeType<T>::type) == 8 && kPyramidMinBlocks > 3 ? 3 : kPyramidMinBlocks;
};

}  // namespace cussim

// D successive 2x2 means of x and y (docs/spec.rst section 6): levels 1..D of
// the pyramid whose level 0 is the input, in one launch. The levels go to
// contiguous planes of the compute type, unscaled, one level after another
// (x_out holds level 1's planes, then level 2's, ...); the last is extended
// by `margin` on every side by whole-sample reflection (0 but for
// torchmetrics' last scale); the forward's strides for the input.
// One thread per root of the pyramid in a plane: each pixel of level D, and
// each pixel of a lower level that no coarser pixel averages (torchmetrics
// drops an odd side's last pixel; the other variants average every pixel).
// The thread computes its root's whole subtree depth first and stores every
// node; each node sums its children in slot order and takes a quarter, as one
// 2x2 mean from the stored finer level does, so the levels are bitwise those
// of D separate means. Launch: block (256); blockIdx.x strides over a plane's
// roots (32-bit), blockIdx.y over the planes (PlaneIndex: no division per
// plane). Masked: the mask (compute type, its own strides, 0 to broadcast) is
// pooled the same way into mask_out, laid out as x_out (a pooled mask per
// plane); the others ignore those arguments.
template <class T, int D, bool Masked = false>
__global__ void __launch_bounds__(256, cussim::PyramidMinBlocks<T, Masked>::value) msssim_pyramid(
    const T* __restrict__ x, long long x_outer, long long x_inner, long long x_row, long long x_col,
    const T* __restrict__ y, long long y_outer, long long y_inner, long long y_row, long long y_col,
    typename cussim::ComputeType<T>::type* __restrict__ x_out,
    typename cussim::ComputeType<T>::type* __restrict__ y_out, long long planes, long long inner_count, int height,
    int width, int variant, int margin, const typename cussim::ComputeType<T>::type* __restrict__ mask,
    long long k_outer, long long k_inner, long long k_row, long long k_col,
    typename cussim::ComputeType<T>::type* __restrict__ mask_out) {
    using namespace cussim;
    using C = typename ComputeType<T>::type;
    PyramidLevels<T, C, D, Masked> a;
    a.height[0] = height;
    a.width[0] = width;
    a.x_row = x_row;
    a.x_col = x_col;
    a.y_row = y_row;
    a.y_col = y_col;
    a.x_out = x_out;
    a.y_out = y_out;
    if (Masked) {
        a.k_row = k_row;
        a.k_col = k_col;
        a.k_out = mask_out;
    }
    a.variant = variant;
    long long offset = 0;
    int roots = 0;  // per plane
#pragma unroll
    for (int l = 1; l <= D; ++l) {
        a.height[l] = pooled_size(a.height[l - 1], variant);
        a.width[l] = pooled_size(a.width[l - 1], variant);
        a.offset[l] = offset;
        const int extension = l == D ? 2 * margin : 0;
        offset += planes * (a.height[l] + extension) * (a.width[l] + extension);
        roots += a.roots(l);
    }

    PlaneIndex plane = grid_plane_index(inner_count);
    for (long long p = blockIdx.y; p < planes; p += gridDim.y, plane.advance(inner_count)) {
        a.p = p;
        a.xp = x + plane.outer * x_outer + plane.inner * x_inner;
        a.yp = y + plane.outer * y_outer + plane.inner * y_inner;
        if (Masked) a.kp = mask + plane.outer * k_outer + plane.inner * k_inner;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < roots; i += gridDim.x * blockDim.x) {
            int k = i, level = 0;  // the root's index among its level's
#pragma unroll
            for (int l = D; l >= 1; --l) {
                const int n = a.roots(l);
                if (level == 0 && k < n) {
                    level = l;
                } else if (level == 0) {
                    k -= n;
                }
            }
            PyramidRoot<T, C, D, D, Masked>::run(a, level, k, margin);
        }
    }
}

// Per image (one block each): MS-SSIM's combine of the scales' means
// (combine_image); the last block to finish then writes the `outputs`
// values, each the mean of its images' values, as ssim_finish does
// (finish_if_last; the counter is combine_counter 0, the element after the
// image values): one launch for both. The last scale's forward does all of
// this itself (FORWARD_COMBINE); this kernel serves the volumes.
// Masked: each scale's block sums those of a masked forward (combine_image<true>), the totals (scales x
// images) written just before image_values, as the folded combine writes them (combine_if_last).
template <class O, bool Masked = false>
__global__ void __launch_bounds__(256, 1) msssim_combine(
    const double* __restrict__ block_sums, long long planes, const double* __restrict__ scale_table, int scales,
    long long group, double share, double guard, double* __restrict__ image_values,
    double* __restrict__ plane_weights, O* __restrict__ out, long long out_stride, long long outputs, double count,
    double a, double b) {
    using namespace cussim;
    __shared__ double scratch[Masked ? kMaskedCombineScratch : kCombineScratch];
    const long long images = planes / group;
    for (long long image = blockIdx.x; image < images; image += gridDim.x)
        combine_image<Masked>(image, block_sums, scale_table, scales, planes, group, share, guard, image_values,
                              plane_weights, scratch, (int)threadIdx.x,
                              Masked ? image_values - scales * images : nullptr);
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
