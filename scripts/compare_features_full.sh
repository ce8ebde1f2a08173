#!/usr/bin/env bash
# Full-set feature parity with the HF oracle (needs the reference venv, see
# ../shared/ref/README.md): all of dev-v1.1 (eval features) and the first 10,000 train
# questions (train features). Oracle outputs are cached in runs/parity/.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release}
ref=${REF_DIR:-../shared/ref}
py=${REF_PYTHON:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
export MINILM_DIR=${MINILM_DIR:-$PWD/data/models/all-MiniLM-L6-v2}
out=runs/parity
[ -x "$py" ] || { echo "no oracle python at $py: run bash $ref/setup.sh" >&2; exit 1; }
mkdir -p "$out"

compare() { # name, squad file, limit ('' = all), split (train|eval), oracle split
  local name=$1 input=$2 limit=$3 split=$4 oracle_split=$5
  local lim=(); [ -z "$limit" ] || lim=(--limit "$limit")
  [ -f "$out/$name.ref.parquet" ] ||
    "$py" "$ref/ref_features.py" --input "$input" --split "$oracle_split" "${lim[@]}" --out "$out/$name.ref.parquet" >/dev/null
  "$bin/squad-ingest" --input "$input" "${lim[@]}" --output "$out/$name.examples.parquet" 2>/dev/null
  "$bin/qa-features" --examples "$out/$name.examples.parquet" --tokenizer "$MINILM_DIR" --split "$split" --output "$out/$name.features.parquet"
  "$bin/qa-features" compare --features "$out/$name.features.parquet" --reference "$out/$name.ref.parquet" > "$out/$name.parity.json" \
    && echo "$name: byte-exact with the oracle (see $out/$name.parity.json)" \
    || { echo "$name: DIFFERS from the oracle:"; head -40 "$out/$name.parity.json"; return 1; }
}
compare dev-full data/squad/dev-v1.1.json.gz '' eval validation
compare train-10k data/squad/train-v1.1.json.gz 10000 train train
