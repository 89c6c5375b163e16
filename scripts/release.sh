#!/usr/bin/env bash
# A release binary that runs on the old Linux of isolated sites: linked
# against an old glibc baseline with `cargo zigbuild` (zig from PyPI), then
# checked: no dynamic symbol newer than the baseline (objdump -T), and it
# runs. Output: dist/airlock-VERSION-x86_64-linux-glibcBASELINE and its .sha256.
#
#   scripts/release.sh [GLIBC_BASELINE]     default 2.28 (RHEL 8); 2.17 for RHEL 7
set -euo pipefail
cd "$(dirname "$0")/.."
BASELINE=${1:-2.28}
TARGET=x86_64-unknown-linux-gnu
VENV=$PWD/target/release-tools
if [[ ! -x $VENV/bin/python-zig ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'ziglang==0.13.0'
  ln -sf "$VENV/bin/python-zig" "$VENV/bin/python-zig" 2>/dev/null || true
fi
export PATH=$VENV/bin:$HOME/.cargo/bin:$PATH
command -v cargo-zigbuild >/dev/null || cargo install --locked --quiet cargo-zigbuild
cargo zigbuild --release --locked --target "$TARGET.$BASELINE"
BIN=target/$TARGET/release/airlock

# Every versioned glibc symbol the binary needs must exist in the baseline.
newest=$(objdump -T "$BIN" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
if [[ $(printf '%s\n%s\n' "$newest" "$BASELINE" | sort -V | tail -1) != "$BASELINE" ]]; then
  echo "release: $BIN needs glibc $newest, newer than the baseline $BASELINE" >&2
  objdump -T "$BIN" | grep "GLIBC_$newest" >&2
  exit 1
fi
"$BIN" --version
VERSION=$("$BIN" --version | awk '{print $2}')
mkdir -p dist
OUT=dist/airlock-$VERSION-x86_64-linux-glibc$BASELINE
cp "$BIN" "$OUT"
(cd dist && sha256sum "$(basename "$OUT")" > "$(basename "$OUT").sha256")
echo "release: $OUT ($(stat -c %s "$OUT") bytes, newest glibc symbol $newest <= $BASELINE)"
cat "$OUT.sha256"
