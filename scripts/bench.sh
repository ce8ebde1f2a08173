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

# The oracle on the same input, when BENCH_FEATURES_ORACLE=1 and its venv exists (slow: ~2 min, ~10 GB).
if [ "${BENCH_FEATURES_ORACLE:-0}" = 1 ] && [ -x "${REF_PYTHON:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}" ]; then
  py=${REF_PYTHON:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
  t0=$(date +%s.%N)
  MINILM_DIR=$PWD/$model "$py" "${REF_DIR:-../shared/ref}/ref_features.py" --input "$train" --split train --out "$out/train-full.ref.parquet" >/dev/null
  t1=$(date +%s.%N)
  echo "ref_features.py full train: $(echo "$t0 $t1" | awk '{print $2 - $1}')s; speed-up $(echo "$t0 $t1 $t" | awk '{printf "%.1fx", ($2 - $1) / $3}')" | tee -a "$out/features.txt"
fi

# GEMM rates on the model's shapes, f32 and bf16, against this CPU's peaks (same run).
echo "CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); AVX-512 flags: $(grep -o -w -E 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')" | tee "$out/gemm.md"
RAYON_NUM_THREADS=2 "$bin/qa-gemm-rates" | tee -a "$out/gemm.md"
echo
# bf16 rows where the CPU has AVX512-BF16 (qa-train --precision bf16 refuses elsewhere).
bf16=; grep -q -w avx512_bf16 /proc/cpuinfo && bf16=1

py=${REF_PYTHON:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
oracle() { [ "${BENCH_ORACLE:-1}" = 1 ] && [ -x "$py" ]; }

# qa-infer: cold start (process start, load MiniLM, answer one question) and warm latency.
context="Super Bowl 50 was an American football game to determine the champion of the National Football League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California."
cold=$(best_of 3 "$bin/qa-infer" --model "$model" --question "Which NFL team won Super Bowl 50?" --context "$context")
for i in $(seq 21); do
  printf '{"id": %d, "question": "Which NFL team won Super Bowl 50?", "context": "%s"}\n' "$i" "$context"
done > "$out/infer.jsonl"
batch=$(best_of 2 "$bin/qa-infer" --model "$model" --jsonl "$out/infer.jsonl")
warm=$(echo "$cold $batch" | awk '{printf "%.1f", ($2 - $1) / 20 * 1000}')
echo "qa-infer: cold ${cold}s (start + load + 1 answer); warm ${warm} ms/question (21-line JSONL minus cold)" | tee "$out/infer.txt"
torch_cold=; torch_warm=
if oracle; then
  # transformers 5 has no question-answering pipeline: tokenize with overflow windows, run the
  # model, take the best span of at most 30 tokens in the context, as qa-infer does.
  cat > "$out/infer.py" <<'PY'
import sys, time, torch
from transformers import AutoTokenizer, BertForQuestionAnswering
torch.set_num_threads(2)
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = BertForQuestionAnswering.from_pretrained(sys.argv[1]).eval()
q, c, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
def answer():
    enc = tok(q, c, truncation="only_second", max_length=384, stride=128, padding=True,
              return_overflowing_tokens=True, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc.pop("offset_mapping"); enc.pop("overflow_to_sample_mapping")
    with torch.no_grad():
        out = model(**enc)
    best = (-1e9, "")
    for w in range(out.start_logits.shape[0]):
        ctx = torch.tensor([s == 1 for s in enc.sequence_ids(w)])
        scores = out.start_logits[w][:, None] + out.end_logits[w][None, :]
        ok = ctx[:, None] & ctx[None, :] & torch.ones_like(scores, dtype=torch.bool).triu().tril(29)
        scores = scores.masked_fill(~ok, -1e9)
        k = int(scores.argmax())
        i, j = divmod(k, scores.shape[1])
        if float(scores[i, j]) > best[0]:
            best = (float(scores[i, j]), c[offsets[w][i][0]:offsets[w][j][1]])
    return best[1]
answer()
t = time.time()
for _ in range(n):
    answer()
print((time.time() - t) / max(n, 1) * 1000)
PY
  if HF_HUB_OFFLINE=1 "$py" "$out/infer.py" "$model" "Which NFL team won Super Bowl 50?" "$context" 0 >/dev/null 2>"$out/infer-torch.err"; then
    torch_cold=$(HF_HUB_OFFLINE=1 best_of 3 "$py" "$out/infer.py" "$model" "Which NFL team won Super Bowl 50?" "$context" 0)
    torch_warm=$(HF_HUB_OFFLINE=1 "$py" "$out/infer.py" "$model" "Which NFL team won Super Bowl 50?" "$context" 20 2>/dev/null | tail -1 | awk '{printf "%.1f", $1}')
  else
    echo "bench: the PyTorch qa-infer script failed (see $out/infer-torch.err); its cells stay empty" >&2
  fi
fi

# --- the table: ours vs PyTorch, same machine, same threads, medians of BENCH_RUNS runs ----
# Training: the first 96 training questions, one epoch, batch 8. Peak RSS is the process's
# (/usr/bin/time), for both sides.
runs=${BENCH_RUNS:-3}
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
peak_rss_mib() { sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$1" | awk '{ printf "%.0f", $1 / 1024 }'; }
table="$out/table.md"
{
  echo "| measure ($(nproc) CPUs here; BENCH_RUNS=$runs) | ours | PyTorch | ours vs PyTorch |"
  echo "|---|---|---|---|"
} > "$table"
round() { [ -n "$1" ] && echo "$1" | awk '{ printf ($1 >= 100 ? "%.0f" : "%.2f"), $1 }'; }
# row NAME OURS TORCH higher|lower: the last column is a speed-up (>1: ours better) either way.
row() {
  local adv=
  if [ -n "$2" ] && [ -n "$3" ]; then
    adv=$(echo "$2 $3 $4" | awk '{ r = ($3 == "higher") ? $1 / $2 : $2 / $1; printf "%.2fx", r }')
  fi
  echo "| $1 | $(round "$2") | $(round "$3") | $adv |" | tee -a "$table"
}
"$bin/squad-ingest" --input "$train" --output "$out/train96.examples.parquet" --limit 96 2>/dev/null
"$bin/qa-features" --examples "$out/train96.examples.parquet" --tokenizer "$model" --split train --output "$out/train96.features.parquet" 2>/dev/null
summary_field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
# ours_train MODE THREADS [MODEL [EXTRA...]] -> "features/s peak-RSS-MiB", at ref_train.py's
# settings (plain shuffled order).
ours_train() {
  local mode=$1 threads=$2 m=${3:-$model}; shift 3 || shift $#
  local flag=; [ "$mode" = fixed ] && flag=--pad-to-max-length
  local s
  s=$(RAYON_NUM_THREADS=$threads /usr/bin/time -v -o "$out/time.txt" "$bin/qa-train" --features "$out/train96.features.parquet" \
      --model "$m" --output "$out/train-$mode" --overwrite --threads "$threads" --quiet --save-steps 0 --no-group-by-length $flag "$@" 2>/dev/null)
  echo "$(echo "$s" | summary_field train_features_per_second) $(peak_rss_mib "$out/time.txt")"
}
# torch_train MODE THREADS [EXTRA...] (e.g. --bf16: CPU autocast).
torch_train() {
  local mode=$1 threads=$2; shift 2
  local flag=; [ "$mode" = dynamic ] && flag=--dynamic-padding
  local s
  s=$(MINILM_DIR=$PWD/$model /usr/bin/time -v -o "$out/time.txt" "$py" "${REF_DIR:-../shared/ref}/ref_train.py" --train-file "$train" \
      --dev-file "${DEV_JSON:-data/squad/dev-v1.1.json.gz}" --train-limit 96 --eval-limit 8 --threads "$threads" \
      --out "$out/ref-train-$mode" $flag "$@" 2>/dev/null | tail -1)
  echo "$(echo "$s" | sed -n 's/.*"train_features_per_s": \([0-9.]*\).*/\1/p') $(peak_rss_mib "$out/time.txt")"
}
# BENCH_REUSE_TRAIN=1 keeps the last run's training measurements (runs/bench/ours-*.txt,
# torch-*.txt) and measures the rest.
for mode in fixed dynamic; do
  [ "${BENCH_REUSE_TRAIN:-0}" = 1 ] && [ -s "$out/ours-$mode.txt" ] && continue
  : > "$out/ours-$mode.txt"; : > "$out/torch-$mode.txt"; : > "$out/ours-$mode-bf16.txt"; : > "$out/torch-$mode-bf16.txt"
  for _ in $(seq "$runs"); do  # alternate them, so drift in the machine's load hits all
    ours_train $mode 2 >> "$out/ours-$mode.txt"
    if oracle; then torch_train $mode 2 >> "$out/torch-$mode.txt" || true; fi
    if [ -n "$bf16" ]; then
      ours_train $mode 2 "$model" --precision bf16 >> "$out/ours-$mode-bf16.txt"
      if oracle; then torch_train $mode 2 --bf16 >> "$out/torch-$mode-bf16.txt" || true; fi
    fi
  done
done
label() { [ "$1" = fixed ] && echo "padded to 384" || echo "dynamic padding"; }
for mode in fixed dynamic; do
  row "train MiniLM, batch 8, $(label $mode), 2 threads (features/s)" \
    "$(cut -d' ' -f1 "$out/ours-$mode.txt" | median)" "$(cut -d' ' -f1 "$out/torch-$mode.txt" | median)" higher
  if [ -n "$bf16" ]; then
    row "train MiniLM, batch 8, $(label $mode), bf16 (ours --precision bf16, PyTorch --bf16) (features/s)" \
      "$(cut -d' ' -f1 "$out/ours-$mode-bf16.txt" | median)" "$(cut -d' ' -f1 "$out/torch-$mode-bf16.txt" | median)" higher
    row "train MiniLM, batch 8, $(label $mode): ours bf16 vs PyTorch fp32 (features/s)" \
      "$(cut -d' ' -f1 "$out/ours-$mode-bf16.txt" | median)" "$(cut -d' ' -f1 "$out/torch-$mode.txt" | median)" higher
    row "train MiniLM, batch 8, $(label $mode): ours bf16 vs ours f32 (features/s)" \
      "$(cut -d' ' -f1 "$out/ours-$mode-bf16.txt" | median)" "$(cut -d' ' -f1 "$out/ours-$mode.txt" | median)" higher
  fi
done
# Our default configuration (dynamic padding, length-grouped batches) on the seed pipeline's
# training set (the first 1,000 questions), once, against the HF Trainer's default (padded to
# 384: the median above).
"$bin/squad-ingest" --input "$train" --output "$out/train1000.examples.parquet" --limit 1000 2>/dev/null
"$bin/qa-features" --examples "$out/train1000.examples.parquet" --tokenizer "$model" --split train --output "$out/train1000.features.parquet" 2>/dev/null
s=$(RAYON_NUM_THREADS=2 "$bin/qa-train" --features "$out/train1000.features.parquet" --model "$model" --output "$out/train-default" \
    --overwrite --threads 2 --quiet --save-steps 0 2>/dev/null)
row "train, our default config on the first 1,000 questions vs the HF Trainer's default (features/s)" \
  "$(echo "$s" | summary_field train_features_per_second)" "$(cut -d' ' -f1 "$out/torch-fixed.txt" | median)" higher
row "peak RSS, train MiniLM, padded to 384 (MiB)" \
  "$(cut -d' ' -f2 "$out/ours-fixed.txt" | median)" "$(cut -d' ' -f2 "$out/torch-fixed.txt" | median)" lower
if [ -n "$bf16" ]; then
  row "peak RSS, train MiniLM, padded to 384, bf16 (MiB)" \
    "$(cut -d' ' -f2 "$out/ours-fixed-bf16.txt" | median)" "$(cut -d' ' -f2 "$out/torch-fixed-bf16.txt" | median)" lower
fi

# bert-base shape (12 layers, hidden 768), random init, 2 steps at 8 x 384.
mkdir -p "$out/bert-base-shaped"
cat > "$out/bert-base-shaped/config.json" <<'JSON'
{"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
 "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
 "type_vocab_size": 2, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
JSON
ours_bb=$(ours_train fixed 2 "$out/bert-base-shaped" --random-init --max-steps 2)
torch_bb=
if oracle; then
  cat > "$out/bert_base_train.py" <<'PY'
import json, sys, time, torch
from transformers import BertConfig, BertForQuestionAnswering
torch.set_num_threads(2)
torch.manual_seed(0)
m = BertForQuestionAnswering(BertConfig.from_json_file(sys.argv[1])).train()
opt = torch.optim.AdamW(m.parameters(), lr=2e-5, weight_decay=0.01)
b, n = 8, 384
ids = torch.randint(1000, 20000, (b, n))
tt = (torch.arange(n) > 20).long().expand(b, n)
am = torch.ones(b, n, dtype=torch.long)
pos = torch.randint(0, n, (b,))
t = time.time()
for _ in range(2):
    out = m(input_ids=ids, attention_mask=am, token_type_ids=tt, start_positions=pos, end_positions=pos)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
print(json.dumps({"features_per_s": round(2 * b / (time.time() - t), 3)}))
PY
  s=$(/usr/bin/time -v -o "$out/time.txt" "$py" "$out/bert_base_train.py" "$out/bert-base-shaped/config.json" 2>/dev/null | tail -1)
  torch_bb="$(echo "$s" | sed -n 's/.*"features_per_s": \([0-9.]*\).*/\1/p') $(peak_rss_mib "$out/time.txt")"
fi
row "peak RSS, train bert-base shape, 8 x 384, 2 steps (MiB)" "${ours_bb#* }" "${torch_bb#* }" lower
row "train bert-base shape, 8 x 384, 2 steps (features/s)" "${ours_bb%% *}" "${torch_bb%% *}" higher

# Eval-mode forward at 8 x 384 (2 threads each).
# Built with the binaries' feature set (a `-p qa-model` build would recompile polars and candle;
# one without the Makefile's MPI features would rebuild the binaries without MPI, and the MPI
# section below would fail).
cargo build -q --release --locked --bins --examples ${MPI_FEATURES:-}
cat > "$out/forward.py" <<'PY'
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
print(json.dumps({"features_per_s": round(b * batches / s, 2)}))
PY
: > "$out/forward-ours.txt"; : > "$out/forward-torch.txt"
fps() { sed -n 's/.*"features_per_s": \([0-9.]*\).*/\1/p'; }
for _ in $(seq "$runs"); do
  RAYON_NUM_THREADS=2 "$bin/examples/forward_bench" "$model" 8 384 6 | fps >> "$out/forward-ours.txt"
  if oracle; then HF_HUB_OFFLINE=1 "$py" "$out/forward.py" "$model" 2>/dev/null | fps >> "$out/forward-torch.txt"; fi
done
row "eval-mode forward, MiniLM, 8 x 384, 2 threads (features/s)" "$(median < "$out/forward-ours.txt")" "$(median < "$out/forward-torch.txt")" higher

# Full dev-v1.1 evaluation (10,570 questions), 2 threads, once each (minutes): qa-eval's wall time
# vs ref_train.py's evaluation (no training steps), both padding each batch to its longest.
dev=${DEV_JSON:-data/squad/dev-v1.1.json.gz}
if [ "${BENCH_SKIP_FULL_EVAL:-0}" != 1 ]; then
  [ -e "$dev" ] || make --no-print-directory "$dev"
  "$bin/squad-ingest" --input "$dev" --output "$out/dev-full.examples.parquet" 2>/dev/null
  "$bin/qa-features" --examples "$out/dev-full.examples.parquet" --tokenizer "$model" --split eval --output "$out/dev-full.features.parquet" 2>/dev/null
  # ours_full_eval [EXTRA...] -> wall seconds; torch_full_eval [EXTRA...] -> its eval loop's.
  ours_full_eval() {
    local t0 t1
    t0=$(date +%s.%N)
    RAYON_NUM_THREADS=2 "$bin/qa-eval" --model "$model" --features "$out/dev-full.features.parquet" --examples "$out/dev-full.examples.parquet" \
      --output "$out/eval-dev-full" --quiet "$@" >/dev/null
    t1=$(date +%s.%N)
    echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}'
  }
  torch_full_eval() {
    oracle || return 0
    MINILM_DIR=$PWD/$model "$py" "${REF_DIR:-../shared/ref}/ref_train.py" --train-file "$train" --dev-file "$dev" \
      --train-limit 8 --max-steps 1 --eval-limit 10570 --threads 2 --dynamic-padding --out "$out/ref-eval-full" "$@" 2>/dev/null \
      | tail -1 | sed -n 's/.*"eval_wall_s": \([0-9.]*\).*/\1/p'
  }
  ours_eval=$(ours_full_eval); torch_eval=$(torch_full_eval)
  row "full dev-v1.1 eval, MiniLM, 2 threads (wall s; PyTorch: its eval loop)" "$ours_eval" "$torch_eval" lower
  if [ -n "$bf16" ]; then
    ours_eval16=$(ours_full_eval --precision bf16); torch_eval16=$(torch_full_eval --bf16)
    row "full dev-v1.1 eval, bf16 (ours --precision bf16, PyTorch --bf16) (wall s)" "$ours_eval16" "$torch_eval16" lower
    row "full dev-v1.1 eval: ours bf16 vs PyTorch fp32 (wall s)" "$ours_eval16" "$torch_eval" lower
  fi
fi

row "qa-infer cold: start + load + 1 answer (s, best of 3)" "$cold" "$torch_cold" lower
row "qa-infer warm (ms per question)" "$warm" "$torch_warm" lower

# Thread scaling: training padded to 384 at 1 thread (one run each), beside the 2-thread medians.
ours_1=$(ours_train fixed 1); torch_1=
if oracle; then torch_1=$(torch_train fixed 1); fi
row "train MiniLM, padded to 384, 1 thread (features/s)" "${ours_1%% *}" "${torch_1%% *}" higher
o2=$(cut -d' ' -f1 "$out/ours-fixed.txt" | median); t2=$(cut -d' ' -f1 "$out/torch-fixed.txt" | median)
row "thread scaling, 2 threads / 1 thread (x)" \
  "$(echo "$o2 ${ours_1%% *}" | awk '{printf "%.2f", $1 / $2}')" \
  "$( [ -n "${torch_1%% *}" ] && echo "$t2 ${torch_1%% *}" | awk '{printf "%.2f", $1 / $2}')" higher
echo
echo "table: $table"

# Data-parallel training (MPI builds): 1 x 1, 1 x 2 threads, 2 processes x 1, vs PyTorch DDP.
if [ -n "${MPI:-}" ] && command -v mpirun >/dev/null; then
  echo
  scripts/bench_mpi.sh "$bin" "$out" "$out/train96.features.parquet" "$train" "$model" "$( oracle && echo "$py" )"
fi

# qa-serve over loopback HTTP: warm latency, throughput at 1/8/32 clients, soak; vs PyTorch.
dev=${DEV_JSON:-data/squad/dev-v1.1.json.gz}
[ -e "$dev" ] || make --no-print-directory data/squad/dev-v1.1.json.gz
echo
scripts/bench_serve.sh "$bin" "$out" "$model" "$dev" "$( oracle && echo "$py" )"
