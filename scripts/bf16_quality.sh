#!/usr/bin/env bash
# The cost of bf16 in quality: train PIPELINE (default squad-v1-10k) in f32 and in bf16 with
# the same seed, evaluate both on its dev set, and evaluate the f32 model in bf16 too (the
# share of questions whose prediction is the same). Prints a markdown table; minutes to hours.
#   SQUAD_MIRROR=../shared/data/squad scripts/bf16_quality.sh [PIPELINE]
set -euo pipefail
pipeline=${1:-squad-v1-10k}
bin=${BIN:-target/release}
run=runs/$pipeline
make --no-print-directory features PIPELINE="$pipeline" >/dev/null
for p in f32 bf16; do
  out=$run-$p
  if [ ! -s "$out/model/model.safetensors" ]; then
    t0=$(date +%s)
    "$bin/qa-train" --config "pipelines/$pipeline.yaml" --features "$run/train.features.parquet" --output "$out" \
      --precision "$p" --overwrite --quiet --save-steps 0 > "$out.train.json"
    echo "$(( $(date +%s) - t0 ))" > "$out.train-seconds"
  fi
done
# evaluate MODEL PRECISION OUT -> EM F1 seconds
evaluate() {
  local t0 t1
  t0=$(date +%s.%N)
  "$bin/qa-eval" --config "pipelines/$pipeline.yaml" --model "$1/model" --features "$run/dev.features.parquet" \
    --examples "$run/dev.examples.parquet" --output "$3" --precision "$2" --quiet >/dev/null
  t1=$(date +%s.%N)
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["metrics"]; print(m["exact_match"], m["f1"], round(float(sys.argv[3])-float(sys.argv[2]),1))' \
    "$3/metrics.json" "$t0" "$t1"
}
read -r em32 f132 s32 < <(evaluate "$run-f32" f32 "$run-f32/eval-f32")
read -r em16 f116 s16 < <(evaluate "$run-bf16" bf16 "$run-bf16/eval-bf16")
read -r emx f1x sx < <(evaluate "$run-f32" bf16 "$run-f32/eval-bf16")
same=$(python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); print("%.1f" % (100 * sum(a[k] == b[k] for k in a) / len(a)))' \
  "$run-f32/eval-f32/predictions.json" "$run-f32/eval-bf16/predictions.json")
fps() { sed -n 's/.*"train_features_per_second":\([0-9.]*\).*/\1/p' "$1"; }
echo "| $pipeline (seed 42, $(nproc) cores) | train wall s | train features/s | dev EM | dev F1 |"
echo "|---|---|---|---|---|"
echo "| trained f32, evaluated f32 | $(cat "$run-f32.train-seconds") | $(fps "$run-f32.train.json") | $em32 | $f132 |"
echo "| trained bf16, evaluated bf16 | $(cat "$run-bf16.train-seconds") | $(fps "$run-bf16.train.json") | $em16 | $f116 |"
echo "| trained f32, evaluated bf16 | | | $emx | $f1x |"
echo
echo "F1 bf16 - f32 (trained and evaluated in each): $(echo "$f116 $f132" | awk '{printf "%+.2f", $1 - $2}')"
echo "f32 model: the same prediction in bf16 as in f32 for $same% of the questions (eval wall: f32 ${s32}s, bf16 ${sx}s)"
