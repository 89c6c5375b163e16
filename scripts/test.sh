#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing,
# checks formatting and lints, then runs unit and integration tests
# (integration tests start real registries on 127.0.0.1 themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets "$@"
