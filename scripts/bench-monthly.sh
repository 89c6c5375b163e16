#!/usr/bin/env bash
# The monthly cycle on the bench workload (../shared/bench): month 1 is the
# four images at 1.2.3, month 2 their new version 1.2.4 (same base, licences
# and deps layers, new app layers). Measures a full month-2 bundle against an
# incremental one (--base month 1): size and export time, medians of RUNS; then
# imports month 1 and the incremental month 2 into an emptied registry and
# checks every month-2 tag's digest there.
#
#   scripts/bench-monthly.sh [SCALE] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SCALE=${1:-1}
RUNS=${2:-3}
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
export BENCH_ROOT=${BENCH_ROOT:-/tmp/airlock-bench}
export REGISTRY_STATE=$BENCH_ROOT/registries
WL=$BENCH_ROOT/workload-s$SCALE
WORK=$BENCH_ROOT/monthly
RES=$PWD/target/bench/monthly-s$SCALE
mkdir -p "$WORK" "$RES"
[[ -f $WL/images.txt ]] || python3 "$BENCH/make-workload.py" "$WL" --scale "$SCALE" --force >/dev/null
cargo build --release --quiet
AIRLOCK=$PWD/target/release/airlock
trap '"$BENCH/registry.sh" stop src >/dev/null; "$BENCH/registry.sh" stop dst >/dev/null' EXIT
"$BENCH/registry.sh" reset src 5001 >/dev/null
"$BENCH/seed-registry.sh" 5001 "$WL" >/dev/null
mapfile -t M1 < <(grep -e ':1.2.3$' "$WL/images.txt" | sed 's|^|127.0.0.1:5001/|')
mapfile -t M2 < <(grep -e ':1.2.4$' "$WL/images.txt" | sed 's|^|127.0.0.1:5001/|')

export SOURCE_DATE_EPOCH=1764460800
rm -f "$WORK"/*.tar.zst*
"$AIRLOCK" export -q -o "$WORK/month1.tar.zst" "${M1[@]}" >/dev/null
seconds() { local s=$EPOCHREALTIME; "$@" >/dev/null; awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
full=() inc=()
for i in $(seq 1 "$RUNS"); do
  rm -f "$WORK"/month2*.tar.zst*
  full+=("$(seconds "$AIRLOCK" export -q -o "$WORK/month2-full.tar.zst" "${M2[@]}")")
  inc+=("$(seconds "$AIRLOCK" export -q -o "$WORK/month2-incremental.tar.zst" --base "$WORK/month1.tar.zst" "${M2[@]}")")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

"$BENCH/registry.sh" reset dst 5002 >/dev/null
"$AIRLOCK" import -q "$WORK/month1.tar.zst" --to 127.0.0.1:5002 >/dev/null
imp=$(seconds "$AIRLOCK" import -q "$WORK/month2-incremental.tar.zst" --to 127.0.0.1:5002)
ok=0
while IFS=$'\t' read -r repo tag kind digest _; do
  [[ $tag == 1.2.4 ]] || continue
  got=$(curl -fsS -H 'Accept: application/vnd.oci.image.index.v1+json' -I "http://127.0.0.1:5002/v2/$repo/manifests/$tag" | tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
  [[ $got == "$digest" ]] || { echo "month 2 $repo:$tag is $got, expected $digest" >&2; exit 1; }
  ok=$((ok + 1))
done < <(grep -v '^#' "$WL/images.tsv")

{
  echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1); workload scale $SCALE; medians of $RUNS runs"
  echo
  echo "| month-2 bundle | bytes | export s |"
  echo "|---|---|---|"
  echo "| full (4 images at 1.2.4) | $(stat -c %s "$WORK/month2-full.tar.zst") | $(median "${full[@]}") |"
  echo "| incremental (--base month 1) | $(stat -c %s "$WORK/month2-incremental.tar.zst") | $(median "${inc[@]}") |"
  echo
  echo "month 1 bundle: $(stat -c %s "$WORK/month1.tar.zst") bytes; incremental month-2 import onto month 1: ${imp} s, $ok month-2 tags checked"
} | tee "$RES/summary.md"
