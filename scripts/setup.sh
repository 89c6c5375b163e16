#!/usr/bin/env bash
# Installs what airlock's tests and demo need, when missing (Debian/Ubuntu):
# the CNCF distribution registry, skopeo, podman, htpasswd, zstd, openssl, curl.
# Sourced by test.sh, demo.sh and bench.sh; safe to run twice.
set -euo pipefail

need=()
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
command -v podman >/dev/null || need+=(podman)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
[[ -x /usr/bin/time ]] || need+=(time)
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The distribution package starts a system registry on :5000; tests use their own.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry 2>/dev/null || true
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
