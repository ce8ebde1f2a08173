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
# Built with the binaries' feature set (a `-p qa-model` build would recompile polars and candle).
cargo build -q --release --locked --bins --examples
ours=$(RAYON_NUM_THREADS=2 "$bin/examples/forward_bench" "$model" 8 384 6)
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

# --- training (qa-train): the first 96 training questions, one epoch, batch 8, 2 threads -----
# Fixed length 384 (run_qa.py's padding) and dynamic padding (ours by default); then peak RSS
# for MiniLM and for a randomly initialised bert-base-shaped model (12 layers, hidden 768).
export RAYON_NUM_THREADS=2
"$bin/squad-ingest" --input "$train" --output "$out/train96.examples.parquet" --limit 96 2>/dev/null
"$bin/qa-features" --examples "$out/train96.examples.parquet" --tokenizer "$model" --split train --output "$out/train96.features.parquet" 2>/dev/null
summary_field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
for mode in fixed dynamic; do
  flag=; [ $mode = fixed ] && flag=--pad-to-max-length
  s=$("$bin/qa-train" --features "$out/train96.features.parquet" --model "$model" --output "$out/train-$mode" \
      --overwrite --threads 2 --quiet --save-steps 0 $flag 2>/dev/null)
  echo "qa-train MiniLM, $mode padding: $(echo "$s" | summary_field train_features_per_second) features/s, peak RSS $(echo "$s" | summary_field peak_rss_mib) MiB" | tee -a "$out/train.txt"
done
mkdir -p "$out/bert-base-shaped"
cat > "$out/bert-base-shaped/config.json" <<'JSON'
{"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
 "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
 "type_vocab_size": 2, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
JSON
s=$("$bin/qa-train" --features "$out/train96.features.parquet" --model "$out/bert-base-shaped" --random-init \
    --output "$out/train-bert-base" --overwrite --threads 2 --quiet --save-steps 0 --max-steps 2 --pad-to-max-length 2>/dev/null)
echo "qa-train bert-base shape (random init), 384 padding, 2 steps: $(echo "$s" | summary_field train_features_per_second) features/s, peak RSS $(echo "$s" | summary_field peak_rss_mib) MiB" | tee -a "$out/train.txt"
if [ "${BENCH_ORACLE:-0}" = 1 ] && [ -x "$py" ]; then
  for mode in fixed dynamic; do
    flag=; [ $mode = dynamic ] && flag=--dynamic-padding
    s=$(MINILM_DIR=$PWD/$model "$py" "${REF_DIR:-../shared/ref}/ref_train.py" --train-file "$train" \
        --dev-file "${DEV_JSON:-data/squad/dev-v1.1.json.gz}" --train-limit 96 --eval-limit 8 --threads 2 \
        --out "$out/ref-train-$mode" $flag 2>/dev/null | tail -1)
    echo "ref_train.py MiniLM, $mode padding: $(echo "$s" | sed -n 's/.*"train_features_per_s": \([0-9.]*\).*/\1/p') features/s" | tee -a "$out/train.txt"
  done
fi

# --- evaluation (qa-eval): full dev-v1.1 (10,570 questions), MiniLM, 2 threads --------------
# Slow here (minutes); BENCH_SKIP_FULL_EVAL=1 skips it.
dev=${DEV_JSON:-data/squad/dev-v1.1.json.gz}
if [ "${BENCH_SKIP_FULL_EVAL:-0}" != 1 ]; then
  [ -e "$dev" ] || make --no-print-directory "$dev"
  "$bin/squad-ingest" --input "$dev" --output "$out/dev-full.examples.parquet" 2>/dev/null
  "$bin/qa-features" --examples "$out/dev-full.examples.parquet" --tokenizer "$model" --split eval --output "$out/dev-full.features.parquet" 2>/dev/null
  t0=$(date +%s.%N)
  "$bin/qa-eval" --model "$model" --features "$out/dev-full.features.parquet" --examples "$out/dev-full.examples.parquet" \
    --output "$out/eval-dev-full" --quiet >/dev/null
  t1=$(date +%s.%N)
  fps=$(sed -n 's/.*"features_per_second": \([0-9.]*\).*/\1/p' "$out/eval-dev-full/metrics.json")
  echo "qa-eval full dev-v1.1: $(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}')s wall, forward $fps features/s" | tee "$out/eval.txt"
  if [ "${BENCH_ORACLE:-0}" = 1 ] && [ -x "$py" ]; then
    # The oracle's evaluation: ref_train.py with no training steps on the same dev set.
    s=$(MINILM_DIR=$PWD/$model "$py" "${REF_DIR:-../shared/ref}/ref_train.py" --train-file "$train" --dev-file "$dev" \
        --train-limit 8 --max-steps 1 --eval-limit 10570 --threads 2 --out "$out/ref-eval-full" ${BENCH_ORACLE_EVAL_FLAGS:-} 2>/dev/null | tail -1)
    echo "ref_train.py eval, full dev: $(echo "$s" | sed -n 's/.*"eval_wall_s": \([0-9.]*\).*/\1/p')s ($(echo "$s" | sed -n 's/.*"eval_features_per_s": \([0-9.]*\).*/\1/p') features/s)" | tee -a "$out/eval.txt"
  fi
fi
