#!/usr/bin/env bash
# Fetch, here (where the package registries answer), the Python 3.12 wheels that the GPU device
# machine lacks for opso's GPU checks (its image has torch, numpy, pandas, scipy, pyarrow, xarray,
# fsspec, pytest; not dask, zarr, soundfile, ...). They go to .whl/ in the repository root, which
# .git/info/exclude keeps out of git; the device tool carries them with `carry: [".whl"]`.
#   usage: benchmarks/gpu_check/fetch_wheels.sh        (then: benchmarks/gpu_check/README.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
rm -rf .whl && mkdir .whl
# versions as requirements/constraints.txt pins them (cffi/pycparser/crc32c: soundfile's and zarr's needs)
pin() { grep -i -E "^$1==" requirements/constraints.txt | head -1 || true; }
packages=()
for name in dask distributed zarr numcodecs donfig google-crc32c soundfile cffi pycparser soxr pydantic pydantic_core \
            annotated-types typing-inspection pywavelets tblib tornado zict locket partd; do
  p=$(pin "$name"); packages+=("${p:-$name}")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${packages[@]}"
du -sh .whl
ls .whl | wc -l
