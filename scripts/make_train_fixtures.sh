#!/usr/bin/env bash
# Regenerates crates/qa-train/tests/fixtures/adamw2.ref.safetensors with the HF oracle venv
# (../shared/ref/README.md): the oracle's seeded QA checkpoint (all-MiniLM-L6-v2 + seed-0
# head), the first 8 tiny train features padded to 384, dropout off; loss, backward,
# clip_grad_norm_(1.0), torch AdamW as HF Trainer builds it (fused, betas 0.9/0.999, eps 1e-8,
# weight decay 0.01 except biases and LayerNorm weights, linear decay over 2 steps from 2e-5),
# two steps on the same batch. Full tensors would be 90 MB, so it stores, per parameter, up to
# 1024 evenly spaced elements (and for the word embeddings the rows of the batch's first 64
# distinct token ids) after step 1 and step 2, with their flat indices.
set -euo pipefail
cd "$(dirname "$0")/.."
ref=${REF_DIR:-../shared/ref}
py=${REF_PYTHON:-${REF_VENV:-$HOME/.cache/squad-qa-ref/venv}/bin/python}
export MINILM_DIR=${MINILM_DIR:-$PWD/data/models/all-MiniLM-L6-v2}
features=crates/qa-features/tests/fixtures/tiny.train.ref.parquet
out=crates/qa-train/tests/fixtures
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
"$py" "$ref/ref_qa_checkpoint.py" --out "$tmp/qa_ckpt" --seed 0 >/dev/null 2>&1
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$py" - "$tmp/qa_ckpt" "$features" "$out/adamw2.ref.safetensors" <<'PY'
import json, sys
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file
from transformers import BertForQuestionAnswering

torch.set_num_threads(2)
ckpt, features, out = sys.argv[1:4]
model = BertForQuestionAnswering.from_pretrained(ckpt, attn_implementation="eager")
model.eval()  # dropout off, autograd on
t = pq.read_table(features).slice(0, 8)
col = lambda n: torch.tensor(t.column(n).to_pylist(), dtype=torch.long)
ids, am, tt = col("input_ids"), col("attention_mask"), col("token_type_ids")
sp, ep = col("start_positions"), col("end_positions")
decay = [p for n, p in model.named_parameters() if n.endswith(".weight") and "LayerNorm" not in n]
no_decay = [p for n, p in model.named_parameters() if not (n.endswith(".weight") and "LayerNorm" not in n)]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=2e-5, betas=(0.9, 0.999), eps=1e-8, fused=True)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (2 - s) / 2))
names = [n for n, _ in model.named_parameters()]
params = dict(model.named_parameters())
def sample_idx(name, p):
    n = p.numel()
    idx = list(range(0, n, max(1, n // 1024)))[:1024]
    if name.endswith("word_embeddings.weight"):
        h = p.shape[1]
        rows = sorted(set(ids.flatten().tolist()))[:64]
        idx += [r * h + j for r in rows for j in range(h)]
    return torch.tensor(idx, dtype=torch.long)
idx = {n: sample_idx(n, params[n]) for n in names}
tensors, info = {}, {"losses": [], "grad_norms": [], "lrs": []}
for step in (1, 2):
    opt.zero_grad(set_to_none=True)
    outp = model(input_ids=ids, attention_mask=am, token_type_ids=tt, start_positions=sp, end_positions=ep)
    outp.loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    info["losses"].append(outp.loss.item()); info["grad_norms"].append(float(norm))
    info["lrs"].append(sched.get_last_lr()[0])
    opt.step(); sched.step()
    with torch.no_grad():
        for n in names:
            tensors[f"{n}/step{step}"] = params[n].detach().flatten()[idx[n]].clone()
for n in names:
    tensors[f"{n}/idx"] = idx[n]
save_file(tensors, out, metadata={"info": json.dumps(info)})
print(json.dumps(info))
PY
ls -la "$out"
