#!/bin/bash
# Runs a long benchmark on a lent GPU machine across several calls: one call's command may run at most 10 minutes,
# but a process started under setsid keeps running while the machine stays warm (the next call must follow within
# its idle release, ~30 s). Anything a later call does not carry again is removed from the repository copy there,
# so give the job inputs outside the repository (e.g. cp -r .data/ds4 /tmp/) and outputs under outputs/ (kept).
#   bash benchmarks/gpu_background.sh start NAME COMMAND...   start COMMAND once (log: outputs/logs/NAME.log)
#   bash benchmarks/gpu_background.sh wait NAME SECONDS [PATH...]
#       wait until NAME has finished or SECONDS have passed, print the log's last lines and the machine's load,
#       copy each PATH that exists (files or folders) into $OUT; exit 0 if NAME finished with 0, 3 if it is still
#       running, else its exit code
set -uo pipefail
logs=outputs/logs
mkdir -p "$logs"
action=${1:?start or wait}
name=${2:?a job name}
shift 2
case "$action" in
  start)
    if [ -f "$logs/$name.started" ]; then
      echo "$name was started at $(cat "$logs/$name.started"); not starting it again"
      exit 0
    fi
    date -u +%FT%TZ > "$logs/$name.started"
    printf -v command '%q ' "$@"
    setsid nohup bash -c "$command > $logs/$name.log 2>&1; echo \$? > $logs/$name.exit" \
      > /dev/null 2>&1 < /dev/null &
    echo "started $name: $command"
    ;;
  wait)
    seconds=${1:?seconds to wait}
    shift
    end=$((SECONDS + seconds))
    while [ $SECONDS -lt "$end" ] && [ ! -f "$logs/$name.exit" ]; do sleep 5; done
    date -u
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null
    uptime
    tail -c 4000 "$logs/$name.log" 2>/dev/null | tr '\r' '\n' | grep -v '^\s*$' | tail -20
    for path in "$@"; do
      if [ -e "$path" ] && [ -n "${OUT:-}" ]; then cp -r "$path" "$OUT"/; fi
    done
    if [ ! -f "$logs/$name.exit" ]; then
      echo "$name: still running"
      exit 3
    fi
    code=$(cat "$logs/$name.exit")
    echo "$name: finished with exit code $code"
    exit "$code"
    ;;
  *)
    echo "unknown action $action (start or wait)" >&2
    exit 2
    ;;
esac
