"""PREDICTED kernel times per GPU from whole-kernel instruction counts and bytes (``python -m bench.roofline``).

Nothing here is measured on a GPU: every time is a PREDICTION of a simple
roofline, a lower bound that leaves out latency, barrier stalls, occupancy
and cache misses past the compulsory traffic. A kernel's predicted time at a
shape is the largest of

- its thread instructions (bench/sass_whole.py, per pixel, times the pixels)
  over the SMs' issue rate, 4 warp instructions per clock per SM (4 x 32
  thread instructions);
- for each execution unit, the instructions it runs over its rate per SM per
  clock (:data:`RATES`: the CUDA C++ Programming Guide's table of arithmetic
  instruction throughput per compute capability; shared and global memory
  instructions at one warp instruction per clock per SM);
- its compulsory DRAM bytes (each input read once, each output written once:
  the halo's re-reads are taken to hit the caches) over the memory bandwidth.

The clocks are the published boost clocks, the bandwidths the published peak
bandwidths (:data:`GPUS`, the source of each named in words). A peer's
kernels are counted the same way (NVRTC for the same architecture, the same
SASS method) when its source lies in the ignored folder bench/peers-src/: for
fused-ssim, a checkout of Rahul Goel's fused-ssim repository in
bench/peers-src/fused-ssim/ (only its ``ssim.cu`` is read; none of it is
committed). Its kernels are compiled with the flags its setup.py gives nvcc
for CUDA (``--maxrregcount=32 --use_fast_math``).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import tempfile
from dataclasses import dataclass

from bench import sass, sass_march, sass_units, sass_whole
from cussim import _kernels, _nvrtc


@dataclass(frozen=True)
class GPU:
    name: str
    cc: int  # compute capability, as an sm_XX number
    sms: int
    clock_mhz: float  # boost clock
    bandwidth_gbs: float  # peak DRAM bandwidth, GB/s
    source: str


GPUS = (
    GPU("H100 SXM5 80GB", 90, 132, 1980, 3350,
        "NVIDIA's H100 Tensor Core GPU datasheet (SXM5: 3.35 TB/s HBM3) and architecture whitepaper (132 SMs); "
        "1980 MHz is the SXM5's maximum graphics clock that nvidia-smi reports"),
    GPU("H200 SXM 141GB", 90, 132, 1980, 4800,
        "NVIDIA's H200 datasheet (4.8 TB/s HBM3e); the H100's GH100 die, SM count and clocks"),
    GPU("A100 SXM4 80GB", 80, 108, 1410, 2039,
        "NVIDIA's A100 datasheet (80GB SXM: 2,039 GB/s) and the Ampere whitepaper (108 SMs, 1410 MHz boost)"),
    GPU("RTX 4090", 89, 128, 2520, 1008,
        "NVIDIA's GeForce RTX 4090 specifications (16,384 CUDA cores = 128 SMs, 2.52 GHz boost, 24 GB GDDR6X "
        "at 21 Gbps on 384 bits = 1,008 GB/s)"),
)

# Results per clock per SM (CUDA C++ Programming Guide, "Arithmetic Instructions"): 32-bit floating add,
# multiply, fused multiply-add; 64-bit; special functions (MUFU); conversions to and from 64-bit types;
# 32-bit integer add, compare, logic, shift, multiply-add; warp shuffle. Shared and global memory
# instructions: one warp instruction per clock per SM (32).
RATES = {
    80: dict(fp32=64, fp64=32, mufu=16, conv=16, int=64, shfl=32, shared=32, issue=128, **{"global": 32}),
    89: dict(fp32=128, fp64=2, mufu=16, conv=16, int=64, shfl=32, shared=32, issue=128, **{"global": 32}),
    90: dict(fp32=128, fp64=64, mufu=16, conv=16, int=64, shfl=32, shared=32, issue=128, **{"global": 32}),
}

# Compulsory DRAM bytes per pixel, float32 (reads + writes): cussim's forward reads x and y (its block sums
# are 8 bytes per 1,024 pixels); with the exact gradient it writes three partial maps; the backward reads
# x, y and the maps and writes the gradient. fused-ssim's forward always writes its SSIM map and, for
# training, three partial maps; its backward reads x, y, dL/dmap and the maps and writes the gradient (the
# mean of its map, another kernel, and the zero-filling of its outputs are not counted).
BYTES = {"cussim forward value": 8, "cussim forward exact": 20, "cussim backward": 24,
         "fused-ssim forward value": 12, "fused-ssim forward training": 24, "fused-ssim backward": 28}

PEERS_SRC = os.path.join(os.path.dirname(__file__), "peers-src")
_COOPERATIVE_GROUPS = """namespace cg {
struct thread_block {
    __device__ dim3 group_index() const { return blockIdx; }
    __device__ dim3 thread_index() const { return threadIdx; }
    __device__ unsigned thread_rank() const { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }
    __device__ void sync() const { __syncthreads(); }
};
__device__ inline thread_block this_thread_block() { return thread_block(); }
}
"""
FUSED_SSIM_FLAGS = ("--maxrregcount=32", "--use_fast_math")


def fused_ssim_source(path: str) -> str:
    """fused-ssim's ``ssim.cu`` reduced to its kernels for NVRTC: the host code (from its first
    ``std::tuple<torch::Tensor``) and the includes dropped, the four members of cooperative groups its
    kernels call given by a small namespace of the same meaning."""
    with open(path) as f:
        text = f.read()
    kernels = text[:text.index("std::tuple<torch::Tensor")]
    lines = [line for line in kernels.splitlines() if not line.startswith(("#include", "namespace cg ="))]
    return _COOPERATIVE_GROUPS + "\n".join(lines)


def peer_whole(name: str, function, planes: int, stores_per_iteration: int, trips, shape) -> sass_whole.Whole:
    """The whole-kernel count of a peer kernel whose block loops over ``planes`` planes of a 16 x 16 tile,
    one pixel per thread: the loop's straight code once per plane, each loop inside it ``trips`` source
    iterations per thread and plane (in order), a source iteration storing ``stores_per_iteration`` words
    to shared memory."""
    instructions = function["instructions"]
    loops = sass_march.backward_branches(function)
    march = sass_march._march(loops)
    inner = sass_march._children(march, loops)
    weights = {i: float(planes) for i, (a, _, _) in enumerate(instructions)
               if march[0] <= a <= march[1] and not any(h <= a <= e for h, e in inner)}
    for (head, end), trip in zip(inner, trips, strict=True):
        body = [i for i, (a, _, _) in enumerate(instructions) if head <= a <= end]
        stores = sum(sass_march._stored(instructions[i][1], 4) for i in body if instructions[i][1].startswith("STS"))
        weights.update({i: planes * trip * stores_per_iteration / max(stores, 1) for i in body})
    tiles = math.ceil(shape[-2] / 16) * math.ceil(shape[-1] / 16) * shape[0]
    geometry = dict(pixels=planes, coverage=tiles * 256 / (shape[-2] * shape[-1] * shape[0]), border=0.0,
                    blocks=tiles, sums=1, march=march, loops=loops)
    return sass_whole.whole(name, function, weights, None, geometry)


def fused_ssim_counts(arch: int, shape):
    """{kernel: (Whole, ptxas's resources)} of fused-ssim's forward and backward, or None without its source."""
    path = os.path.join(PEERS_SRC, "fused-ssim", "ssim.cu")
    if not os.path.exists(path):
        return None
    source = fused_ssim_source(path)
    names = ("fusedssimCUDA", "fusedssim_backwardCUDA")
    cubin, lowered = _nvrtc.compile_cubin(source, FUSED_SSIM_FLAGS, names, arch, "fused_ssim.cu")
    report = {k.name: k for k in _nvrtc.compile_report(source, FUSED_SSIM_FLAGS, names, arch, "fused_ssim.cu").kernels}
    with tempfile.TemporaryDirectory() as folder:
        file = os.path.join(folder, "peer.cubin")
        with open(file, "wb") as f:
            f.write(cubin)
        functions = sass.parse(subprocess.run([sass.nvdisasm(), "-c", file], capture_output=True, text=True,
                                              check=True).stdout, lowered)
    halo_rows = 16 + 10  # its backward: warp w loads rows w, w + 8, ... of the 26 halo rows
    trips = {"fusedssimCUDA": (), "fusedssim_backwardCUDA": (sum(-(-(halo_rows - w) // 8) for w in range(8)) / 8,)}
    stores = {"fusedssimCUDA": 1, "fusedssim_backwardCUDA": 3}
    return {n: (peer_whole(n, functions[n], shape[1], stores[n], trips[n], shape), report[n]) for n in names}


def predict(whole: sass_whole.Whole, bytes_per_pixel: float, gpu: GPU, pixels: int):
    """(PREDICTED seconds, what bounds it) of one kernel at ``pixels`` pixels on ``gpu``."""
    rates = RATES[gpu.cc]
    per_clock = gpu.sms * gpu.clock_mhz * 1e6
    times = {"issue": whole.per_pixel * pixels / (rates["issue"] * per_clock)}
    for unit, count in whole.pipes.items():
        if unit != "issue":
            times[unit] = count * pixels / (rates[unit] * per_clock)
    times["DRAM"] = bytes_per_pixel * pixels / (gpu.bandwidth_gbs * 1e9)
    bound = max(times, key=times.get)
    return times[bound], bound


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="SM architecture counted (default 90)")
    args = parser.parse_args(argv)
    shape = sass_units.SHAPE
    pixels = math.prod(shape)
    counted = {}  # architecture -> {kernel: Whole}
    for arch in sorted({args.arch} | {gpu.cc for gpu in GPUS}):
        wholes = {w.name: w for _, w, _ in sass.measure(arch, "float", 5, shape)}  # by name: the rows grow
        counted[arch] = {label: wholes[name] for label, name in (
            ("cussim forward value", _kernels.forward_name("float", 5, None, "ssim", False, False)),
            ("cussim forward exact", _kernels.forward_name("float", 5, "exact", "ssim", False, False)),
            ("cussim backward", _kernels.backward_name("float", 5)))}
        peer = fused_ssim_counts(arch, shape)
        if peer:
            counted[arch]["fused-ssim forward value"] = peer["fusedssimCUDA"][0]
            counted[arch]["fused-ssim forward training"] = peer["fusedssimCUDA"][0]
            counted[arch]["fused-ssim backward"] = peer["fusedssim_backwardCUDA"][0]
    kernels = counted[args.arch]
    label = "x".join(map(str, shape))
    print(f"PREDICTIONS (no GPU measured any of this): float32, 11x11 Gaussian, {label}; counts for sm_{args.arch} "
          f"(python -m bench.roofline; method in bench/roofline.py)\n")
    print(f"per pixel (shared: 128-byte cycles per warp)\n{'kernel':<28} {'instr/px':>8} {'bytes/px':>8} " + " ".join(f"{u:>7}" for u in sass_units.PIPES))
    for name, whole in kernels.items():
        print(f"{name:<28} {whole.per_pixel:>8.0f} {BYTES[name]:>8} " +
              " ".join(f"{whole.pipes[u]:>7.1f}" for u in sass_units.PIPES))
    if "fused-ssim backward" not in kernels:
        print("\n(fused-ssim's source is not in bench/peers-src/fused-ssim/: no peer rows)")
    combos = {"value": (("cussim forward value",), ("fused-ssim forward value",)),
              "value + gradient": (("cussim forward exact", "cussim backward"),
                                   ("fused-ssim forward training", "fused-ssim backward"))}
    print(f"\nPREDICTED microseconds at {label}, each GPU's counts compiled for its architecture (bound by: "
          "the unit or DRAM)")
    print(f"{'GPU':<16} {'call':<17} {'cussim':>16} {'fused-ssim':>16} {'ratio':>6}")
    for gpu in GPUS:
        for call, (mine, theirs) in combos.items():
            cells = []
            for names in (mine, theirs):
                if not all(n in kernels for n in names):
                    cells.append(None)
                    continue
                found = [predict(counted[gpu.cc][n], BYTES[n], gpu, pixels) for n in names]
                cells.append((sum(t for t, _ in found) * 1e6, "+".join(b for _, b in found)))
            text = [f"{c[0]:>7.1f} {c[1]:>8}" if c else f"{'-':>16}" for c in cells]
            ratio = f"{cells[1][0] / cells[0][0]:>6.2f}" if all(cells) else f"{'-':>6}"
            print(f"{gpu.name:<16} {call:<17} {text[0]} {text[1]} {ratio}")
    print("\nGPUs (published figures):")
    for gpu in GPUS:
        print(f"  {gpu.name}: sm_{gpu.cc}, {gpu.sms} SMs, {gpu.clock_mhz:.0f} MHz, {gpu.bandwidth_gbs:.0f} GB/s; "
              f"{gpu.source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
