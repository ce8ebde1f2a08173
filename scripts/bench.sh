#!/usr/bin/env bash
# Speed benchmarks (release binaries in $1). Results go to stdout and runs/bench/.
set -euo pipefail
bin=${1:-target/release}
out=runs/bench
mkdir -p "$out"
train=${TRAIN_JSON:-data/squad/train-v1.1.json.gz}
[ -e "$train" ] || make --no-print-directory data/squad/train-v1.1.json.gz

# Best wall time of N runs of a command, in seconds.
best_of() {
  local n=$1; shift
  local best=
  for _ in $(seq "$n"); do
    local t0 t1
    t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
    best=$(echo "$t0 $t1 $best" | awk '{ t = $2 - $1; if ($3 == "" || t < $3) print t; else print $3 }')
  done
  echo "$best"
}

t=$(best_of 3 "$bin/squad-ingest" --input "$train" --output "$out/train-full.examples.parquet")
rows=$("$bin/squad-ingest" stats "$out/train-full.examples.parquet" --json | sed -n 's/^  "questions": \([0-9]*\),/\1/p')
line="squad-ingest full train ($train, $rows questions): best of 3 = ${t}s (target < 5 s)"
echo "$line" | tee "$out/ingest.txt"

# Features: the full train set (87,599 questions) with the pipeline's tokenizer.
model=${MODEL_DIR:-data/models/all-MiniLM-L6-v2}
t=$(best_of 2 "$bin/qa-features" --examples "$out/train-full.examples.parquet" --tokenizer "$model" --split train --output "$out/train-full.features.parquet")
n=$("$bin/qa-features" --examples "$out/train-full.examples.parquet" --tokenizer "$model" --split train --output "$out/train-full.features.parquet" 2>&1 | sed -n 's/.*-> \([0-9]*\) train features.*/\1/p')
line="qa-features full train ($n features): best of 2 = ${t}s (target <= 15 s)"
echo "$line" | tee "$out/features.txt"

# The oracle on the same input, when BENCH_ORACLE=1 and its venv exists (slow: ~2 min, ~10 GB).
py=${REF_PYTHON:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
if [ "${BENCH_ORACLE:-0}" = 1 ] && [ -x "$py" ]; then
  t0=$(date +%s.%N)
  MINILM_DIR=$PWD/$model "$py" "${REF_DIR:-../shared/ref}/ref_features.py" --input "$train" --split train --out "$out/train-full.ref.parquet" >/dev/null
  t1=$(date +%s.%N)
  echo "ref_features.py full train: $(echo "$t0 $t1" | awk '{print $2 - $1}')s; speed-up $(echo "$t0 $t1 $t" | awk '{printf "%.1fx", ($2 - $1) / $3}')" | tee -a "$out/features.txt"
fi
