# Source this on a lent GPU machine (no package registry there) before running the benchmarks:
#   source benchmarks/gpu_machine_setup.sh <folder of wheels> [<folder of wheels> ...]
# Installs every carried *.whl (no dependency resolution: the machine's own torch, numpy, scipy, opencv, ... are
# used) into /tmp/site, clones a carried calvin_env.bundle (shared/vendor) into /tmp/calvin_env, and puts both on
# PYTHONPATH. Installs persist while the machine stays warm, so the wheels can travel in several calls (a call
# carries at most 64 MiB): each call sources this with the folders it carries. benchmarks/gpu_wheels.sh stages the
# folders (this project's own wheel included).
for _dir in "$@"; do
  if ls "$_dir"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$_dir"/*.whl || return 1
  fi
  if [ -f "$_dir/calvin_env.bundle" ] && [ ! -d /tmp/calvin_env/.git ]; then
    git clone -q "$_dir/calvin_env.bundle" /tmp/calvin_env 2>/dev/null || return 1
  fi
done
export PYTHONPATH=/tmp/site:/tmp/calvin_env${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/site/bin:$PATH
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
