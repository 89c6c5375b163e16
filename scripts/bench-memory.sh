#!/usr/bin/env bash
# Peak memory of airlock at a large scale (airlock only; the time figures of
# scripts/bench.sh are the comparison): export from a registry, verify, and
# import into an emptied registry, each once under /usr/bin/time -v.
#
#   scripts/bench-memory.sh [SCALE]      default 20 (~3.9 GB of blobs)
#
# Disk: the workload's blobs are deleted once the source registry is seeded,
# and the source registry once the bundle is written, so at most two copies
# of the data exist at a time (about 8 GB at scale 20).
# Results: target/bench/memory-sSCALE/summary.md
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SCALE=${1:-20}
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
export BENCH_ROOT=${BENCH_ROOT:-/tmp/airlock-bench}
export REGISTRY_STATE=$BENCH_ROOT/registries
RES=$PWD/target/bench/memory-s$SCALE
WL=$BENCH_ROOT/workload-s$SCALE
WORK=$BENCH_ROOT/memory-work
mkdir -p "$RES" "$WORK"
cargo build --release --quiet
AIRLOCK=$PWD/target/release/airlock
trap '"$BENCH/registry.sh" stop src >/dev/null; "$BENCH/registry.sh" purge dst >/dev/null; rm -rf "$WORK"' EXIT

[[ -f $WL/workload.json ]] || python3 "$BENCH/make-workload.py" "$WL" --scale "$SCALE" --force >/dev/null
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["blob_bytes"])' "$WL/workload.json" >"$RES/bytes"
"$BENCH/registry.sh" reset src 5001 >/dev/null
"$BENCH/seed-registry.sh" 5001 "$WL" >/dev/null
rm -rf "$WL/layout"   # the registry holds it now; images.tsv is enough to check
mapfile -t REFS < <(grep -v -e '^#' -e '^$' "$WL/images.txt" | sed 's|^|127.0.0.1:5001/|')
RES=$RES source "$BENCH/timing.sh"
B=$WORK/airlock.tar.zst
rm -rf "$B" "$B.sha256" "$B.partial"
RES=$RES timed airlock-export 1 "$AIRLOCK" export -q -o "$B" "${REFS[@]}"
"$BENCH/registry.sh" purge src >/dev/null
RES=$RES timed airlock-verify 1 "$AIRLOCK" verify -q "$B" >/dev/null
"$BENCH/registry.sh" reset dst 5002 >/dev/null
RES=$RES timed airlock-import 1 "$AIRLOCK" import -q "$B" --to 127.0.0.1:5002 >/dev/null
"$BENCH/verify-registry.sh" 5002 "$WL" >"$RES/verify.log"
"$BENCH/registry.sh" reset dst 5002 >/dev/null
RES=$RES timed airlock-import-pipe 1 bash -c "cat '$B' | '$AIRLOCK' import -q - --to 127.0.0.1:5002 >/dev/null"
"$BENCH/verify-registry.sh" 5002 "$WL" >>"$RES/verify.log"
{
  echo "workload: scale $SCALE, $(cat "$RES/bytes") bytes of unique blobs; bundle $(stat -c %s "$B") bytes"
  echo
  echo "| work | wall s | peak RSS MiB |"
  echo "|---|---|---|"
  for n in export verify import import-pipe; do
    t=$RES/airlock-$n-1.time
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$t")
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$t")
    echo "| $n | $wall | $((rss / 1024)) |"
  done
} | tee "$RES/summary.md"
