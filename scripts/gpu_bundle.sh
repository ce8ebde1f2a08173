#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine that has no cargo, in two parts that
# each fit the device tool's 64 MiB carry (git-ignored):
#   gpu-bundle/run/    the CUDA build's binaries (stripped, xz), the SQuAD files, the oracle's
#                      scripts (~40 MB);
#   gpu-bundle/stash/  all-MiniLM-L6-v2 in f16 (45 MB; the check upcasts it to f32), carried by
#                      a first call that copies it to $GPU_STASH (default /tmp/squad-qa-stash),
#                      where the check finds it on the same warm machine. Without it the check
#                      starts both sides from the same random initialisation.
#   scripts/build_cuda.sh && scripts/gpu_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_BIN=${CUDA_BIN:-${CUDA_TARGET_DIR:-target/cuda}/release}
REF=${REF_DIR:-../shared/ref}
SQUAD=${SQUAD_MIRROR:-../shared/data/squad}
PY=${PY:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
MODEL=data/models/all-MiniLM-L6-v2
rm -rf gpu-bundle
B=gpu-bundle/run
S=gpu-bundle/stash
mkdir -p "$B/bin" "$S/model" "$B/data" "$B/ref"
for t in qa-train qa-eval squad-ingest qa-features; do
  strip -o "$B/bin/$t" "$CUDA_BIN/$t"
  xz -6 -T2 "$B/bin/$t"
done
# The GPU parity tests (built by scripts/build_cuda.sh): the newest `gpu-*` test binary, run
# by gpu_check.sh from the repo root (they find their fixtures there), with the fixtures.
GPU_TEST=$(ls -t "$CUDA_BIN"/deps/gpu-* 2>/dev/null | grep -v '\.d$' | head -1)
if [ -n "$GPU_TEST" ]; then
  strip -o "$B/bin/gpu-tests" "$GPU_TEST"
  xz -6 -T2 "$B/bin/gpu-tests"
  mkdir -p "$B/fixtures"
  tar -cf "$B/fixtures/fixtures.tar" crates/qa-model/tests/fixtures/seed0_qa_head.safetensors \
    crates/qa-features/tests/fixtures/tiny.train.ref.parquet crates/qa-features/tests/fixtures/dev200.eval.ref.parquet
else
  echo "gpu_bundle: no GPU test binary in $CUDA_BIN/deps (scripts/build_cuda.sh builds it)" >&2
fi
for f in config.json tokenizer.json vocab.txt tokenizer_config.json special_tokens_map.json; do
  [ -e "$MODEL/$f" ] && cp "$MODEL/$f" "$S/model/"
done
"$PY" - "$MODEL/model.safetensors" "$S/model/model.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1])
save_file({k: (v.astype("float16") if v.dtype.kind == "f" else v) for k, v in t.items()}, sys.argv[2])
PY
mkdir -p "$B/tokenizer"
for f in tokenizer.json vocab.txt tokenizer_config.json special_tokens_map.json; do
  [ -e "$MODEL/$f" ] && cp "$MODEL/$f" "$B/tokenizer/"
done
cp "$SQUAD/train-v1.1.reconstructed.json.gz" "$SQUAD/dev-v1.1.json.gz" "$B/data/"
cp "$REF"/{ref_train.py,ref_features.py,ref_postprocess.py,squad_metric.py} "$B/ref/"
du -sh "$B"/* "$B" "$S"
