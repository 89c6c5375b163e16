#!/usr/bin/env bash
# Pulling from `airlock serve` vs from the distribution registry holding the
# same images: the bench workload (../shared/bench), every tag (images and
# their cosign tags) pulled by skopeo (`copy --all --preserve-digests` into an
# OCI layout directory, so the client side is the same local disk), medians
# of RUNS, interleaved. The served bundle is the airlock export of the same
# registry.
#
#   scripts/bench-serve.sh [SCALE] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SCALE=${1:-1}
RUNS=${2:-3}
BENCH=${BENCH_DIR:-$(cd .. && pwd)/shared/bench}
export BENCH_ROOT=${BENCH_ROOT:-/tmp/airlock-bench}
export REGISTRY_STATE=$BENCH_ROOT/registries
WL=$BENCH_ROOT/workload-s$SCALE
WORK=$BENCH_ROOT/serve
RES=$PWD/target/bench/serve-s$SCALE
mkdir -p "$WORK" "$RES"
[[ -f $WL/images.txt ]] || python3 "$BENCH/make-workload.py" "$WL" --scale "$SCALE" --force >/dev/null
cargo build --release --quiet
AIRLOCK=$PWD/target/release/airlock
SERVE_PID=
cleanup() {
  [[ -n $SERVE_PID ]] && kill "$SERVE_PID" 2>/dev/null || true
  "$BENCH/registry.sh" stop src >/dev/null
}
trap cleanup EXIT
"$BENCH/registry.sh" reset src 5001 >/dev/null
"$BENCH/seed-registry.sh" 5001 "$WL" >/dev/null
mapfile -t REFS < <(grep -v -e '^#' -e '^$' "$WL/images.txt" | sed 's|^|127.0.0.1:5001/|')
rm -f "$WORK/b.tar.zst" "$WORK/b.tar.zst.sha256"
"$AIRLOCK" export -q -o "$WORK/b.tar.zst" "${REFS[@]}" >/dev/null
"$AIRLOCK" serve "$WORK/b.tar.zst" --listen 127.0.0.1:5003 2>"$WORK/serve.log" &
SERVE_PID=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:5003/v2/ >/dev/null && break; sleep 0.1; done
mapfile -t TAGS < <(grep -v '^#' "$WL/images.tsv" | awk -F'\t' '{print $1":"$2}')

pull_all() { # PORT
  rm -rf "$WORK/pulled"
  mkdir -p "$WORK/pulled"
  local s=$EPOCHREALTIME
  for t in "${TAGS[@]}"; do
    skopeo copy -q --all --preserve-digests --src-tls-verify=false \
      "docker://127.0.0.1:$1/$t" "oci:$WORK/pulled/layout:$t" >/dev/null
  done
  awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'
}
reg=() srv=()
for i in $(seq 1 "$RUNS"); do
  reg+=("$(pull_all 5001)")
  srv+=("$(pull_all 5003)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
r=$(median "${reg[@]}") a=$(median "${srv[@]}")
{
  echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1); workload scale $SCALE, ${#TAGS[@]} tags pulled with skopeo into an OCI layout; medians of $RUNS runs"
  echo
  echo "| pulled from | seconds | vs registry |"
  echo "|---|---|---|"
  echo "| distribution registry $(docker-registry --version | awk '{print $3}') | $r | 1.00x |"
  echo "| airlock serve (bundle $(stat -c %s "$WORK/b.tar.zst") bytes, verify=full) | $a | $(awk -v r="$r" -v a="$a" 'BEGIN { printf "%.2f", r / a }')x |"
} | tee "$RES/summary.md"
