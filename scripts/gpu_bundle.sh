#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine that has no cargo into gpu-bundle/
# (git-ignored; ~40 MB, under the device tool's 64 MiB carry): the CUDA build's binaries
# (stripped, xz), all-MiniLM-L6-v2 in f16 (the binaries and the check upcast it to f32), the
# SQuAD files and the oracle's scripts.
#   scripts/build_cuda.sh && scripts/gpu_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_BIN=${CUDA_BIN:-${CUDA_TARGET_DIR:-target/cuda}/release}
REF=${REF_DIR:-../shared/ref}
SQUAD=${SQUAD_MIRROR:-../shared/data/squad}
PY=${PY:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
MODEL=data/models/all-MiniLM-L6-v2
B=gpu-bundle
rm -rf "$B"
mkdir -p "$B/bin" "$B/model" "$B/data" "$B/ref"
for t in qa-train qa-eval squad-ingest qa-features; do
  strip -o "$B/bin/$t" "$CUDA_BIN/$t"
  xz -6 -T2 "$B/bin/$t"
done
for f in config.json tokenizer.json vocab.txt tokenizer_config.json special_tokens_map.json; do
  [ -e "$MODEL/$f" ] && cp "$MODEL/$f" "$B/model/"
done
"$PY" - "$MODEL/model.safetensors" "$B/model/model.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: (v.astype("float16") if v.dtype.kind == "f" else v) for k, v in t.items()}, sys.argv[2])
PY
cp "$SQUAD/train-v1.1.reconstructed.json.gz" "$SQUAD/dev-v1.1.json.gz" "$B/data/"
cp "$REF"/{ref_train.py,ref_features.py,ref_postprocess.py,squad_metric.py} "$B/ref/"
du -sh "$B"/* "$B"
