#!/usr/bin/env bash
# Checks the Makefile's DAG with `make -n` on a throw-away pipeline whose stage outputs are
# empty files with staged mtimes (no binaries run): a finished run has nothing to do,
# editing one config section reruns only the stages that read it, a comment-only edit or a
# reverted edit is handled, touching the train examples reruns features and training but not
# ingest, and another process count (NPROC) retrains.
#
# Needs the real config-stamp tool (pipeline-stamp), which it does not build: PIPELINE_STAMP
# if set, else the debug build that `cargo test --workspace` makes (so `make test` has it),
# else the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
if [ -z "${PIPELINE_STAMP:-}" ]; then
  for PIPELINE_STAMP in "$target/debug/pipeline-stamp" "$target/release/pipeline-stamp"; do
    [ -x "$PIPELINE_STAMP" ] && break
  done
fi
if [ ! -x "$PIPELINE_STAMP" ]; then
  echo "test_make_dag: no pipeline-stamp binary in $target/{debug,release}: run 'cargo test --workspace' (or set PIPELINE_STAMP)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

mkdir -p "$tmp/bin" "$tmp/model" "$tmp/run/model" "$tmp/run/eval"
for b in squad-ingest qa-features qa-train qa-eval qa-infer qa-serve; do touch "$tmp/bin/$b"; done
touch "$tmp/train.json.gz" "$tmp/dev.json.gz"
write_config() { # LR N_BEST MAX_LENGTH TRAIN_LIMIT [COMMENT]
  cat > "$tmp/p.yaml" <<YAML
name: dagtest   ${5:-}
data:
  train_file: $tmp/train.json.gz
  dev_file: $tmp/dev.json.gz
  train_limit: $4
model:
  name_or_path: $tmp/model
features:
  max_length: $3
train:
  learning_rate: $1   # the one knob
eval:
  n_best_size: $2
YAML
}
# The stages make would run for the final evaluation, sorted, on one line.
plan() {
  make --no-print-directory -n NPROC="${NPROC:-1}" CONFIG="$tmp/p.yaml" RUN="$tmp/run" BIN="$tmp/bin" PIPELINE_STAMP="$PIPELINE_STAMP" \
    "$tmp/run/eval/metrics.json" \
    | { grep -o 'timings.tsv [a-z-]*' || true; } | cut -d' ' -f2 | sort | tr '\n' ' ' | sed 's/ $//'
}
# As if the whole pipeline had just run: inputs, then each stage's outputs, in order.
finish_run() {
  local t=$(( $(date +%s) - 100 ))
  plan >/dev/null # writes the stamps of the current config
  touch -d "@$t" "$tmp"/run/.stamps/*.sha256 "$tmp"/*.json.gz "$tmp/p.yaml" "$tmp/model"
  touch -d "@$((t + 1))" "$tmp"/run/{train,dev}.examples.parquet
  touch -d "@$((t + 2))" "$tmp"/run/{train,dev}.features.parquet
  touch -d "@$((t + 3))" "$tmp/run/model/model.safetensors"
  touch -d "@$((t + 4))" "$tmp/run/eval/metrics.json"
}
fails=0
expect() { # WHAT EXPECTED_PLAN
  local got; got=$(plan)
  if [ "$got" = "$2" ]; then echo "ok: $1 -> ${2:-nothing}"; else echo "FAIL: $1: expected '${2:-nothing}', make plans '$got'"; fails=1; fi
}

write_config 2.0e-5 20 384 10
expect "fresh pipeline" "eval features-dev features-train ingest-dev ingest-train train"
finish_run; expect "finished run" ""
write_config 2.0e-5 20 384 10 "# a comment"; expect "comment-only edit" ""
write_config 2.0e-5 10 384 10; expect "eval section edited" "eval"
finish_run; write_config 3.0e-5 10 384 10; expect "train section edited" "eval train"
finish_run; write_config 2.0e-5 10 384 10; expect "train edit reverted" "eval train"
finish_run; write_config 2.0e-5 10 256 10; expect "features section edited" "eval features-dev features-train train"
finish_run; write_config 2.0e-5 10 256 20; expect "data section edited" "eval features-dev features-train ingest-dev ingest-train train"
finish_run; touch "$tmp/run/train.examples.parquet"; expect "train examples touched" "eval features-train train"
# The process count sets the global batch: another NPROC retrains, the same one does not.
finish_run; NPROC=2 expect "NPROC=2 (another global batch)" "eval train"
NPROC=2 finish_run; NPROC=2 expect "NPROC=2 again" ""
NPROC=1 expect "back to one process" "eval train"
exit $fails
