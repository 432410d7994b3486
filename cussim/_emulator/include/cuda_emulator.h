// cuda_emulator.h: the CUDA built-ins for g++, so that kernels/*.cu compile
// unchanged for the CPU emulator (cussim/_emulator). Included first by the
// translation unit that _build.py generates around a kernel source.
//
// Threads of a block run as cooperative fibers (runtime.cpp); every call that
// synchronises (__syncthreads, __syncwarp, the shuffles and votes) switches back
// to the scheduler. threadIdx and blockIdx are plain globals that the scheduler
// sets before it resumes a fiber. __shared__ variables are thread_local, so the
// runtime can poison the module's TLS block (all of them at once) before every
// block; the only thread_local objects of a module are its __shared__ ones.
#pragma once

// Standard headers before any CUDA macro: libstdc++ spells attributes like
// __attribute__((__noinline__)), which the CUDA macro of that name would break.
#include <cassert>  // assert() is built into NVRTC; device asserts reach runtime.cpp
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <climits>
#include <cfloat>
#include <type_traits>
#include <utility>

#define CUSSIM_EMULATOR 1

// ---- qualifiers ----------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__
#define __managed__
#define __grid_constant__
#define __shared__ static thread_local

// ---- vector types and launch geometry ----------------------------------------
#define EMU_VEC2(T, N, A) struct __attribute__((aligned(A))) N##2 { T x, y; };            \
    inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define EMU_VEC3(T, N) struct N##3 { T x, y, z; };                                       \
    inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define EMU_VEC4(T, N, A) struct __attribute__((aligned(A))) N##4 { T x, y, z, w; };     \
    inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
EMU_VEC2(int, int, 8) EMU_VEC3(int, int) EMU_VEC4(int, int, 16)
EMU_VEC2(unsigned int, uint, 8) EMU_VEC3(unsigned int, uint) EMU_VEC4(unsigned int, uint, 16)
EMU_VEC2(float, float, 8) EMU_VEC3(float, float) EMU_VEC4(float, float, 16)
EMU_VEC2(double, double, 16) EMU_VEC3(double, double)
EMU_VEC2(long long, longlong, 16)
#undef EMU_VEC2
#undef EMU_VEC3
#undef EMU_VEC4

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

namespace emu {
extern uint3 g_threadIdx;
extern uint3 g_blockIdx;
extern dim3 g_blockDim;
extern dim3 g_gridDim;
}  // namespace emu

#define threadIdx (static_cast<const uint3&>(::emu::g_threadIdx))
#define blockIdx (static_cast<const uint3&>(::emu::g_blockIdx))
#define blockDim (static_cast<const dim3&>(::emu::g_blockDim))
#define gridDim (static_cast<const dim3&>(::emu::g_gridDim))
static constexpr int warpSize = 32;

