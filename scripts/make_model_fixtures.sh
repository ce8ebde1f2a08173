#!/usr/bin/env bash
# Regenerates the committed model fixtures with the HF oracle (reference venv, see
# ../shared/ref/README.md):
#  - seed0_qa_head.safetensors: qa_outputs.{weight,bias} of ref_qa_checkpoint.py --seed 0
#    (all-MiniLM-L6-v2 + that head = the oracle's seeded QA checkpoint; the 90 MB encoder
#    comes from `make model`, so only the head is committed);
#  - *.logits.ref.parquet: eval-mode start/end logits from ref_forward.py on the committed
#    oracle features (tiny train: 18 features; first 32 features of the first 200 dev questions);
#  - tiny.grads.ref.json: loss and gradient norms of the first tiny batch of 8 (dropout off).
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${REF_DIR:-../shared/ref}
py=${REF_PYTHON:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
export MINILM_DIR=${MINILM_DIR:-$PWD/data/models/all-MiniLM-L6-v2}
features=crates/qa-features/tests/fixtures
out=crates/qa-model/tests/fixtures
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
"$py" "$ref/ref_qa_checkpoint.py" --out "$tmp/qa_ckpt" --seed 0 >/dev/null 2>&1
"$py" - "$tmp/qa_ckpt/model.safetensors" "$out/seed0_qa_head.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: t[k].contiguous() for k in ("qa_outputs.weight", "qa_outputs.bias")}, sys.argv[2])
PY
"$py" "$ref/ref_forward.py" --ckpt "$tmp/qa_ckpt" --features "$features/tiny.train.ref.parquet" --n 18 \
  --out "$out/tiny.train.logits.ref.parquet" --grad-json "$tmp/grads.json" --threads 2 > "$tmp/summary.json"
"$py" - "$tmp/summary.json" "$tmp/grads.json" "$out/tiny.grads.ref.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); g = json.load(open(sys.argv[2]))
json.dump({"loss": s["loss"], "start_loss": s["start_loss"], "end_loss": s["end_loss"],
           "grad_l2_norm": s["grad_l2_norm"], "grad_l2_norm_clip_grad_norm_": s["grad_l2_norm_clip_grad_norm_"],
           "per_param_l2": g["per_param_l2"]}, open(sys.argv[3], "w"), indent=1)
PY
"$py" "$ref/ref_forward.py" --ckpt "$tmp/qa_ckpt" --features "$features/dev200.eval.ref.parquet" --n 32 \
  --out "$out/dev32.eval.logits.ref.parquet" --threads 2 >/dev/null
ls -la "$out"
