#!/usr/bin/env bash
# Fetches the benchmark's peers as wheels for the GPU machine (Python 3.12,
# manylinux x86-64; PyTorch, torchvision, torchmetrics, CuPy for CUDA 13,
# scikit-image and matplotlib are already there) into bench/wheels/, which git
# ignores. Run it where pip reaches the package registry; then bench/gpu.sh
# runs everything on the GPU machine (that folder travels with it).
#
# Pinned, and fetched without their needs (--no-deps), so each need that the
# GPU machine lacks is named here: kornia needs kornia-rs. cuCIM's image codec
# (nvidia-nvimgcodec) is left out: its metrics do not use it.
# fused-ssim publishes no wheel (it compiles against the local PyTorch); fussim
# is its packaged, faster successor. fussim's wheel was built against older
# PyTorch releases: its source distribution comes too (38 KB; pip prepares its
# metadata with the torch installed here), and bench/gpu.sh builds it on the
# GPU machine when the wheel's kernels do not load there.
set -euo pipefail
cd "$(dirname "$0")"
PEERS=(fussim==0.3.15 pytorch-msssim==1.0.0 kornia==0.9.0 kornia-rs==0.2.0 piq==0.8.0 cucim-cu13==26.10.0)
FUSSIM_SOURCE=fussim==0.3.1
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
    PLATFORMS+=(--platform "$p")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d wheels "${PEERS[@]}"
python3 -m pip download --no-deps --no-binary :all: --no-build-isolation -d wheels "$FUSSIM_SOURCE"
ls -l wheels
