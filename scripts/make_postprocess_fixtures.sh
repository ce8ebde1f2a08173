#!/usr/bin/env bash
# Post-processing golden fixtures from the HF oracle (reference venv): ref_postprocess.py
# (utils_qa.postprocess_qa_predictions) on the oracle's seeded-checkpoint logits for the
# committed tiny features, v1.1 and v2.0. Run after make_model_fixtures.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${REF_DIR:-../shared/ref}
py=${REF_PYTHON:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
export MINILM_DIR=${MINILM_DIR:-$PWD/data/models/all-MiniLM-L6-v2}
features=crates/qa-features/tests/fixtures
logits=crates/qa-model/tests/fixtures
out=crates/qa-eval/tests/fixtures
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$py" "$ref/ref_qa_checkpoint.py" --out "$tmp/qa_ckpt" --seed 0 >/dev/null 2>&1
"$py" "$ref/ref_forward.py" --ckpt "$tmp/qa_ckpt" --features "$features/tiny_v2.eval.ref.parquet" --n 20 \
  --out "$out/tiny_v2.eval.logits.ref.parquet" --loss-batch 0 --threads 2 >/dev/null
# The tiny train and eval features have the same windows, so the train logits serve here.
"$py" "$ref/ref_postprocess.py" --data "$features/tiny.json" --features "$features/tiny.eval.ref.parquet" \
  --logits "$logits/tiny.train.logits.ref.parquet" --out-predictions "$out/tiny.predictions.ref.json" \
  --out-nbest "$out/tiny.nbest.ref.json" >/dev/null
"$py" "$ref/ref_postprocess.py" --data "$features/tiny_v2.json" --features "$features/tiny_v2.eval.ref.parquet" \
  --logits "$out/tiny_v2.eval.logits.ref.parquet" --v2 --null-threshold -0.65 \
  --out-predictions "$out/tiny_v2.predictions.ref.json" --out-nbest "$out/tiny_v2.nbest.ref.json" >/dev/null
ls -la "$out"
