#!/usr/bin/env bash
# Provides one SQuAD file at OUT (default data/squad/NAME.json.gz), NAME one of
# train-v1.1, dev-v1.1, train-v2.0, dev-v2.0.
#
#  1. From a local mirror directory when SQUAD_MIRROR is set: the file named by
#     SQUAD_FILE_<NAME> (e.g. SQUAD_FILE_TRAIN_V1_1=train-v1.1.reconstructed.json.gz), else the
#     first of NAME.json.gz, NAME.json, NAME.reconstructed.json.gz, NAME.reconstructed.json.
#     OUT becomes a symlink to it, so squad-ingest records the mirror file's real name.
#  2. Otherwise from the official SQuAD URL.
# Either way the sha256 of the decompressed JSON must equal the published one, or (mirror
# only) the one listed for that file in the mirror's SHA256SUMS. Nothing is left at OUT on
# failure.
set -euo pipefail

name=${1:?usage: fetch_squad.sh NAME [OUT]}
out=${2:-data/squad/$name.json.gz}
base_url=${SQUAD_BASE_URL:-https://rajpurkar.github.io/SQuAD-explorer/dataset}

case $name in
  train-v1.1) official=3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955 ;;
  dev-v1.1)   official=95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9 ;;
  train-v2.0) official=68dcfbb971bd3e96d5b46c7177b16c1a4e7d4bdef19fb204502738552dede002 ;;
  dev-v2.0)   official=80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8 ;;
  *) echo "fetch_squad: unknown dataset '$name' (expected train-v1.1, dev-v1.1, train-v2.0 or dev-v2.0)" >&2; exit 2 ;;
esac

die() { echo "fetch_squad: $*" >&2; exit 1; }

# sha256 of the decompressed content (gzip or plain).
content_sha() {
  if [ "$(head -c2 "$1" | od -An -tx1 | tr -d ' \n')" = 1f8b ]; then
    gzip -dc "$1" | sha256sum | cut -d' ' -f1
  else
    sha256sum < "$1" | cut -d' ' -f1
  fi
}

mkdir -p "$(dirname "$out")"
rm -f "$out"

if [ -n "${SQUAD_MIRROR:-}" ]; then
  [ -d "$SQUAD_MIRROR" ] || die "SQUAD_MIRROR=$SQUAD_MIRROR is not a directory"
  mirror=$(cd "$SQUAD_MIRROR" && pwd)
  var=SQUAD_FILE_$(echo "$name" | tr 'a-z.-' 'A-Z__')
  if [ -n "${!var:-}" ]; then
    candidates=("${!var}")
  else
    candidates=("$name.json.gz" "$name.json" "$name.reconstructed.json.gz" "$name.reconstructed.json")
  fi
  for c in "${candidates[@]}"; do
    [ -f "$mirror/$c" ] || continue
    sha=$(content_sha "$mirror/$c")
    if [ "$sha" = "$official" ]; then
      note="official file, sha256 verified"
    else
      listed=$(awk -v f="${c%.gz}" '$2 == f || $2 == "*" f { print $1 }' "$mirror/SHA256SUMS" 2>/dev/null || true)
      [ -n "$listed" ] || die "$mirror/$c: sha256 $sha is not the official one and the mirror's SHA256SUMS does not list it"
      [ "$sha" = "$listed" ] || die "$mirror/$c: sha256 $sha does not match the mirror's SHA256SUMS ($listed)"
      note="NOT the official file; sha256 matches the mirror's SHA256SUMS"
    fi
    ln -s "$mirror/$c" "$out"
    echo "fetch_squad: $out -> $mirror/$c ($note)"
    exit 0
  done
  die "no file for $name in $mirror (tried: ${candidates[*]}; set $var=FILE to name it)"
fi

url=$base_url/$name.json
tmp=$(mktemp "$out.XXXXXX.part")
trap 'rm -f "$tmp" "$tmp.gz"' EXIT
if ! curl -fsSL --retry 1 --connect-timeout 15 -o "$tmp" "$url"; then
  die "cannot download $url (offline?). Provide the file instead: set SQUAD_MIRROR=DIR to a directory holding $name.json or $name.json.gz, or put it at $out"
fi
sha=$(sha256sum < "$tmp" | cut -d' ' -f1)
[ "$sha" = "$official" ] || die "$url: sha256 $sha does not match the published $official"
gzip -n -c "$tmp" > "$tmp.gz"
mv "$tmp.gz" "$out"
echo "fetch_squad: $out <- $url (official file, sha256 verified)"
