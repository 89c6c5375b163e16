#!/usr/bin/env bash
# airlock vs the skopeo pipeline on the same machine, same registries, same
# workload (../shared/bench: a deterministic multi-arch signed image set).
#
#   scripts/bench.sh [SCALE] [RUNS]     SCALE 1 ~ 200 MB of blobs, 5 ~ 1 GB
#
# Both tools: export 17 tags (8 indexes + signatures) from src (127.0.0.1:5001)
# into one .tar.zst, then import it into an emptied dst (127.0.0.1:5002),
# every run under /usr/bin/time -v, medians of RUNS; the destination is
# checked after every import (verify-registry.sh: every tag's digest).
# Results and a summary table: target/bench/sSCALE/summary.md
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SCALE=${1:-1}
RUNS=${2:-3}
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
[[ -f $BENCH/run-baseline.sh ]] || { echo "bench scripts not found in $BENCH (set BENCH_DIR)" >&2; exit 1; }
export BENCH_ROOT=${BENCH_ROOT:-/tmp/airlock-bench}
export REGISTRY_STATE=$BENCH_ROOT/registries
RES=$PWD/target/bench/s$SCALE
WL=$BENCH_ROOT/workload-s$SCALE
WORK=$BENCH_ROOT/airlock-work
mkdir -p "$RES" "$WORK"

cargo build --release --quiet
AIRLOCK=$PWD/target/release/airlock

if [[ ${SKIP_BASELINE:-0} == 1 && -f $RES/export-1.time ]]; then
  echo "== skopeo baseline: reusing $RES (SKIP_BASELINE=1)"
else
  echo "== skopeo baseline (scale $SCALE, $RUNS runs)"
  RESULTS=$RES "$BENCH/run-baseline.sh" -s "$SCALE" -n "$RUNS" -m export,import >/dev/null
fi

echo "== airlock"
trap '"$BENCH/registry.sh" stop src >/dev/null; "$BENCH/registry.sh" stop dst >/dev/null' EXIT
"$BENCH/registry.sh" reset src 5001 >/dev/null
"$BENCH/seed-registry.sh" 5001 "$WL" >/dev/null
mapfile -t REFS < <(grep -v -e '^#' -e '^$' "$WL/images.txt" | sed 's|^|127.0.0.1:5001/|')
RES=$RES source "$BENCH/timing.sh"
for i in $(seq 1 "$RUNS"); do
  rm -f "$WORK/airlock.tar.zst" "$WORK/airlock.tar.zst.sha256"
  RES=$RES timed airlock-export "$i" "$AIRLOCK" export -q -o "$WORK/airlock.tar.zst" "${REFS[@]}"
done
stat -c %s "$WORK/airlock.tar.zst" >"$RES/airlock-export.bundle-bytes"
"$AIRLOCK" verify -q "$WORK/airlock.tar.zst" >/dev/null
for i in $(seq 1 "$RUNS"); do
  "$BENCH/registry.sh" reset dst 5002 >/dev/null
  RES=$RES timed airlock-import "$i" "$AIRLOCK" import -q "$WORK/airlock.tar.zst" --to 127.0.0.1:5002 >/dev/null
  "$BENCH/verify-registry.sh" 5002 "$WL" >>"$RES/airlock-verify.log"
done

{
  echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), kernel $(uname -r)"
  echo "tools: airlock $("$AIRLOCK" --version | awk '{print $2}'), $(skopeo --version), distribution $(docker-registry --version | awk '{print $3}')"
  echo "workload: scale $SCALE, $(cat "$RES/bytes") bytes of unique blobs, 17 tags; medians of $RUNS runs"
  echo
  python3 "$BENCH/summarize.py" "$RES"
  echo
  python3 - "$RES" <<'PY'
import re, statistics, sys, glob, os
res = sys.argv[1]
def med(name, key):
    vals = []
    for f in glob.glob(f"{res}/{name}-*.time"):
        t = open(f).read()
        if key == "wall":
            m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t)
            s = 0.0
            for p in m.group(1).split(":"):
                s = s * 60 + float(p)
            vals.append(s)
        else:
            vals.append(int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024)
    return statistics.median(vals)
b = int(open(f"{res}/bytes").read())
print("| step | skopeo pipeline s | airlock s | speed-up | skopeo MB/s | airlock MB/s | skopeo peak RSS MiB | airlock peak RSS MiB |")
print("|---|---|---|---|---|---|---|---|")
for step in ("export", "import"):
    s, a = med(step, "wall"), med("airlock-" + step, "wall")
    print(f"| {step} | {s:.2f} | {a:.2f} | {s/a:.2f}x | {b/s/1e6:.0f} | {b/a/1e6:.0f} | {med(step,'rss'):.0f} | {med('airlock-'+step,'rss'):.0f} |")
PY
  for f in "$RES"/*.bundle-bytes; do echo "$(basename "$f" .bundle-bytes) bundle: $(cat "$f") bytes"; done
} | tee "$RES/summary.md"
