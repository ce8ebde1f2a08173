#!/usr/bin/env bash
# Runs the README from top to bottom in this checkout and checks what it promises: the quick
# start (`make train`, `make eval`), the notebook's eight steps, `make infer`, that a second
# `make train` does nothing, that touching the train examples reruns features and training
# but not ingest (under `make -j2`), and the scheduler section's sharded evaluation.
# Each command's wall time goes to runs/walkthrough.tsv. Meant for a fresh clone with
# SQUAD_MIRROR set (or internet); it takes as long as a cold build plus two trainings.
set -euo pipefail
cd "$(dirname "$0")/.."

P=${PIPELINE:-squad-v1-seed}
R=runs/$P
B=${CARGO_TARGET_DIR:-target}/release
log=runs/walkthrough.tsv
mkdir -p runs
: > "$log"

die() { echo "walkthrough: FAILED: $*" >&2; exit 1; }

# step NAME COMMAND...: run, echo, and time one README command.
step() {
  local name=$1; shift
  echo
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@"
  printf '%s\t%d\t%s\n' "$name" $((SECONDS - t0)) "$*" >> "$log"
}

# Quick start.
step quick-start-train make train PIPELINE="$P"
step quick-start-eval make eval PIPELINE="$P"
[ -s "$R/eval/metrics.json" ] && [ -s "$R/report.md" ] || die "make eval left no metrics/report"

# The notebook's steps, in the README table's order (most are up to date by now).
step 1-install make model PIPELINE="$P"
step 2-load-squad make ingest PIPELINE="$P"
step 3-load-model make model PIPELINE="$P"
step 4-explore make stats PIPELINE="$P"
step 5-demo make demo PIPELINE="$P"
step 6-features make features PIPELINE="$P"
step 7-fine-tune make train PIPELINE="$P"
step 8-evaluate make eval PIPELINE="$P"
step infer make infer PIPELINE="$P" Q="Who won Super Bowl 50?" \
  C="The Denver Broncos defeated the Carolina Panthers 24-10 to win Super Bowl 50 in Santa Clara."

# A second `make train` has nothing to do.
make --question PIPELINE="$P" "$R/model/model.safetensors" "$R/report.md" \
  || die "make considers the trained run stale right after training"
echo "walkthrough: a second make train does nothing (make --question: up to date)"

# Touching the train examples reruns features and training, never ingest.
touch "$R/train.examples.parquet"
plan=$(make -n PIPELINE="$P" train)
grep -q 'features-train' <<<"$plan" || die "touching train examples does not rerun features"
grep -q 'timings.tsv train' <<<"$plan" || die "touching train examples does not rerun training"
! grep -q 'ingest-' <<<"$plan" || die "touching train examples reruns ingest"
ingest_before=$(stat -c %Y "$R/train.examples.parquet" "$R/dev.examples.parquet")
step touch-rerun-j2 make -j2 eval PIPELINE="$P"
[ "$(stat -c %Y "$R/train.examples.parquet" "$R/dev.examples.parquet")" = "$ingest_before" ] \
  || die "make -j2 eval rewrote the examples files"
[ "$R/train.features.parquet" -nt "$R/train.examples.parquet" ] || die "features not redone"
[ "$R/model/model.safetensors" -nt "$R/train.features.parquet" ] || die "training not redone"

# The scheduler section: the Slurm array's commands as a 2-way split of the run's dev set
# (qa-eval --shard over the run's features), then the variant that shards from ingest on.
S=$R/shards
for i in 0 1; do
  step shard-$i-eval "$B/qa-eval" --config "pipelines/$P.yaml" --model "$R/model" \
    --features "$R/dev.features.parquet" --examples "$R/dev.examples.parquet" \
    --shard $i/2 --output "$S/eval.$i" --quiet
  step shard-$i-ingest "$B/squad-ingest" --config "pipelines/$P.yaml" --split dev \
    --input data/squad/dev-v1.1.json.gz --shard $i/2 --output "$S/dev.$i.examples.parquet"
  step shard-$i-features "$B/qa-features" --config "pipelines/$P.yaml" \
    --examples "$S/dev.$i.examples.parquet" --split eval --output "$S/dev.$i.features.parquet"
  step shard-$i-eval-own-files "$B/qa-eval" --config "pipelines/$P.yaml" --model "$R/model" \
    --features "$S/dev.$i.features.parquet" --examples "$S/dev.$i.examples.parquet" \
    --output "$S/eval-own.$i" --quiet
done
step shard-merge "$B/qa-eval" score --data data/squad/dev-v1.1.json.gz --only-predicted \
  --predictions "$S/eval.0/predictions.json" "$S/eval.1/predictions.json"
python3 - "$R/eval/predictions.json" "$S" <<'PY'
import json, sys
whole = json.load(open(sys.argv[1]))
for kind in ("eval", "eval-own"):
    merged = {}
    for i in (0, 1):
        merged.update(json.load(open(f"{sys.argv[2]}/{kind}.{i}/predictions.json")))
    assert merged == whole, f"{kind}: sharded predictions differ from the unsharded ones"
print(f"walkthrough: both 2-way splits give the unsharded predictions ({len(whole)} questions)")
PY

echo
echo "walkthrough: all README steps passed; wall seconds per command:"
column -t -s $'\t' "$log" | cut -c1-120
