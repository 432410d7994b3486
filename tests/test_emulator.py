"""The CPU emulator's own tests: every feature, and every error it turns into an exception."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cussim import _emulator
from cussim._emulator import _build

KERNELS = Path(__file__).with_name("emulator_kernels.cu")
NAME_EXPRESSIONS = ("block_sum<float>", "block_sum<double>", "block_sum<int>")


@pytest.fixture(scope="module")
def module():
    return _emulator.RawModule(path=KERNELS, name_expressions=NAME_EXPRESSIONS)


@pytest.fixture(params=_emulator.ORDERS)
def order(request, monkeypatch):
    monkeypatch.setenv("CUSSIM_EMULATOR_ORDER", request.param)
    monkeypatch.setenv("CUSSIM_EMULATOR_SEED", "12345")
    return request.param


def test_kernel_names_and_signatures(module):
    assert module.get_function("block_sum<float>").params == ("const float32*", "float32*", "int32")
    assert module.get_function("scalars").params == (
        "bool", "int8", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "float64*",
    )
    assert module.get_function("halves").params == ("const float16*", "float16*", "float32*", "const float32*")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_block_reduction_in_every_order(module, order, dtype):
    rng = np.random.default_rng(0)
    x = (rng.random(1000) * 100).astype(dtype)
    out = np.zeros(1, dtype)
    name = {np.float32: "float", np.float64: "double", np.int32: "int"}[dtype]
    module.get_function(f"block_sum<{name}>")((4,), (256,), (x, out, np.int32(x.size)))
    np.testing.assert_allclose(out[0], x.sum(dtype=np.float64), rtol=1e-5)


def test_missing_barrier_is_caught(module, monkeypatch):
    x = np.arange(64, dtype=np.float32)
    expected = x[np.arange(64) ^ 1]
    good = np.zeros(64, np.float32)
    module.get_function("neighbour_with_barrier")((1,), (64,), (x, good))
    np.testing.assert_array_equal(good, expected)
    caught = []
    for order in _emulator.ORDERS:
        monkeypatch.setenv("CUSSIM_EMULATOR_ORDER", order)
        out = np.zeros(64, np.float32)
        module.get_function("neighbour_missing_barrier")((1,), (64,), (x, out))
        if not np.array_equal(out, expected):
            caught.append(order)
    assert "forward" in caught and "shuffle" in caught


def test_shared_memory_is_poisoned_before_every_block(module, order):
    out = np.zeros(2 * 3 * 32, np.float32).reshape(3, 2, 32)
    flat = out.reshape(-1)
    # Each block writes 1.0 after reading; the next block must see NaN again.
    module.get_function("read_uninitialised")((3,), (32,), (flat,), shared_mem=32 * 4)
    assert np.isnan(out).all()


def test_dynamic_shared_memory(module, order):
    x = np.arange(48, dtype=np.float64)
    out = np.zeros_like(x)
    module.get_function("reverse_through_dynamic")((1,), (48,), (x, out, np.int32(48)), shared_mem=48 * 8)
    np.testing.assert_array_equal(out, x[::-1])


def test_thread_order_is_selectable(module, monkeypatch):
    seen = {}
    for order in _emulator.ORDERS:
        monkeypatch.setenv("CUSSIM_EMULATOR_ORDER", order)
        counter, ticket = np.zeros(1, np.int32), np.zeros(64, np.int32)
        module.get_function("tickets")((1,), (64,), (counter, ticket))
        seen[order] = ticket
        assert sorted(ticket) == list(range(64))
    assert list(seen["forward"]) == list(range(64))
    assert list(seen["reverse"]) == list(range(63, -1, -1))
    assert list(seen["shuffle"]) not in (list(seen["forward"]), list(seen["reverse"]))


@pytest.mark.parametrize("width", [32, 8])
def test_warp_shuffles_and_votes(module, order, width):
    x = np.arange(64, dtype=np.int32) * 3 % 17
    out = np.zeros(64 * 8, np.int32).reshape(64, 8)
    module.get_function("shuffles")((1,), (64,), (x, out.reshape(-1), np.int32(width)))
    ballots = out[:, 4].view(np.uint32)
    for t in range(64):
        lane, warp = t % 32, t // 32
        seg = lane - lane % width
        value = lambda src: x[warp * 32 + src]  # noqa: E731
        assert out[t, 0] == value(seg + 3 % width)
        assert out[t, 1] == value(lane - 2 if lane - 2 >= seg else lane)
        assert out[t, 2] == value(lane + 2 if lane + 2 < seg + width else lane)
        assert out[t, 3] == value(lane ^ 5 if (lane ^ 5) < seg + width else lane)
        votes = [x[warp * 32 + i] for i in range(32)]
        assert ballots[t] == sum(1 << i for i, v in enumerate(votes) if v % 3 == 0)
        assert out[t, 5] == any(v == 7 for v in votes)
        assert out[t, 6] == 1


def test_shuffle_of_doubles(module):
    x = np.linspace(-1, 1, 32)
    out = np.zeros(32)
    module.get_function("shuffle_double")((1,), (32,), (x, out))
    np.testing.assert_array_equal(out, x[np.arange(32) ^ 1])


def test_atomic_add_on_each_type(module, order):
    f, d, i, u = np.zeros(1, np.float32), np.zeros(1), np.zeros(1, np.int32), np.zeros(1, np.uint64)
    module.get_function("atomics")((3,), (128,), (f, d, i, u))
    assert (f[0], d[0], i[0], u[0]) == (192.0, 96.0, 768, 1152)


def test_block_wide_votes(module):
    out = np.zeros(3, np.int32)
    module.get_function("block_counts")((1,), (96,), (out,))
    assert list(out) == [32, 1, 1]


def test_math_intrinsics(module):
    x = np.linspace(0.25, 2.0, 32, dtype=np.float32)
    out = np.zeros(32 * 8, np.float32).reshape(32, 8)
    module.get_function("intrinsics")((1,), (32,), (x, out.reshape(-1)))
    expected = np.stack([
        np.exp(x), 1 / np.sqrt(x), 1 / x, np.maximum(x, 1), np.clip(x - 1, 0, 1),
        np.minimum((x * np.float32(10)).astype(np.int32), 12), x * x + 1, x,
    ], axis=1)
    np.testing.assert_allclose(out, expected, rtol=2e-7)


def test_half_loads_and_stores(module):
    bits = np.arange(0, 65536, 1, dtype=np.uint16)[::67]
    halves = bits.view(np.float16)[:1024].copy()
    n = halves.size
    rng = np.random.default_rng(1)
    quarter = n // 4
    source = np.concatenate([  # subnormal halves, large values, overflow and ties, ordinary values
        rng.standard_normal(quarter) * 1e-5, rng.standard_normal(quarter) * 100, [65504, 65520, 1e6, -1e-8, 0.0],
        rng.standard_normal(n - 2 * quarter - 5),
    ]).astype(np.float32)
    stored = np.zeros(n, np.float16)
    as_float = np.zeros(n, np.float32)
    module.get_function("halves")((1,), (n,), (halves, stored, as_float, source))
    np.testing.assert_array_equal(as_float, halves.astype(np.float32))
    with np.errstate(over="ignore"):
        expected = source.astype(np.float16)
    np.testing.assert_array_equal(stored.view(np.uint16), expected.view(np.uint16))
    copied = np.zeros(n, np.float16)
    module.get_function("copy_halves")((1,), (n,), (halves, copied))
    np.testing.assert_array_equal(copied.view(np.uint16), halves.view(np.uint16))


def test_bfloat16_loads_and_stores(module):
    values = np.array([1.0, -2.5, 3.140625, 1e-3, 65504.0, 1e30], np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact bfloat16 values, truncated
    as_float, stored = np.zeros(6, np.float32), np.zeros(6, np.uint16)
    source = np.array([1.0, 1.00390625, 1.01171875, -7.0, 0.0, 3e38], np.float32)
    module.get_function("bfloat16s")((1,), (6,), (bits, as_float, source, stored))
    np.testing.assert_array_equal(as_float, (bits.astype(np.uint32) << 16).view(np.float32))
    rounded = ((source.view(np.uint32) + 0x7FFF + ((source.view(np.uint32) >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(stored, rounded)  # round to nearest even


def test_warp_operations_on_partial_masks(module, order):
    x = np.arange(32, dtype=np.int32) * 7 % 11
    out = np.zeros(32, np.int32)
    module.get_function("half_warp_groups")((1,), (32,), (x, out))
    swapped = x[np.arange(32) ^ 1]
    for half in (slice(0, 16), slice(16, 32)):
        evens = int(np.sum(swapped[half] % 2 == 0))
        np.testing.assert_array_equal(out[half], swapped[half] + evens)


def test_three_dimensional_grids_and_blocks(module, order):
    out = np.full(2 * 3 * 2 * 4 * 2 * 2, -1, np.int32)
    module.get_function("three_d")((2, 3, 2), (4, 2, 2), (out,))
    block, thread = np.divmod(np.arange(out.size), 16)
    np.testing.assert_array_equal(out, 1000 * block + thread)


def test_views_pass_a_pointer_to_their_first_element(module):
    base = np.arange(100, dtype=np.float32)
    view = base[::-3]  # negative stride: the kernel walks backwards with its own stride
    out = np.zeros(10, np.float32)
    module.get_function("strided_copy")((1,), (10,), (view, np.int64(-3), out))
    np.testing.assert_array_equal(out, view[:10])


def test_scalar_types_pass_by_value(module):
    out = np.zeros(9)
    module.get_function("scalars")((1,), (1,), (
        np.bool_(True), np.int8(-5), np.uint16(65535), np.int32(-7), np.uint32(4000000000), np.int64(-(2**40)),
        np.uint64(2**63), np.float32(0.5), np.float64(1 / 3), out,
    ))
    assert list(out) == [1, -5, 65535, -7, 4000000000, -(2**40), 2**63, 0.5, 1 / 3]


# ---- argument checks -----------------------------------------------------------

@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros(4, np.float32), np.zeros(1, np.float32), 4), r"argument 2 \(int32\).*got int"),
        ((np.zeros(4, np.float32), np.zeros(1, np.float32), np.int64(4)), r"got a NumPy int64 scalar.*int32"),
        ((np.zeros(4), np.zeros(1, np.float32), np.int32(4)), r"dtype is float64, the kernel reads float32"),
        ((np.zeros(4, np.float32), 3.0, np.int32(4)), r"is a pointer: pass a NumPy array"),
        ((np.zeros(4, np.float32), np.int32(4)), r"takes 3 arguments"),
        ((np.zeros(4, ">f4"), np.zeros(1, np.float32), np.int32(4)), r"byte-swapped"),
    ],
    ids=["python-int", "wrong-width", "wrong-dtype", "not-an-array", "count", "byte-order"],
)
def test_argument_types_are_checked(module, args, match):
    with pytest.raises(_emulator.ArgumentTypeError, match=match):
        module.get_function("block_sum<float>")((1,), (32,), args)


def test_read_only_array_for_a_writable_pointer(module):
    out = np.zeros(1, np.float32)
    out.flags.writeable = False
    with pytest.raises(_emulator.ArgumentTypeError, match="read-only"):
        module.get_function("block_sum<float>")((1,), (32,), (np.zeros(4, np.float32), out, np.int32(4)))


@pytest.mark.parametrize(
    "grid, block, shared, match",
    [
        ((1,), (1025,), 0, "x = 1025 is outside 1..1024"),
        ((1,), (32, 64), 0, "2048 threads; a GPU block has at most 1024"),
        ((1, 70000), (32,), 0, "y = 70000 is outside 1..65535"),
        ((0,), (32,), 0, "x = 0 is outside"),
        ((1,), (1, 1, 65), 0, "z = 65 is outside 1..64"),
        ((1,), (32,), 64 * 1024, "max_dynamic_shared_size_bytes"),
    ],
)
def test_launch_configuration_limits(module, grid, block, shared, match):
    with pytest.raises(_emulator.LaunchConfigError, match=match):
        module.get_function("tickets")(grid, block, (np.zeros(1, np.int32), np.zeros(2048, np.int32)),
                                       shared_mem=shared)


def test_shared_memory_opt_in_is_bounded(module):
    function = module.get_function("tickets")
    function.max_dynamic_shared_size_bytes = 100 * 1024
    counter, ticket = np.zeros(1, np.int32), np.zeros(32, np.int32)
    function((1,), (32,), (counter, ticket), shared_mem=64 * 1024)
    with pytest.raises(_emulator.LaunchConfigError, match="outside 0..232448"):
        function.max_dynamic_shared_size_bytes = 300 * 1024


def test_missing_compiler_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "no-such-compiler-cussim")
    monkeypatch.setenv("CUSSIM_CACHE_DIR", str(tmp_path))
    _build._toolchain_identity.cache_clear()
    try:
        with pytest.raises(_emulator.CompileError, match="needs a C\\+\\+17 compiler.*set CXX"):
            _emulator.RawModule(code="__global__ void k() {}").get_function("k")
    finally:
        _build._toolchain_identity.cache_clear()


def test_unknown_kernel_name(module):
    with pytest.raises(_emulator.EmulatorError, match="block_sum<float>.*name_expressions"):
        module.get_function("block_sum<half>")


# ---- device-side errors become exceptions; the interpreter lives on ----------------

def _launch(module, name, *args, grid=(1,), block=(32,), **kwargs):
    module.get_function(name)(grid, block, args, **kwargs)


def test_invalid_memory_access(module):
    with pytest.raises(_emulator.KernelFault, match=r"SIGSEGV.*thread \(\d+,0,0\) of block \(0,0,0\)"):
        _launch(module, "read_null", np.zeros(1, np.float32))


def test_out_of_bounds_past_the_end_with_the_guard(module, monkeypatch):
    monkeypatch.setenv("CUSSIM_EMULATOR_GUARD", "1")
    x = np.zeros(40, np.float32)
    overrun = r"argument 0, an array of 40 float32 elements.*\d+ bytes past the end"
    with pytest.raises(_emulator.KernelFault, match=overrun):
        _launch(module, "overrun", x, np.int32(16))  # threads 24.. write past the end
    _launch(module, "overrun", x, np.int32(8))  # in bounds: the guard copy is written back
    assert x[8:40].sum() == 32.0


def test_a_guard_page_that_cannot_be_protected_is_an_error_and_no_launch(module, monkeypatch):
    from cussim._emulator import _module

    class RefusingLibc:
        @staticmethod
        def mprotect(address, size, protection):
            return -1

    monkeypatch.setenv("CUSSIM_EMULATOR_GUARD", "1")
    monkeypatch.setattr(_module, "_libc", RefusingLibc)
    x = np.zeros(40, np.float32)
    with pytest.raises(_emulator.EmulatorError, match="could not protect a guard page"):
        _launch(module, "overrun", x, np.int32(8))
    assert not x.any()


def test_dynamic_shared_memory_overrun(module):
    with pytest.raises(_emulator.KernelFault, match="dynamic shared memory.*past the 64 bytes"):
        _launch(module, "reverse_through_dynamic", np.zeros(32), np.zeros(32), np.int32(32), shared_mem=64)


def test_device_assert(module):
    with pytest.raises(_emulator.DeviceAssertionError, match=r"assert\(n > 3\) failed at emulator_kernels.cu:\d+"):
        _launch(module, "device_assert", np.int32(1))
    _launch(module, "device_assert", np.int32(5))


def test_deadlock_and_barrier_divergence(module, order):
    with pytest.raises(_emulator.SynchronisationError, match=r"__syncthreads \(emulator_kernels.cu:\d+\).*exited"):
        _launch(module, "half_barrier", np.zeros(32, np.float32))
    with pytest.raises(_emulator.SynchronisationError, match="every thread of a block must reach"):
        _launch(module, "early_exit", np.zeros(32, np.float32))


def test_warp_divergence(module):
    with pytest.raises(_emulator.SynchronisationError, match="warp divergence.*__shfl_down_sync.*__shfl_xor_sync"):
        _launch(module, "divergent_shuffles", np.zeros(32, np.float32))
    with pytest.raises(_emulator.SynchronisationError, match="names lanes that do not exist"):
        _launch(module, "shuffle_partial_warp", np.zeros(48, np.float32), block=(48,))


def test_stack_overflow(module):
    with pytest.raises(_emulator.KernelFault, match="stack overflow in thread"):
        _launch(module, "recurse", np.zeros(1, np.int32), block=(1,))


def test_spinning_thread_times_out(module, monkeypatch):
    monkeypatch.setenv("CUSSIM_EMULATOR_TIMEOUT", "0.5")
    with pytest.raises(_emulator.KernelTimeout, match="time limit"):
        _launch(module, "spin", np.zeros(1, np.int32), block=(1,))


def test_trap_and_arithmetic_fault(module):
    with pytest.raises(_emulator.KernelFault, match=r"__trap\(\).*thread \(3,0,0\)"):
        _launch(module, "trap_in_one", np.zeros(32, np.float32))
    with pytest.raises(_emulator.KernelFault, match="SIGFPE"):
        _launch(module, "integer_division", np.ones(2, np.int32), np.int32(0), block=(1,))


def test_faults_leave_the_interpreter_usable(module):
    for _ in range(3):
        with pytest.raises(_emulator.KernelFault):
            _launch(module, "read_null", np.zeros(1, np.float32))
    out = np.zeros(1, np.float32)
    module.get_function("block_sum<float>")((1,), (64,), (np.ones(64, np.float32), out, np.int32(64)))
    assert out[0] == 64


def test_fault_in_a_subprocess_keeps_the_process_alive(tmp_path):
    """With faulthandler enabled (as under pytest), a fault is still an exception, not a crash."""
    script = textwrap.dedent(f"""
        import faulthandler, numpy as np
        faulthandler.enable()
        from cussim._emulator import RawModule, KernelFault
        m = RawModule(path={str(KERNELS)!r}, name_expressions={NAME_EXPRESSIONS!r})
        try:
            m.get_function("read_null")((1,), (1,), (np.zeros(1, np.float32),))
        except KernelFault as e:
            print("caught", type(e).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stderr
    assert "caught KernelFault" in result.stdout


# ---- building and caching ---------------------------------------------------------------

def test_compile_error_carries_the_log(empty_emulator_cache):
    module = _emulator.RawModule(code="__global__ void k(float* x) { x[0] = undefined_name; }")
    with pytest.raises(_emulator.CompileError, match="undefined_name"):
        module.get_function("k")


def test_template_kernels_need_name_expressions(empty_emulator_cache):
    code = "template <int N> __global__ void k(int* x) { x[0] = N; }\n__global__ void plain(int* x) { x[0] = -1; }"
    assert _build.kernel_names(code) == (["plain"], ["k"])
    module = _emulator.RawModule(code=code, name_expressions=["k<7>"])
    out = np.zeros(1, np.int32)
    module.get_function("k<7>")((1,), (1,), (out,))
    module.get_function("plain")
    assert out[0] == 7


def test_unsupported_parameter_types_are_named(empty_emulator_cache):
    module = _emulator.RawModule(code="__global__ void k(int2 v, int* x) { x[0] = v.x; }")
    with pytest.raises(_emulator.CompileError, match="unsupported kernel parameter type"):
        module.get_function("k")


def test_options_reach_the_preprocessor(empty_emulator_cache):
    code = "__global__ void k(int* x) { x[0] = VALUE; }"
    out = np.zeros(1, np.int32)
    _emulator.RawModule(code=code, options=("-DVALUE=41", "--use_fast_math", "-arch=sm_90")).get_function("k")(
        (1,), (1,), (out,))
    assert out[0] == 41


def test_builds_are_cached_by_content(empty_emulator_cache):
    code = "__global__ void k(int* x) { x[0] = 3; }"
    first = _build.build_module(code, "k.cu")
    mtime = first.stat().st_mtime_ns
    assert _build.build_module(code, "k.cu") == first and first.stat().st_mtime_ns == mtime
    assert _build.build_module(code.replace("3", "4"), "k.cu") != first


def test_concurrent_builds_from_several_processes(tmp_path):
    script = textwrap.dedent("""
        import numpy as np
        from cussim._emulator import RawModule
        out = np.zeros(1, np.int32)
        RawModule(code="__global__ void k(int* x) { x[0] = 12345; }").get_function("k")((1,), (1,), (out,))
        assert out[0] == 12345
    """)
    env = dict(os.environ, CUSSIM_CACHE_DIR=str(tmp_path))
    processes = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
                 for _ in range(4)]
    for p in processes:
        assert p.wait() == 0, p.stderr.read()
    assert len(list((tmp_path / "emulator").glob("module-*.so"))) == 1
    assert not list((tmp_path / "emulator").glob("*.tmp"))


