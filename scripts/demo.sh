#!/usr/bin/env bash
# The main job end to end on the shipped fixtures, on a fresh machine:
# installs what is missing, builds airlock, starts a source and a target
# registry on 127.0.0.1, seeds the signed multi-arch fixture images, then
# export -> verify -> inspect -> import -> read back, and prints the bundle
# digest and a summary.   Usage: scripts/demo.sh [SCALE]   (1 = ~3 MiB of blobs)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
source scripts/registries.sh
SCALE=${1:-1}
WORK=$(mktemp -d -t airlock-demo.XXXXXX)
trap 'stop_registries; rm -rf "$WORK"' EXIT

cargo build --release --quiet --features fixtures
AIRLOCK=$PWD/target/release/airlock

start_registry src
start_registry dst
echo "== registries: source $REG_SRC, target $REG_DST"

echo "== seeding signed fixture images into $REG_SRC/vendor"
"$AIRLOCK" fixtures --to "$REG_SRC/vendor" --scale "$SCALE"

cat >"$WORK/images.yaml" <<YAML
images:
  - ref: $REG_SRC/vendor/operator
    tags: ["1.0.0", "1.1.0"]
    target: dynatrace-operator
  - ref: $REG_SRC/vendor/agent:2.0.0
    platforms: [linux/amd64, linux/s390x]
  - ref: $REG_SRC/vendor/gateway
    tagPattern: "3\\\\..*"
YAML
echo "== selection file"; cat "$WORK/images.yaml"

# The fixtures are signed with the committed test key; the site trusts its public half.
KEY=fixtures/keys/cosign-test
echo "== export (every image must be signed by $KEY.pub; the bundle is signed too)"
"$AIRLOCK" export -f "$WORK/images.yaml" -o "$WORK/mirror.tar.zst" --key "$KEY.pub" --sign-key "$KEY.key"
(cd "$WORK" && sha256sum -c mirror.tar.zst.sha256)

# The site's policy: the agent must be signed keyless by the vendor's release
# workflow and carry its SLSA provenance (the fixtures' test sigstore stands in
# for Fulcio and Rekor); everything else must be signed with the vendor key.
cat >"$WORK/site-policy.yaml" <<YAML
trustedRoot: $PWD/fixtures/keys/test-trusted-root.json
rules:
  - repositories: ["**/agent"]
    keyless:
      - identity: https://github.com/example-vendor/agent/.github/workflows/release.yml@refs/tags/v2.0.0
        issuer: https://token.actions.githubusercontent.com
    attestations: ["https://slsa.dev/provenance/v1"]
  - repositories: ["**"]
    keys: [$PWD/$KEY.pub]
YAML
echo "== site policy"; cat "$WORK/site-policy.yaml"

echo "== verify (offline: digests, graph, signatures against the site policy, bundle signature)"
"$AIRLOCK" verify "$WORK/mirror.tar.zst" --policy "$WORK/site-policy.yaml" --bundle-key "$KEY.pub"

echo "== inspect"
"$AIRLOCK" inspect "$WORK/mirror.tar.zst"

echo "== import into $REG_DST/mirror/{name}"
"$AIRLOCK" import "$WORK/mirror.tar.zst" --to "$REG_DST/mirror/{name}" --policy "$WORK/site-policy.yaml" --bundle-key "$KEY.pub"

echo "== import again from a pipe (resumable: nothing left to send)"
"$AIRLOCK" import - --to "$REG_DST/mirror/{name}" <"$WORK/mirror.tar.zst"

echo "== the bundle as an OCI layout directory (for a scanner), then that layout copied to the registry"
"$AIRLOCK" import "$WORK/mirror.tar.zst" --to "oci:$WORK/layout" --policy "$WORK/site-policy.yaml" -q
"$AIRLOCK" copy "oci:$WORK/layout" "docker://$REG_DST/scanned/{repo}" --policy "$WORK/site-policy.yaml"

echo "== read back with skopeo"
for ref in dynatrace-operator:1.1.0 scanned/vendor/operator:1.1.0 mirror/agent:2.0.0 scanned/vendor/agent:2.0.0 mirror/gateway:3.0.0; do
  printf '%-28s sha256:%s\n' "$ref" "$(skopeo inspect --raw --tls-verify=false "docker://$REG_DST/$ref" | sha256sum | cut -d' ' -f1)"
done
echo "== bundle digest: $("$AIRLOCK" inspect --json "$WORK/mirror.tar.zst" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bundleDigest"])')"
echo "demo ok"
