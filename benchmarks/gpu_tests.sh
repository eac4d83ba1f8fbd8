#!/bin/bash
# Runs the GPU-marked tests (pytest -m gpu) on a lent GPU machine where this package was installed from its wheel
# by gpu_machine_setup.sh:  bash benchmarks/gpu_tests.sh [pytest arguments, e.g. tests/test_gfdm_fp8.py]
# pytest puts the repository root first on sys.path, and the repository's lerobot_defi/ lacks the conversions
# package that the wheel maps into it (pyproject.toml), so the tests run from a copy of tests/, configs/ and
# benchmarks/ (the benchmark tests import its scripts) outside the repository, against the installed package.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
copy=$(mktemp -d)
cp -r "$repo/tests" "$repo/configs" "$repo/benchmarks" "$repo/pyproject.toml" "$copy"/
cd "$copy"
python3 -m pytest -q -p no:cacheprovider -m gpu "${@:-tests}"
