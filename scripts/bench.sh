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
