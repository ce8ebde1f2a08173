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

# qa-infer: cold start (process start, load MiniLM, answer one question) and warm latency.
context="Super Bowl 50 was an American football game to determine the champion of the National Football League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California."
cold=$(best_of 3 "$bin/qa-infer" --model "$model" --question "Which NFL team won Super Bowl 50?" --context "$context")
for i in $(seq 21); do
  printf '{"id": %d, "question": "Which NFL team won Super Bowl 50?", "context": "%s"}\n' "$i" "$context"
done > "$out/infer.jsonl"
batch=$(best_of 2 "$bin/qa-infer" --model "$model" --jsonl "$out/infer.jsonl")
warm=$(echo "$cold $batch" | awk '{printf "%.1f", ($2 - $1) / 20 * 1000}')
echo "qa-infer: cold ${cold}s (start + load + 1 answer); warm ${warm} ms/question (21-line JSONL minus cold)" | tee "$out/infer.txt"

# Eval-mode forward throughput at 8 x 384, ours vs torch (2 threads each).
ours=$(RAYON_NUM_THREADS=2 cargo run -q --release --locked -p qa-model --example forward_bench -- "$model" 8 384 6)
echo "candle forward: $ours" | tee -a "$out/infer.txt"
if [ -x "$py" ]; then
  torch=$(HF_HUB_OFFLINE=1 "$py" - "$model" 2>/dev/null <<'PY'
import json, sys, time, torch
from transformers import BertForQuestionAnswering
torch.set_num_threads(2)
m = BertForQuestionAnswering.from_pretrained(sys.argv[1]).eval()
b, n, batches = 8, 384, 6
ids = torch.tensor([[1000 + (i * 7919 % 20000) for i in range(r * n, (r + 1) * n)] for r in range(b)])
tt = (torch.arange(n) > 20).long().expand(b, n)
am = torch.ones(b, n, dtype=torch.long)
with torch.no_grad():
    m(input_ids=ids, attention_mask=am, token_type_ids=tt)
    t = time.time()
    for _ in range(batches):
        m(input_ids=ids, attention_mask=am, token_type_ids=tt)
    s = time.time() - t
print(json.dumps({"batch": b, "len": n, "batches": batches, "seconds": round(s, 3), "features_per_s": round(b * batches / s, 2)}))
PY
  )
  echo "torch forward:  $torch" | tee -a "$out/infer.txt"
fi
