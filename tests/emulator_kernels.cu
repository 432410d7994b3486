// Kernels that exercise each feature of the CPU emulator (tests/test_emulator.py).
// Plain CUDA C++: this file also compiles with NVRTC (test_compile.py checks it),
// so every construct here is one a GPU accepts (assert is built into NVRTC).
#if !defined(CUSSIM_EMULATOR) && !defined(__CUDA_FP16_H__)
// NVRTC alone has no cuda_fp16.h (CuPy and the CUDA toolkit supply it): a
// storage type of the same name, so that the loads and stores below compile.
struct __align__(2) __half { unsigned short __x; };
#define CUSSIM_NO_FP16_API
#endif

// Block sum through shared memory and warp shuffles, one atomicAdd per block.
template <class T>
__global__ void block_sum(const T* x, T* out, int n) {
    __shared__ T partial[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    partial[threadIdx.x] = i < n ? x[i] : T(0);
    __syncthreads();
    for (int k = blockDim.x / 2; k >= 32; k >>= 1) {
        if (threadIdx.x < k) partial[threadIdx.x] += partial[threadIdx.x + k];
        __syncthreads();
    }
    if (threadIdx.x < 32) {
        T v = partial[threadIdx.x];
        for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
        if (threadIdx.x == 0) atomicAdd(out, v);
    }
}

// Each thread reads its neighbour's value; the barrier between write and read is missing.
__global__ void neighbour_missing_barrier(const float* x, float* out) {
    __shared__ float s[64];
    s[threadIdx.x] = x[threadIdx.x];
    out[threadIdx.x] = s[threadIdx.x ^ 1];
}

__global__ void neighbour_with_barrier(const float* x, float* out) {
    __shared__ float s[64];
    s[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x ^ 1];
}

// Reads shared memory nobody wrote: the poison (NaN) must be there in every block.
__global__ void read_uninitialised(float* out) {
    __shared__ float s[32];
    extern __shared__ float dynamic[];
    out[(2 * blockIdx.x) * blockDim.x + threadIdx.x] = s[threadIdx.x];
    out[(2 * blockIdx.x + 1) * blockDim.x + threadIdx.x] = dynamic[threadIdx.x];
    __syncthreads();
    s[threadIdx.x] = 1.0f;
    dynamic[threadIdx.x] = 1.0f;
}

// Dynamic shared memory, addressed as declared with extern __shared__.
__global__ void reverse_through_dynamic(const double* x, double* out, int n) {
    extern __shared__ __align__(16) double buffer[];
    buffer[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = buffer[n - 1 - threadIdx.x];
}

// The order in which threads first run: each takes a ticket.
__global__ void tickets(int* counter, int* ticket) {
    ticket[blockIdx.x * blockDim.x + threadIdx.x] = atomicAdd(counter, 1);
}

// All four shuffles with a sub-warp width, votes and __syncwarp.
__global__ void shuffles(const int* x, int* out, int width) {
    const int lane = threadIdx.x % 32, v = x[threadIdx.x];
    int* o = out + 8 * threadIdx.x;
    o[0] = __shfl_sync(0xffffffffu, v, 3, width);
    o[1] = __shfl_up_sync(0xffffffffu, v, 2, width);
    o[2] = __shfl_down_sync(0xffffffffu, v, 2, width);
    o[3] = __shfl_xor_sync(0xffffffffu, v, 5, width);
    __syncwarp();
    o[4] = (int)__ballot_sync(0xffffffffu, v % 3 == 0);
    o[5] = __any_sync(0xffffffffu, v == 7);
    o[6] = __all_sync(0xffffffffu, v >= 0);
    o[7] = lane;
}

__global__ void shuffle_double(const double* x, double* out) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
}

__global__ void atomics(float* f, double* d, int* i, unsigned long long* u) {
    atomicAdd(f, 0.5f);
    atomicAdd(d, 0.25);
    atomicAdd(i, 2);
    atomicAdd(u, 3ull);
}

__global__ void block_counts(int* out) {
    out[0] = __syncthreads_count(threadIdx.x % 3 == 0);
    out[1] = __syncthreads_and(threadIdx.x < 1000);
    out[2] = __syncthreads_or(threadIdx.x == 5);
}

__global__ void intrinsics(const float* x, float* out) {
    const float v = x[threadIdx.x];
    float* o = out + 8 * threadIdx.x;
    o[0] = __expf(v);
    o[1] = rsqrtf(v);
    o[2] = __fdividef(1.0f, v);
    o[3] = fmaxf(v, 1.0f);
    o[4] = __saturatef(v - 1.0f);
    o[5] = (float)min((int)(v * 10.0f), 12);
    o[6] = __fmaf_rn(v, v, 1.0f);
    o[7] = __int_as_float(__float_as_int(v));
}

#ifndef CUSSIM_NO_FP16_API
// cuda_fp16.h's conversions, which the emulator provides itself.
__global__ void halves(const __half* x, __half* y, float* as_float, const float* from) {
    as_float[threadIdx.x] = __half2float(x[threadIdx.x]);
    y[threadIdx.x] = __float2half(from[threadIdx.x]);
}
#endif

__global__ void copy_halves(const __half* x, __half* y) { y[threadIdx.x] = x[threadIdx.x]; }

#ifdef CUSSIM_EMULATOR
// cuda_bf16.h's type, which the emulator provides itself (NVRTC alone has no such header).
__global__ void bfloat16s(const __nv_bfloat16* x, float* as_float, const float* from, __nv_bfloat16* y) {
    as_float[threadIdx.x] = __bfloat162float(x[threadIdx.x]);
    y[threadIdx.x] = __float2bfloat16(from[threadIdx.x]);
}
#endif

// Two half-warps, each shuffling and synchronising within its own mask.
__global__ void half_warp_groups(const int* x, int* out) {
    const unsigned mask = threadIdx.x < 16 ? 0x0000ffffu : 0xffff0000u;
    const int v = __shfl_xor_sync(mask, x[threadIdx.x], 1);
    __syncwarp(mask);
    out[threadIdx.x] = v + (int)__popc(__ballot_sync(mask, v % 2 == 0));
}

__global__ void three_d(int* out) {
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    out[b * blockDim.x * blockDim.y * blockDim.z + t] = 1000 * b + t;
}

__global__ void strided_copy(const float* x, long long stride, float* out) {
    out[threadIdx.x] = x[threadIdx.x * stride];
}

__global__ void overrun(float* x, int n) { x[threadIdx.x + n] = 1.0f; }
__global__ void read_null(float* out) { const float* p = nullptr; out[0] = p[threadIdx.x]; }
__global__ void device_assert(int n) { assert(n > 3); }
__global__ void half_barrier(float* out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1.0f;
}
__global__ void early_exit(float* out) {
    if (threadIdx.x >= 16) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}
__global__ void divergent_shuffles(float* out) {
    float v = 1.0f;
    if (threadIdx.x % 2) v = __shfl_xor_sync(0xffffffffu, v, 1);
    else v = __shfl_down_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
__global__ void shuffle_partial_warp(float* out) { out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1); }
__device__ int deep(int n) {
    volatile char frame[4096];
    frame[0] = (char)n;
    return n > 0 ? deep(n - 1) + frame[0] : 0;
}
__global__ void recurse(int* out) { out[0] = deep(1000); }
__global__ void spin(volatile int* flag) {
    while (flag[0] == 0) {
    }
}
__global__ void trap_in_one(float* out) {
    if (threadIdx.x == 3) __trap();
    out[threadIdx.x] = 1.0f;
}
__global__ void integer_division(int* x, int d) { x[0] = x[1] / d; }
__global__ void scalars(bool b, signed char c, unsigned short s, int i, unsigned int u, long long l,
                        unsigned long long ul, float f, double d, double* out) {
    out[0] = b;
    out[1] = c;
    out[2] = s;
    out[3] = i;
    out[4] = u;
    out[5] = (double)l;
    out[6] = (double)ul;
    out[7] = f;
    out[8] = d;
}
