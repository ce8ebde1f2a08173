#!/usr/bin/env bash
# GPU check: run from the repo root on a machine with an NVIDIA GPU and the carried bundle
# (scripts/gpu_bundle.sh), no cargo needed. Prints one table:
#   1. parity, CUDA vs CPU: the cargo GPU tests (crates/qa-train/tests/gpu.rs: eval logits 1e-3,
#      a training step per kernel choice: loss and grad norm 1e-3 relative, weights 1e-4;
#      dropout masks), and exact resume on the device;
#   2. speed at the seed settings (fp32, padded to 384, batch 8) on a fixed slice, ours and
#      ../shared/ref/ref_train.py --cuda on the same slice; eval throughput on the full dev set;
#   3. quality: the seed settings on the largest slice of train-v1.1 that fits the time left
#      (all of it when it fits), both ours and PyTorch, then EM/F1 on the full dev-v1.1.
# GPU_CHECK_BUDGET_S (default 520) bounds the whole check; SPEED_QUESTIONS (default 4000)
# sizes the speed slice; SKIP_UNFUSED=1 skips the per-tensor AdamW speed row; DEV_QUESTIONS limits the dev set (default: all of it). Logs and outputs: $GPU_CHECK_DIR (default /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-520}
SPEED_Q=${SPEED_QUESTIONS:-4000}
BUNDLE=${GPU_BUNDLE:-gpu-bundle/run}
STASH=${GPU_STASH:-/tmp/squad-qa-stash}
W=${GPU_CHECK_DIR:-/tmp/gpu-check}
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU (the script's own dry run).
DEV=${GPU_CHECK_DEVICE:-cuda}
REF_DEV=$([ "$DEV" = cpu ] && echo "--threads $(nproc)" || echo --cuda)
rm -rf "$W"; mkdir -p "$W/bin" "$W/logs"
TABLE="$W/table.tsv"
printf 'check\tours (cuda)\treference\tgoal\tresult\n' > "$TABLE"
row() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$TABLE"; }
elapsed() { echo $(( $(date +%s) - START )); }
# run NAME CMD...: logs to $W/logs/NAME.log; on failure the log's tail goes to stderr.
run() {
  local name=$1; shift
  local t0=$(date +%s.%N)
  if "$@" > "$W/logs/$name.log" 2>&1; then
    echo "gpu_check: $name ok ($(python3 -c "print(round($(date +%s.%N)-$t0,1))") s, at $(elapsed) s)" >&2
  else
    echo "gpu_check: $name FAILED; log tail:" >&2; tail -5 "$W/logs/$name.log" >&2; return 1
  fi
}
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }
last_json() { tail -1 "$1" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(eval(sys.argv[1], {}, {'d': d}))" "$2"; }
finish() {
  echo
  python3 - "$TABLE" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
widths = [max(len(r[i]) if i < len(r) else 0 for r in rows) for i in range(max(map(len, rows)))]
for r in rows:
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
PY
  echo "gpu_check: done in $(elapsed) s"
  exit 0
}

for f in "$BUNDLE"/bin/*.xz; do xz -dc "$f" > "$W/bin/$(basename "$f" .xz)"; done
chmod +x "$W"/bin/*
B=$W/bin
NVLIB=$(python3 -c 'import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],"cu13","lib"))' 2>/dev/null)
export LD_LIBRARY_PATH="$NVLIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
GPU=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
TORCH=$(python3 -c 'import torch,transformers;print(torch.__version__, transformers.__version__)' 2>/dev/null)
echo "gpu_check: $GPU; torch/transformers $TORCH; $(nproc) cores" >&2
row "machine" "$GPU" "torch $TORCH" "" ""

# The model in f32 for both sides: MiniLM from the stash (f16, upcast), else one random
# initialisation (seeded, torch's BERT init) that both sides start from.
M=$W/minilm32; mkdir -p "$M"
if [ -e "$STASH/model/model.safetensors" ]; then
  cp "$STASH"/model/*.json "$STASH"/model/*.txt "$M"/ 2>/dev/null
  MODEL_NOTE="all-MiniLM-L6-v2 (f16 stash, upcast)"
  python3 - "$STASH/model/model.safetensors" "$M/model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}, sys.argv[2])
PY
else
  MODEL_NOTE="random init (no stash: quality rows are from scratch)"
  cp "$BUNDLE"/tokenizer/* "$M"/
  python3 - "$M" <<'PY'
import sys, torch
from transformers import BertConfig, BertForQuestionAnswering
torch.manual_seed(0)
cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                 intermediate_size=1536, max_position_embeddings=512)
BertForQuestionAnswering(cfg).save_pretrained(sys.argv[1])
PY
fi
row "model" "$MODEL_NOTE" "" "" ""
TRAIN_JSON=$BUNDLE/data/train-v1.1.reconstructed.json.gz
DEV_JSON=$BUNDLE/data/dev-v1.1.json.gz

# examples + features: features NAME SPLIT(train|dev) JSON [LIMIT]
features() {
  local name=$1 split=$2 json=$3 limit=${4:-}
  local fsplit=$([ "$split" = dev ] && echo eval || echo train)
  run "ingest-$name" "$B/squad-ingest" --split "$split" --input "$json" --output "$W/$name.examples.parquet" ${limit:+--limit $limit} &&
  run "features-$name" "$B/qa-features" --examples "$W/$name.examples.parquet" --tokenizer "$M" --split "$fsplit" --output "$W/$name.features.parquet"
}
features dev100 dev "$DEV_JSON" 100
features dev dev "$DEV_JSON" ${DEV_QUESTIONS:-}
features speed train "$TRAIN_JSON" "$SPEED_Q"

# --- 1. parity: the cargo GPU tests (crates/qa-train/tests/gpu.rs, built by build_cuda.sh) ---
# CUDA against the CPU on the oracle's seeded checkpoint: eval logits (1e-3), a training step
# with each choice of kernels (loss and grad norm 1e-3 relative, weights 1e-4), dropout masks.
if [ -e "$BUNDLE/bin/gpu-tests.xz" ]; then
  [ -e "$BUNDLE/fixtures/fixtures.tar" ] && tar -xf "$BUNDLE/fixtures/fixtures.tar"
  ln -sfn "$M" data/models/all-MiniLM-L6-v2 2>/dev/null || true
  if [ "$DEV" = cpu ]; then
    row "parity: cargo GPU tests" "skipped (GPU_CHECK_DEVICE=cpu)" "" "" ""
  elif run gpu-tests "$B/gpu-tests" --test-threads 1; then
    row "parity: cargo GPU tests (eval logits, step x3 kernel choices, dropout)" "$(grep -c '\.\.\. ok' "$W/logs/gpu-tests.log") passed" "" "all pass" PASS
  else
    row "parity: cargo GPU tests" "$(grep -E 'FAILED|panicked' "$W/logs/gpu-tests.log" | head -1)" "" "all pass" FAIL
  fi
else
  row "parity: cargo GPU tests" "no gpu-tests in the bundle (scripts/build_cuda.sh, then gpu_bundle.sh)" "" "all pass" FAIL
fi

# Exact resume on the device: 8 steps straight, and 8 steps resumed from the step-4 checkpoint.
RESUME_FLAGS="--max-steps 8 --save-steps 4 --save-total-limit 3 --pad-to-max-length --logging-steps 1 --quiet"
if run resume-whole "$B/qa-train" --model "$M" --features "$W/speed.features.parquet" --output "$W/resume-whole" --device $DEV $RESUME_FLAGS &&
   run resume-first "$B/qa-train" --model "$M" --features "$W/speed.features.parquet" --output "$W/resume-cut" --device $DEV $RESUME_FLAGS &&
   rm -rf "$W/resume-cut/checkpoints/checkpoint-8" "$W/resume-cut/model" &&
   run resume-rest "$B/qa-train" --model "$M" --features "$W/speed.features.parquet" --output "$W/resume-cut" --device $DEV $RESUME_FLAGS --resume; then
  same=$(cmp -s "$W/resume-whole/model/model.safetensors" "$W/resume-cut/model/model.safetensors" && echo PASS || echo FAIL)
  row "resume: 8 steps vs 4 + resume 4, model.safetensors" "$([ $same = PASS ] && echo identical || echo differs)" "" "bit-exact" "$same"
fi

# --- 2. speed --------------------------------------------------------------------------------
SEED_FLAGS="--pad-to-max-length --batch-size 8 --learning-rate 2e-5 --logging-steps 50 --save-steps 0 --quiet"
ours_speed=0; ref_speed=0
if run train-speed "$B/qa-train" --model "$M" --features "$W/speed.features.parquet" --output "$W/speed" --device $DEV $SEED_FLAGS; then
  ours_speed=$(json "$W/speed/train_summary.json" 'round(d["train_features_per_second"],1)')
  nfeat=$(json "$W/speed/train_summary.json" 'd["features"]')
fi
if run ref-speed python3 "$BUNDLE/ref/ref_train.py" $REF_DEV --model "$M" --train-file "$TRAIN_JSON" --dev-file "$DEV_JSON" \
     --train-limit "$SPEED_Q" --eval-limit 100 --logging-steps 50 --out "$W/ref-speed"; then
  ref_speed=$(last_json "$W/logs/ref-speed.log" 'round(d["train_features_per_s"],1)')
fi
ratio=$(python3 -c "print(round($ours_speed/$ref_speed,2) if $ref_speed else 'n/a')")
row "speed: train features/s, fp32, pad 384, batch 8 (${nfeat:-?} features)" "$ours_speed" "$ref_speed" ">= 1.0x" "${ratio}x"
if run train-speed-fused "$B/qa-train" --fused-cuda-norm --model "$M" --features "$W/speed.features.parquet" --output "$W/speed-fused" --device $DEV $SEED_FLAGS; then
  row "speed: the same with the fused LayerNorm/softmax kernels (--fused-cuda-norm)" "$(json "$W/speed-fused/train_summary.json" 'round(d["train_features_per_second"],1)')" "$ref_speed" "" ""
fi
if [ -z "${SKIP_UNFUSED:-}" ] && run train-speed-unfused "$B/qa-train" --no-fused-adamw --model "$M" --features "$W/speed.features.parquet" --output "$W/speed-unfused" --device $DEV $SEED_FLAGS; then
  row "speed: the same, AdamW tensor by tensor (--no-fused-adamw)" "$(json "$W/speed-unfused/train_summary.json" 'round(d["train_features_per_second"],1)')" "$ref_speed" "" ""
fi
if run eval-speed "$B/qa-eval" --model "$M" --features "$W/dev.features.parquet" --examples "$W/dev.examples.parquet" --output "$W/eval-speed" --device $DEV --batch-size 8 --quiet; then
  ours_eval=$(json "$W/eval-speed/metrics.json" 'round(d["features_per_second"],1)')
else ours_eval=0; fi

# --- 3. quality: the largest slice of train-v1.1 that fits ----------------------------------
left=$(( BUDGET - $(elapsed) - 90 ))   # 90 s: features, two full-dev evals, the summary
q=$(python3 -c "
o, r = float('$ours_speed' or 0), float('$ref_speed' or 0)
print(0 if o <= 0 or r <= 0 else min(87599, int($left / (1.01 / o + 1.01 / r))))")
echo "gpu_check: quality slice: $q questions ($left s left)" >&2
if [ "$q" -ge 1000 ]; then
  features quality train "$TRAIN_JSON" "$q"
  if run train-quality "$B/qa-train" --model "$M" --features "$W/quality.features.parquet" --output "$W/quality" --device $DEV $SEED_FLAGS \
     && run eval-quality "$B/qa-eval" --model "$W/quality/model" --features "$W/dev.features.parquet" --examples "$W/dev.examples.parquet" --output "$W/quality/eval" --device $DEV --batch-size 8 --quiet; then
    ours_q=$(json "$W/quality/eval/metrics.json" '"EM %.2f / F1 %.2f" % (d["metrics"]["exact_match"], d["metrics"]["f1"])')
    ours_t=$(json "$W/quality/train_summary.json" '"%.0f s, %.1f features/s" % (d["train_seconds"], d["train_features_per_second"])')
  fi
  if run ref-quality python3 "$BUNDLE/ref/ref_train.py" $REF_DEV --model "$M" --train-file "$TRAIN_JSON" --dev-file "$DEV_JSON" \
       --train-limit "$q" --eval-limit ${DEV_QUESTIONS:-100000} --logging-steps 50 --out "$W/ref-quality"; then
    ref_q=$(last_json "$W/logs/ref-quality.log" '"EM %.2f / F1 %.2f" % (d["exact_match"], d["f1"])')
    ref_t=$(last_json "$W/logs/ref-quality.log" '"%.0f s, %.1f features/s" % (d["train_wall_s"], d["train_features_per_s"])')
    ref_eval=$(last_json "$W/logs/ref-quality.log" 'round(d["eval_features_per_s"],1)')
  fi
  row "quality: train on the first $q questions (1 epoch)" "${ours_t:-failed}" "${ref_t:-failed}" "" ""
  row "quality: EM/F1 on the full dev-v1.1" "${ours_q:-failed}" "${ref_q:-failed}" "F1 within 1.0" ""
fi
row "speed: eval features/s, full dev-v1.1, batch 8 (ours: each batch padded to its longest; torch: to 384)" "${ours_eval:-0}" "${ref_eval:-n/a}" ">= 1.0x" "$(python3 -c "print(str(round(${ours_eval:-0}/${ref_eval:-1}, 2))+'x' if '${ref_eval:-}' else 'n/a')" 2>/dev/null)"
finish
