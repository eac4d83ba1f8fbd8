#!/bin/bash
# Stages, here (where the package registry answers), the wheels a lent GPU machine needs for the benchmarks beside
# what its image has (torch, numpy, pandas, pyarrow, transformers 5.17, tokenizers 0.23, ...; with the image's
# transformers and tokenizers test_text, test_policy and test_original_function pass, and the closed-loop
# benchmark ran), in two folders that each travel in one call (a call carries at most 64 MiB with the repository):
#   bash benchmarks/gpu_wheels.sh [.whl1] [.whl2]
#   .whl1: the two large wheels, PyAV (video decoding) and torchao (--policy.gfdm_fp8), ~43 MB
#   .whl2: LeRobot and what it needs, this package's wheel and the CALVIN simulator (../shared/vendor: slim
#          PyBullet, calvin_env's dependencies, calvin_env.bundle), ~27 MB: with the repository (~9 MB) it leaves
#          room for a recorded dataset of up to ~25 MB in the same call
#   [third folder, optional, e.g. .whl3]: the wheels of both but the simulator's, ~55 MB: the GPU tests and
#          bench_policy.py need nothing else, so one call (with the ~10 MB repository, under the 64 MiB) sets up the
#          machine and starts the job, and no second call has to follow within the machine's idle release
# The folder names must be ignored by git (.git/info/exclude) so that they travel only when carried. On the
# machine: source benchmarks/gpu_machine_setup.sh .whl1 (one call), then .whl2 (the next call, within 30 s); or
# source benchmarks/gpu_machine_setup.sh .whl3 (one call, no simulator).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
first=${1:-.whl1}
second=${2:-.whl2}
single=${3:-}
vendor=${VENDOR_DIR:-$repo/../shared/vendor}
python=${PYTHON:-$repo/.venv/bin/python}
mkdir -p "$first" "$second"
# download DEST PACKAGE==VERSION...: binary wheels for the machine's Python 3.12 on x86-64 Linux, no dependencies
download() {
  local dest=$1
  shift
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "$@"
}
download "$second" lerobot==0.6.1 diffusers==0.39.0 datasets==4.8.5 dill==0.4.1 draccus==0.11.6 einops==0.8.2 \
  farama-notifications==0.0.6 fsspec==2026.2.0 google-crc32c==1.9.0 gymnasium==1.4.0 imageio==2.38.2 isal==1.9.1 \
  jsonlines==4.0.0 lazy-importer==0.1.0 mergedeep==1.3.4 multiprocess==0.70.19 mypy-extensions==1.2.0 \
  packaging==25.0 python-dateutil==2.9.0.post0 pytz==2026.6 termcolor==3.3.0 toml==0.10.2 typing-inspect==0.9.0 \
  tzdata==2026.6 xxhash==4.1.0 cloudpickle==3.1.3
download "$first" av==15.1.0 torchao==0.18.0
rm -f "$second"/lerobot_policy_defi-*.whl
"$python" -m pip wheel -q --no-deps --no-build-isolation "$repo" -w "$second"
if [ -n "$single" ]; then
  mkdir -p "$single"
  rm -f "$single"/*.whl
  cp "$first"/*.whl "$single"/
  for wheel in "$second"/*.whl; do  # (a second run finds the simulator's wheels in $second already)
    [ -e "$vendor/wheels/$(basename "$wheel")" ] || cp "$wheel" "$single"/
  done
fi
cp "$vendor"/wheels/*.whl "$vendor"/calvin_env.bundle "$second"/
du -sh "$first" "$second" ${single:+"$single"}