// ---- half and bfloat16 (storage types with float conversions) ----------------
namespace emu {
inline float half_bits_to_float(unsigned short h) {
    unsigned int sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {  // subnormal half: normalise
        int e = -1;
        do { mant <<= 1; ++e; } while (!(mant & 0x400u));
        bits = sign | ((unsigned)(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
inline unsigned short float_to_half_bits(float f) {  // round to nearest even
    unsigned int x;
    std::memcpy(&x, &f, 4);
    unsigned int sign = (x >> 16) & 0x8000u, absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
    if (absx >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds past 65504
    if (absx < 0x38800000u) {  // subnormal or zero half
        if (absx < 0x33000000u) return (unsigned short)sign;
        unsigned int e = absx >> 23, m = (absx & 0x7fffffu) | 0x800000u, shift = 126 - e;
        unsigned int r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) ++r;
        return (unsigned short)(sign | r);
    }
    unsigned int r = ((absx >> 13) - (112u << 10)), rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) ++r;
    return (unsigned short)(sign | r);
}
}  // namespace emu

struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(::emu::float_to_half_bits(f)) {}
    __half(double f) : __x(::emu::float_to_half_bits((float)f)) {}
    operator float() const { return ::emu::half_bits_to_float(__x); }
};
struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) {
        unsigned int u;
        std::memcpy(&u, &f, 4);
        __x = (u & 0x7fffffffu) > 0x7f800000u ? (unsigned short)((u >> 16) | 0x40u)
                                             : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    operator float() const {
        unsigned int u = (unsigned int)__x << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
};
typedef __half half;
inline float __half2float(__half h) { return (float)h; }
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { __half h; h.__x = u; return h; }
inline float __bfloat162float(__nv_bfloat16 h) { return (float)h; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }

// ---- maths: intrinsics and CUDA's global overloads -------------------------
// glibc declares __expf and friends itself, so these must be macros.
#define __expf(x) ::expf(x)
#define __logf(x) ::logf(x)
#define __log2f(x) ::log2f(x)
#define __sinf(x) ::sinf(x)
#define __cosf(x) ::cosf(x)
#define __powf(x, y) ::powf(x, y)
#define __sincosf(x, s, c) ::sincosf(x, s, c)
#define __exp10f(x) ::powf(10.0f, x)
using std::isfinite;
using std::isinf;
using std::isnan;
inline float rsqrtf(float x) { return 1.0f / ::sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / ::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return ::sqrtf(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return ::fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return ::fma(a, b, c); }
inline int __float2int_rn(float x) { return (int)::nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)::floorf(x); }
inline int __float2int_ru(float x) { return (int)::ceilf(x); }
inline float __int2float_rn(int x) { return (float)x; }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline unsigned int __float_as_uint(float x) { unsigned int i; std::memcpy(&i, &x, 4); return i; }
inline double __longlong_as_double(long long x) { double d; std::memcpy(&d, &x, 8); return d; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
template <class T> inline T __ldg(const T* p) { return *p; }
#define EMU_MINMAX(T)                                          \
    inline T min(T a, T b) { return b < a ? b : a; }           \
    inline T max(T a, T b) { return a < b ? b : a; }
EMU_MINMAX(int)
EMU_MINMAX(unsigned int)
EMU_MINMAX(long long)
EMU_MINMAX(unsigned long long)
EMU_MINMAX(long)
EMU_MINMAX(unsigned long)
inline float min(float a, float b) { return ::fminf(a, b); }
inline float max(float a, float b) { return ::fmaxf(a, b); }
inline double min(double a, double b) { return ::fmin(a, b); }
inline double max(double a, double b) { return ::fmax(a, b); }
#undef EMU_MINMAX

// ---- synchronisation: every one of these yields to the scheduler ------------
namespace emu {
enum WarpOpKind { OP_SYNCWARP, OP_SHFL_IDX, OP_SHFL_UP, OP_SHFL_DOWN, OP_SHFL_XOR, OP_BALLOT, OP_ANY, OP_ALL };
int syncthreads(int predicate, int reduce, const char* file, int line);  // reduce: 0 none, 1 count, 2 and, 3 or
unsigned long long warp_op(int kind, unsigned mask, unsigned long long value, int arg, int width, const char* file,
                           int line);
[[noreturn]] void trap(const char* what, const char* file, int line);
void* dynamic_shared();
unsigned active_mask();

// A call site: the macros below expand `__shfl_sync(...)` to
// `::emu::Site{__FILE__, __LINE__}.shfl_idx(...)`, so that a deadlock or a
// divergence can be reported with the line where each thread waits.
struct Site {
    const char* file;
    int line;
    int syncthreads(int predicate = 0, int reduce = 0) const { return ::emu::syncthreads(predicate, reduce, file, line); }
    void syncwarp(unsigned mask = 0xffffffffu) const { warp_op(OP_SYNCWARP, mask, 0, 0, 32, file, line); }
    template <class T> T shfl(int kind, unsigned mask, T var, int arg, int width) const {
        static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
        unsigned long long bits = 0;
        std::memcpy(&bits, &var, sizeof(T));
        bits = warp_op(kind, mask, bits, arg, width, file, line);
        T out;
        std::memcpy(&out, &bits, sizeof(T));
        return out;
    }
    template <class T> T shfl_idx(unsigned m, T v, int lane, int width = 32) const { return shfl(OP_SHFL_IDX, m, v, lane, width); }
    template <class T> T shfl_up(unsigned m, T v, unsigned d, int width = 32) const { return shfl(OP_SHFL_UP, m, v, (int)d, width); }
    template <class T> T shfl_down(unsigned m, T v, unsigned d, int width = 32) const { return shfl(OP_SHFL_DOWN, m, v, (int)d, width); }
    template <class T> T shfl_xor(unsigned m, T v, int lane_mask, int width = 32) const { return shfl(OP_SHFL_XOR, m, v, lane_mask, width); }
    unsigned ballot(unsigned m, int p) const { return (unsigned)warp_op(OP_BALLOT, m, p != 0, 0, 32, file, line); }
    int any(unsigned m, int p) const { return (int)warp_op(OP_ANY, m, p != 0, 0, 32, file, line); }
    int all(unsigned m, int p) const { return (int)warp_op(OP_ALL, m, p != 0, 0, 32, file, line); }
    [[noreturn]] void trap_here(const char* what) const { trap(what, file, line); }
};
}  // namespace emu

#define EMU_SITE (::emu::Site{__FILE__, __LINE__})
#define __syncthreads() ((void)EMU_SITE.syncthreads())
#define __syncthreads_count(p) EMU_SITE.syncthreads((p), 1)
#define __syncthreads_and(p) EMU_SITE.syncthreads((p), 2)
#define __syncthreads_or(p) EMU_SITE.syncthreads((p), 3)
#define __syncwarp EMU_SITE.syncwarp
#define __shfl_sync EMU_SITE.shfl_idx
#define __shfl_up_sync EMU_SITE.shfl_up
#define __shfl_down_sync EMU_SITE.shfl_down
#define __shfl_xor_sync EMU_SITE.shfl_xor
#define __ballot_sync EMU_SITE.ballot
#define __any_sync EMU_SITE.any
#define __all_sync EMU_SITE.all
#define __activemask() ::emu::active_mask()
#define __trap() EMU_SITE.trap_here("__trap()")
#define __brkpt() EMU_SITE.trap_here("__brkpt()")
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ---- atomics: fibers never preempt each other, so plain read-modify-write ----
#define EMU_ATOMIC(NAME, EXPR)                                   \
    template <class T> inline T NAME(T* address, T val) {        \
        T old = *address;                                        \
        *address = (EXPR);                                       \
        return old;                                              \
    }
EMU_ATOMIC(atomicAdd, old + val)
EMU_ATOMIC(atomicSub, old - val)
EMU_ATOMIC(atomicExch, val)
EMU_ATOMIC(atomicMin, val < old ? val : old)
EMU_ATOMIC(atomicMax, old < val ? val : old)
EMU_ATOMIC(atomicAnd, old & val)
EMU_ATOMIC(atomicOr, old | val)
EMU_ATOMIC(atomicXor, old ^ val)
#undef EMU_ATOMIC
template <class T> inline T atomicCAS(T* address, T compare, T val) {
    T old = *address;
    if (old == compare) *address = val;
    return old;
}
inline unsigned int atomicInc(unsigned int* address, unsigned int val) {
    unsigned int old = *address;
    *address = old >= val ? 0 : old + 1;
    return old;
}
inline unsigned int atomicDec(unsigned int* address, unsigned int val) {
    unsigned int old = *address;
    *address = (old == 0 || old > val) ? val : old - 1;
    return old;
}

// ---- kernel table: how the generated code exports kernels to Python ---------
namespace emu {
template <class T> struct AlwaysFalse { static constexpr bool value = false; };
template <class T, class Enable = void> struct TypeCode {
    static_assert(AlwaysFalse<T>::value,
                  "emulator: unsupported kernel parameter type; kernels take pointers and bool, integer, float, "
                  "double, __half or __nv_bfloat16 values");
    static constexpr const char* code = "";
};
#define EMU_TYPECODE(T, CODE) template <> struct TypeCode<T> { static constexpr const char* code = CODE; };
EMU_TYPECODE(bool, "bool")
EMU_TYPECODE(float, "float32")
EMU_TYPECODE(double, "float64")
EMU_TYPECODE(__half, "float16")
EMU_TYPECODE(__nv_bfloat16, "bfloat16")
EMU_TYPECODE(void, "void")
#undef EMU_TYPECODE
template <class T>
struct TypeCode<T, typename std::enable_if<std::is_integral<T>::value && !std::is_same<T, bool>::value>::type> {
    static constexpr const char* code = std::is_signed<T>::value
        ? (sizeof(T) == 1 ? "int8" : sizeof(T) == 2 ? "int16" : sizeof(T) == 4 ? "int32" : "int64")
        : (sizeof(T) == 1 ? "uint8" : sizeof(T) == 2 ? "uint16" : sizeof(T) == 4 ? "uint32" : "uint64");
};

// One parameter's code: "int32", or "float32*" / "const float32*" for pointers.
template <class P> inline void append_param(char* out) {
    using B = typename std::remove_cv<P>::type;
    if constexpr (std::is_pointer<B>::value) {
        using E = typename std::remove_pointer<B>::type;
        static_assert(!std::is_pointer<E>::value, "emulator: pointer-to-pointer kernel parameters are not supported");
        if (std::is_const<E>::value) std::strcat(out, "const ");
        std::strcat(out, TypeCode<typename std::remove_cv<E>::type>::code);
        std::strcat(out, "*");
    } else {
        std::strcat(out, TypeCode<B>::code);
    }
    std::strcat(out, ",");
}

struct KernelEntry {
    const char* name;
    void (*invoke)(void* fn, void** args);
    void* fn;
    const char* (*signature)();
};

template <class... A, std::size_t... I>
inline void invoke_with(void (*fn)(A...), void** args, std::index_sequence<I...>) {
    fn(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}
template <class... A> inline void invoke(void* fn, void** args) {
    invoke_with(reinterpret_cast<void (*)(A...)>(fn), args, std::index_sequence_for<A...>{});
}
template <class... A> inline const char* signature() {
    static char text[64 * (sizeof...(A) + 1)] = {0};
    if (!text[0]) {
        std::strcat(text, " ");  // never empty once built, even for a kernel without parameters
        (append_param<A>(text), ...);
    }
    return text + 1;
}
template <class... A> inline KernelEntry make_entry(const char* name, void (*fn)(A...)) {
    return KernelEntry{name, &invoke<A...>, reinterpret_cast<void*>(fn), &signature<A...>};
}
}  // namespace emu
