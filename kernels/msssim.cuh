// msssim.cuh: what MS-SSIM's kernels share across families (docs/spec.rst section 6), after
// tile.cuh: the 2x2 mean's geometry of each variant (pooled_size, pooled_source, pooled_target:
// the downsampling of kernels/msssim.cu and ssim3d.cu and the adjoint that the backwards fuse,
// pooled_adjoint), and the combine of the scales' means into MS-SSIM and its backward weights
// (combine_image), run by msssim_combine (kernels/msssim.cu) and by the last scale's forward
// (FORWARD_COMBINE, combine_if_last), so that both give bitwise the same values.

namespace cussim {

// MS-SSIM's 2x2 downsampling (docs/spec.rst section 6).
enum Variant { VARIANT_PYTORCH_MSSSIM = 0, VARIANT_TENSORFLOW = 1, VARIANT_TORCHMETRICS = 2 };
constexpr int kMaxScales = 16;

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
// launch (combine_if_last). scratch: kCombineScratch doubles (Masked:
// kMaskedCombineScratch), free on entry (after a barrier) and on return.
// msssim_combine and the folded combine run this one piece of code, so their
// values and weights are bitwise the same.
// Masked (MS-SSIM with a mask, docs/spec.rst section 9; the folded combine of
// FORWARD_COMBINE | FORWARD_MASK): each scale's block sums are those of a
// masked forward, planes x tiles sums of m S and then as many of m (its
// pooled mask's weights), so m_j = sum(m S) / sum(m) over the image's planes,
// each sum in the same fixed order; the image's total weight of scale j goes
// to totals[j * images + image] (images = planes / group; the host refuses a
// total of 0 or NaN) and its planes' backward weights divide by it in place of
// the pixels averaged.
constexpr int kCombineScratch = 256 + 3 * kMaxScales;
constexpr int kMaskedCombineScratch = kCombineScratch + kMaxScales;
template <bool Masked = false>
__device__ inline void combine_image(long long image, const volatile double* block_sums, const double* scale_table,
                                     int scales, long long planes, long long group, double share, double guard,
                                     double* image_values, double* plane_weights, double* scratch, int tid,
                                     double* totals = nullptr) {
    constexpr int Threads = 256;
    static_assert(Threads >= kMaxScales && (Threads & (Threads - 1)) == 0, "a power of two >= the scales");
    double* means = scratch + Threads;
    double* weighted_logs = means + kMaxScales;          // w_j log m_j (0 where w_j = 0)
    double* scale_weights = weighted_logs + kMaxScales;  // d value / d m_j * share / pixels averaged
    double* weight_totals = scale_weights + kMaxScales;  // masked: sum(m) of each scale
    const int j = tid;
    for (int s = 0; s < scales; ++s) {
        const long long tiles = (long long)scale_table[4 * s + 2];
        const volatile double* sums = block_sums + (long long)scale_table[4 * s + 3] + image * group * tiles;
        double total = 0.0;
        if constexpr (Masked) {  // the weights' sums first (after the values', planes x tiles further)
            double partial = 0.0;
            for (long long k = tid; k < group * tiles; k += Threads) partial += sums[planes * tiles + k];
            scratch[tid] = partial;
            __syncthreads();
            for (int k = Threads / 2; k > 0; k >>= 1) {
                if (tid < k) scratch[tid] += scratch[tid + k];
                __syncthreads();
            }
            total = scratch[0];
            __syncthreads();  // every thread has read it
        }
        double partial = 0.0;
        for (long long k = tid; k < group * tiles; k += Threads) partial += sums[k];
        scratch[tid] = partial;
        __syncthreads();
        for (int k = Threads / 2; k > 0; k >>= 1) {
            if (tid < k) scratch[tid] += scratch[tid + k];
            __syncthreads();
        }
        if (tid == 0) {  // relu, keeping a NaN mean NaN (fmax would make it 0)
            const double mean = Masked ? scratch[0] / total : scratch[0] / (scale_table[4 * s + 1] * (double)group);
            means[s] = mean < 0.0 ? 0.0 : mean;
            if (Masked) {
                weight_totals[s] = total;
                totals[s * (planes / group) + image] = total;
            }
        }
        __syncthreads();
    }
    // zero: some scale with weight > 0 has a relu'd mean of 0, so the product is 0 (NaN where a mean is NaN)
    bool zero = false, nan = false;
    for (int s = 0; s < scales; ++s) {
        zero = zero || (means[s] == 0.0 && scale_table[4 * s] > 0.0);
        nan = nan || means[s] != means[s];
    }
    zero = zero && !nan;
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
                                     (Masked ? weight_totals[j] : scale_table[4 * j + 1] * (double)group);
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
// values, as msssim_combine's last block does (finish_values). Masked
// (FORWARD_MASK too): combine_image<true>, whose totals (scales x images)
// lie just before image_values (cussim/_msssim.py carves them there).
template <bool Masked = false, class O>
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
        combine_image<Masked>(image, first_scale, scale_table, scales, planes, group, share, guard, image_values,
                              plane_weights, scratch, tid, Masked ? image_values - scales * images : nullptr);
        if (last_arrival(combine_counter(image_values, images, 0), (unsigned int)images, scratch, tid))
            finish_values(image_values, images / outputs, outputs, count, a, b, out, out_stride, scratch, 0, 1, tid);
    }
}

}  // namespace cussim
