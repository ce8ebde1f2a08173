#!/usr/bin/env bash
# Regenerates the committed golden feature fixtures with the HF oracle
# (../shared/ref/ref_features.py, transformers + tokenizers in the reference venv; see
# ../shared/ref/README.md). Inputs: the oracle's tiny files (copied into the fixtures) and the
# first questions of the SQuAD mirror files.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${REF_DIR:-../shared/ref}
py=${REF_PYTHON:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
mirror=${SQUAD_MIRROR:-../shared/data/squad}
out=crates/qa-features/tests/fixtures
export MINILM_DIR=${MINILM_DIR:-$PWD/data/models/all-MiniLM-L6-v2}
[ -x "$py" ] || { echo "no oracle python at $py: run bash $ref/setup.sh" >&2; exit 1; }
[ -f "$MINILM_DIR/tokenizer.json" ] || { echo "no model at $MINILM_DIR: run make model" >&2; exit 1; }

mkdir -p "$out"
cp "$ref/testdata/tiny.json" "$ref/testdata/tiny_v2.json" "$out/" && chmod 644 "$out"/tiny*.json
for name in tiny tiny_v2; do
  "$py" "$ref/ref_features.py" --input "$out/$name.json" --split train --out "$out/$name.train.ref.parquet"
  "$py" "$ref/ref_features.py" --input "$out/$name.json" --split validation --out "$out/$name.eval.ref.parquet"
done
"$py" "$ref/ref_features.py" --input "$mirror/dev-v1.1.json.gz" --split validation --limit 200 --out "$out/dev200.eval.ref.parquet"
"$py" "$ref/ref_features.py" --input "$mirror/train-v1.1.reconstructed.json.gz" --split train --limit 300 --out "$out/train300.train.ref.parquet"
ls -la "$out"
