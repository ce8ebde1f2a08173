#!/usr/bin/env bash
# Tests of scripts/fetch_squad.sh against a throw-away mirror (no network needed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { # name, expected exit code, command...
  local name=$1 want=$2; shift 2
  local got=0; "$@" >"$tmp/log" 2>&1 || got=$?
  if [ "$got" = "$want" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL $name: exit $got, wanted $want"; cat "$tmp/log"; fi
}
mkdir -p "$tmp/mirror"
printf '{"data": []}' > "$tmp/mirror/dev-v1.1.reconstructed.json"
gzip -c "$tmp/mirror/dev-v1.1.reconstructed.json" > "$tmp/mirror/dev-v2.0.reconstructed.json.gz"
( cd "$tmp/mirror" && sha256sum dev-v1.1.reconstructed.json > SHA256SUMS &&
  printf '%s  dev-v2.0.reconstructed.json\n' "$(sha256sum < dev-v1.1.reconstructed.json | cut -d' ' -f1)" >> SHA256SUMS )
printf 'other' > "$tmp/mirror/train-v1.1.json"

check "listed mirror file is linked" 0 env SQUAD_MIRROR="$tmp/mirror" "$here/fetch_squad.sh" dev-v1.1 "$tmp/out/a.json.gz"
check "link points at the mirror file" 0 test "$(readlink "$tmp/out/a.json.gz")" = "$tmp/mirror/dev-v1.1.reconstructed.json"
check "gzip mirror file is checked on its content" 0 env SQUAD_MIRROR="$tmp/mirror" "$here/fetch_squad.sh" dev-v2.0 "$tmp/out/b.json.gz"
check "unlisted, non-official file is refused" 1 env SQUAD_MIRROR="$tmp/mirror" "$here/fetch_squad.sh" train-v1.1 "$tmp/out/c.json.gz"
check "refused file leaves nothing" 1 test -e "$tmp/out/c.json.gz"
check "file name override" 0 env SQUAD_MIRROR="$tmp/mirror" SQUAD_FILE_TRAIN_V1_1=dev-v1.1.reconstructed.json "$here/fetch_squad.sh" train-v1.1 "$tmp/out/d.json.gz"
check "missing file in mirror" 1 env SQUAD_MIRROR="$tmp/mirror" "$here/fetch_squad.sh" train-v2.0 "$tmp/out/e.json.gz"
check "mirror that is not a directory" 1 env SQUAD_MIRROR="$tmp/nope" "$here/fetch_squad.sh" dev-v1.1 "$tmp/out/f.json.gz"
check "unknown dataset name" 2 env SQUAD_MIRROR="$tmp/mirror" "$here/fetch_squad.sh" test-v9 "$tmp/out/g.json.gz"
check "no mirror, unreachable URL: clear error" 1 env -u SQUAD_MIRROR SQUAD_BASE_URL=http://127.0.0.1:9 "$here/fetch_squad.sh" dev-v1.1 "$tmp/out/h.json.gz"
grep -q "SQUAD_MIRROR" "$tmp/log" && pass=$((pass + 1)) || { fail=$((fail + 1)); echo "FAIL offline error does not say how to provide the file"; cat "$tmp/log"; }
echo "fetch_squad: $pass passed, $fail failed"
[ "$fail" = 0 ]
