#!/usr/bin/env bash
# Helpers to run throw-away distribution registries on 127.0.0.1 (sourced).
#   start_registry NAME   -> sets REG_<NAME>=127.0.0.1:PORT, data under $REG_ROOT/NAME
#   stop_registries       -> stops every registry started here
REG_ROOT=${REG_ROOT:-$(mktemp -d -t airlock-registries.XXXXXX)}
REG_PIDS=()

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start_registry() { # NAME
  local name=$1 port dir
  port=$(free_port)
  dir=$REG_ROOT/$name
  mkdir -p "$dir/data"
  cat >"$dir/config.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $dir/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port, secret: airlock-$name}
YML
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  REG_PIDS+=($!)
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$port/v2/" >/dev/null || { cat "$dir/log" >&2; echo "registry $name did not start" >&2; return 1; }
  printf -v "REG_${name^^}" '%s' "127.0.0.1:$port"
}

stop_registries() {
  for p in "${REG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$REG_ROOT"
}