def test_the_cache_is_the_users_without_cussim_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("CUSSIM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _build.cache_dir() == tmp_path / "xdg" / "cussim" / "emulator"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _build.cache_dir() == tmp_path / "home" / ".cache" / "cussim" / "emulator"


def test_nvrtc_options_become_gcc_preprocessor_flags():
    options = ("--define-macro=N=4", "--undefine-macro=OLD", "--include-path=/opt/inc", "-DM", "-I/usr/inc",
               "--std=c++17", "-arch=sm_90", "--use_fast_math")
    assert _build.translate_options(options) == (["-DN=4", "-UOLD", "-I/opt/inc", "-DM", "-I/usr/inc"], "-std=c++17")
    assert _build.translate_options(()) == ([], _build.DEFAULT_STD)


def test_the_mxcsr_helper_builds_into_an_empty_cache_and_sets_the_register(empty_emulator_cache):
    _build.mxcsr_library.cache_clear()
    try:
        library = _build.mxcsr_library()
        assert [p.name for p in (empty_emulator_cache / "emulator").glob("mxcsr-*.so")] != []
        saved = library.emu_get_mxcsr()
        flush = 0x8040  # FTZ and DAZ
        library.emu_set_mxcsr(saved | flush)
        try:
            assert library.emu_get_mxcsr() & flush == flush
            assert np.float32(1e-20) * np.float32(1e-20) == 0  # this thread now flushes denormals
        finally:
            library.emu_set_mxcsr(saved)
        assert library.emu_get_mxcsr() == saved and np.float32(1e-20) * np.float32(1e-20) != 0
    finally:
        _build.mxcsr_library.cache_clear()


def test_extern_shared_rewrite():
    source = "extern __shared__ __align__(16) float buffer[];\nextern __shared__ unsigned char raw[];"
    rewritten = _build.rewrite_extern_shared(source)
    assert "float* buffer = reinterpret_cast<float*>(::emu::dynamic_shared());" in rewritten
    assert "unsigned char* raw = reinterpret_cast<unsigned char*>(::emu::dynamic_shared());" in rewritten


_FP_KERNEL = """
template <class T> __global__ void fp(T* out, const T* a, const T* b, const T* c) {
    out[0] = a[0] * b[0] + c[0];  // an FMA keeps the product's low bits: -2**-46, not 0
    out[1] = a[1] * b[1];         // a denormal product: 0 when flushed
    out[2] = a[2] + c[2];         // a denormal input: read as 0 when flushed
}"""


@pytest.mark.parametrize("mode, expected", [("exact", [0.0, 1e-40, 1e-40]), ("gpu", [-(2.0**-46), 0.0, 0.0])])
def test_fp_mode_contracts_and_flushes_denormals_as_a_gpu_does(monkeypatch, mode, expected):
    """CUSSIM_EMULATOR_FPMODE=gpu: multiply-adds become FMAs and float32 denormals flush to zero (NVRTC's
    contraction and CuPy's -ftz=true); the default keeps the source's roundings and denormals. The caller's
    MXCSR is back after the launch (NumPy keeps its denormals)."""
    monkeypatch.setenv("CUSSIM_EMULATOR_FPMODE", mode)
    a = np.array([1 + 2.0**-23, 1e-20, 1e-40], np.float32)
    b = np.array([1 - 2.0**-23, 1e-20, 0], np.float32)
    c = np.array([-1, 0, 0], np.float32)
    out = np.full(3, np.nan, np.float32)
    _emulator.RawModule(code=_FP_KERNEL, name_expressions=["fp<float>"]).get_function("fp<float>")(
        (1,), (1,), (out, a, b, c))
    np.testing.assert_array_equal(out, np.array(expected, np.float32))
    assert np.float32(1e-20) * np.float32(1e-20) != 0


def test_fp_mode_is_checked(monkeypatch):
    monkeypatch.setenv("CUSSIM_EMULATOR_FPMODE", "fast")
    with pytest.raises(ValueError, match="CUSSIM_EMULATOR_FPMODE='fast': use one of exact, gpu"):
        _build.fp_mode()


def test_fp_mode_gpu_needs_an_x86_64_cpu_with_fma(monkeypatch):
    monkeypatch.setenv("CUSSIM_EMULATOR_FPMODE", "gpu")
    monkeypatch.setattr(_build.platform, "machine", lambda: "aarch64")
    with pytest.raises(ValueError, match="needs an x86-64 CPU with FMA.*this one is aarch64"):
        _build.fp_mode()
    _build._cpu_has_fma.cache_clear()
    monkeypatch.setattr(_build, "Path", lambda path: Path("/nonexistent/cpuinfo"))
    try:
        assert _build._cpu_has_fma() is False
    finally:
        _build._cpu_has_fma.cache_clear()


def test_launch_arguments_are_checked(monkeypatch):
    kernel = _emulator.RawModule(code="__global__ void k(int* x) { x[0] = 1; }").get_function("k")
    x = np.zeros(1, np.int32)
    with pytest.raises(_emulator.LaunchConfigError, match="shared_mem must be a non-negative int"):
        kernel((1,), (1,), (x,), shared_mem=-1)
    with pytest.raises(_emulator.ArgumentTypeError, match="args must be a tuple, got ndarray"):
        kernel((1,), (1,), x)
    with pytest.raises(_emulator.LaunchConfigError, match="grid must be an int or a tuple of 1 to 3 ints"):
        kernel((1, 1, 1, 1), (1,), (x,))
    with pytest.raises(ValueError, match="RawModule takes exactly one of code= or path="):
        _emulator.RawModule()
    monkeypatch.setenv("CUSSIM_EMULATOR_ORDER", "sideways")
    with pytest.raises(ValueError, match="CUSSIM_EMULATOR_ORDER='sideways'"):
        kernel((1,), (1,), (x,))
