#!/usr/bin/env bash
# Checkpoint round trip against transformers (needs the reference venv, ../shared/ref):
#  1. transformers saves the seeded QA checkpoint (ref_qa_checkpoint.py --seed 0);
#  2. we load it, save it again in our layout, and compute logits;
#  3. transformers loads OUR checkpoint (must report no missing/unexpected keys) and its
#     logits must equal ours and the original's within 1e-4.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${REF_DIR:-../shared/ref}
py=${REF_PYTHON:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
export MINILM_DIR=${MINILM_DIR:-$PWD/data/models/all-MiniLM-L6-v2}
features=crates/qa-features/tests/fixtures/tiny.train.ref.parquet
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$py" "$ref/ref_qa_checkpoint.py" --out "$tmp/hf_saved" --seed 0 >/dev/null 2>&1
cargo run -q --locked -p qa-model --example roundtrip -- "$tmp/hf_saved" "$tmp/ours" "$features" "$tmp/ours.json"
HF_HUB_OFFLINE=1 "$py" - "$tmp/hf_saved" "$tmp/ours" "$features" "$tmp/ours.json" <<'PY'
import json, sys
import numpy as np, pyarrow.parquet as pq, torch
from transformers import BertForQuestionAnswering
hf_dir, ours_dir, feats, ours_json = sys.argv[1:]
t = pq.read_table(feats).to_pydict()
ids, am, tt = (torch.tensor(t[k][:32]) for k in ("input_ids", "attention_mask", "token_type_ids"))
def logits(d):
    m, info = BertForQuestionAnswering.from_pretrained(d, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    assert not bad, f"{d}: {bad}"
    m.eval()
    with torch.no_grad():
        o = m(input_ids=ids, attention_mask=am, token_type_ids=tt)
    return o.start_logits.numpy(), o.end_logits.numpy()
hs, he = logits(hf_dir)
os_, oe = logits(ours_dir)
ours = json.load(open(ours_json))
d_hf_ours_in_hf = max(np.abs(hs - os_).max(), np.abs(he - oe).max())
d_ours = 0.0
for i, r in enumerate(ours):
    n = len(r["start"])
    d_ours = max(d_ours, np.abs(np.array(r["start"]) - hs[i, :n]).max(), np.abs(np.array(r["end"]) - he[i, :n]).max())
print(json.dumps({"features": len(ours), "transformers_loads_ours_no_missing_or_unexpected": True,
                  "max_diff_transformers(ours_saved)_vs_transformers(hf_saved)": float(d_hf_ours_in_hf),
                  "max_diff_candle(hf_saved)_vs_transformers(hf_saved)": float(d_ours)}))
assert d_hf_ours_in_hf < 1e-4 and d_ours < 1e-4
PY
echo "round trip OK"
