#!/usr/bin/env bash
# airlock vs the skopeo pipeline and vs this machine's limits, same machine,
# same registries, same workload (../shared/bench: a deterministic
# multi-arch signed image set).
#
#   scripts/bench.sh [SCALE] [RUNS]     SCALE 1 ~ 200 MB of blobs, 5 ~ 1 GB
#   scripts/bench.sh both [RUNS]        scales 1 and 5, then the README's
#                                       tables rewritten from both summaries
#                                       (scripts/bench-readme.py)
#
# One run measures, each RUNS times under /usr/bin/time -v (medians):
#   skopeo pipeline: export (skopeo copy to a layout + tar | zstd) and import
#   limits (../shared/bench/limits.sh): registry GET of every blob (curl, 4
#     streams), registry PUT of every blob (4 streams), sha256 on both cores,
#     tar | zstd -1
#   airlock: export, verify (and verify --file-hash), import of the file,
#     import from a pipe
#     (cat | airlock import -), each import into an emptied dst and checked
#     (verify-registry.sh: every tag's digest)
# Results and the summary table: target/bench/sSCALE/summary.md
#   SKIP_BASELINE=1 reuses the skopeo and limit runs already in that directory.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == both ]]; then
  "$0" 1 "${2:-3}"
  "$0" 5 "${2:-3}"
  exec python3 scripts/bench-readme.py README.md target/bench
fi
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

# Runs of an earlier invocation (perhaps with more RUNS) must not count.
if [[ ${SKIP_BASELINE:-0} == 1 && -f $RES/export-1.time && -f $RES/limit-http-put-p4-1.time ]]; then
  echo "== skopeo baseline and limits: reusing $RES (SKIP_BASELINE=1)"
  rm -f "$RES"/airlock-*
else
  echo "== skopeo baseline and machine limits (scale $SCALE, $RUNS runs)"
  rm -rf "$RES" && mkdir -p "$RES"
  RESULTS=$RES "$BENCH/run-baseline.sh" -s "$SCALE" -n "$RUNS" -m export,import,limits >/dev/null
fi

echo "== airlock"
trap '"$BENCH/registry.sh" stop src >/dev/null; "$BENCH/registry.sh" stop dst >/dev/null' EXIT
"$BENCH/registry.sh" reset src 5001 >/dev/null
"$BENCH/seed-registry.sh" 5001 "$WL" >/dev/null
mapfile -t REFS < <(grep -v -e '^#' -e '^$' "$WL/images.txt" | sed 's|^|127.0.0.1:5001/|')
RES=$RES source "$BENCH/timing.sh"
B=$WORK/airlock.tar.zst
for i in $(seq 1 "$RUNS"); do
  rm -rf "$B" "$B.sha256" "$B.partial"
  RES=$RES timed airlock-export "$i" "$AIRLOCK" export -q -o "$B" "${REFS[@]}"
done
stat -c %s "$B" >"$RES/airlock-export.bundle-bytes"
# The disk's limit for a bundle of this size, written as airlock writes it:
# durable (fdatasync) before it is renamed into place; skopeo's pipeline
# does not sync.
for i in $(seq 1 "$RUNS"); do
  rm -f "$WORK/disk.tmp"
  RES=$RES timed limit-disk-write "$i" dd if=/dev/zero of="$WORK/disk.tmp" bs=1M \
    count=$(( $(stat -c %s "$B") >> 20 )) conv=fdatasync status=none
  rm -f "$WORK/disk.tmp"
done
for i in $(seq 1 "$RUNS"); do
  RES=$RES timed airlock-verify "$i" "$AIRLOCK" verify -q "$B" >/dev/null
  RES=$RES timed airlock-verify-file-hash "$i" "$AIRLOCK" verify -q --file-hash "$B" >/dev/null
done
: >"$RES/airlock-verify.log"
for i in $(seq 1 "$RUNS"); do
  "$BENCH/registry.sh" reset dst 5002 >/dev/null
  RES=$RES timed airlock-import "$i" "$AIRLOCK" import -q "$B" --to 127.0.0.1:5002 >/dev/null
  "$BENCH/verify-registry.sh" 5002 "$WL" >>"$RES/airlock-verify.log"
done
for i in $(seq 1 "$RUNS"); do
  "$BENCH/registry.sh" reset dst 5002 >/dev/null
  RES=$RES timed airlock-import-pipe "$i" bash -c "cat '$B' | '$AIRLOCK' import -q - --to 127.0.0.1:5002 >/dev/null"
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
import re, statistics, sys, glob
res = sys.argv[1]
def runs(name):
    out = []
    for f in glob.glob(f"{res}/{name}-[0-9]*.time"):
        if not re.fullmatch(rf"{re.escape(name)}-\d+\.time", f.rsplit("/", 1)[1]):
            continue
        t = open(f).read()
        wall = 0.0
        for p in re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", t).group(1).split(":"):
            wall = wall * 60 + float(p)
        cpu = float(re.search(r"User time \(seconds\): (\S+)", t).group(1)) + float(re.search(r"System time \(seconds\): (\S+)", t).group(1))
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
        out.append((wall, cpu, rss))
    return out
def med(name, i):
    r = runs(name)
    return statistics.median(x[i] for x in r) if r else None
b = int(open(f"{res}/bytes").read())
rows = [
    ("export", "airlock-export", [("skopeo pipeline", "export", "speed-up"),
                                  ("registry GET, 4 streams", "limit-http-get-p4", "of limit"),
                                  ("disk write + fdatasync", "limit-disk-write", "of limit"),
                                  ("tar \\| zstd -T0 -1", "limit-tar-zstd1", "of limit")]),
    ("import (file)", "airlock-import", [("skopeo pipeline", "import", "speed-up"),
                                         ("registry PUT, 4 streams", "limit-http-put-p4", "of limit")]),
    ("import (pipe)", "airlock-import-pipe", [("skopeo pipeline", "import", "speed-up"),
                                              ("registry PUT, 4 streams", "limit-http-put-p4", "of limit")]),
    ("verify", "airlock-verify", [("sha256 on 2 cores (openssl)", "limit-sha256-ossl-x2", "of limit")]),
    ("verify --file-hash", "airlock-verify-file-hash", [("sha256 on 2 cores (openssl)", "limit-sha256-ossl-x2", "of limit")]),
]
print("| work | airlock s | airlock CPU s | airlock MB/s | peak RSS MiB | reference | reference s | ratio |")
print("|---|---|---|---|---|---|---|---|")
for work, name, refs in rows:
    a = med(name, 0)
    if a is None:
        continue
    first = True
    for label, ref, kind in refs:
        r = med(ref, 0)
        if r is None:
            continue
        ratio = f"{r / a:.2f}x" if kind == "speed-up" else f"{100 * r / a:.0f} %"
        cells = [work, f"{a:.2f}", f"{med(name, 1):.2f}", f"{b / a / 1e6:.0f}", f"{med(name, 2):.0f}"] if first else ["", "", "", "", ""]
        print("| " + " | ".join(cells + [label, f"{r:.2f}", ratio]) + " |")
        first = False
PY
  for f in "$RES"/*.bundle-bytes; do echo "$(basename "$f" .bundle-bytes) bundle: $(cat "$f") bytes"; done
} | tee "$RES/summary.md"
