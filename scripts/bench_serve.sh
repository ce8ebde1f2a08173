#!/usr/bin/env bash
# qa-serve over loopback HTTP next to PyTorch doing the same work without HTTP (called by
# bench.sh; runs alone too):
#   scripts/bench_serve.sh BIN OUT MODEL DEV_JSON_GZ [PYTHON]
# 1. Warm latency per question, one window (the Super Bowl question, ~170 tokens), 2 threads:
#    qa-serve p50/p99 over HTTP, qa-infer --jsonl per question, PyTorch per question.
# 2. Throughput on the first 1,000 dev questions with 1, 8 and 32 clients (qa-serve-load):
#    questions/s, p50/p99, errors, the server's peak RSS; PyTorch answering the same questions
#    in batches of 8 windows, each padded to its longest window.
# 3. Soak: BENCH_SOAK_REQUESTS (20000) requests at 16 clients; RSS after warm-up, after every
#    1,000 requests ($OUT/soak_rss.txt), at the end, the highest, and its trend.
set -euo pipefail
bin=$1 out=$2 model=$3 dev=$4 py=${5:-}
mkdir -p "$out"
threads=2
context="Super Bowl 50 was an American football game to determine the champion of the National Football League (NFL) for the 2015 season. The American Football Conference (AFC) champion Denver Broncos defeated the National Football Conference (NFC) champion Carolina Panthers 24–10 to earn their third Super Bowl title. The game was played on February 7, 2016, at Levi's Stadium in the San Francisco Bay Area at Santa Clara, California."
question="Which NFL team won Super Bowl 50?"
python3 - "$dev" "$out/dev1000.jsonl" <<'PY'
import gzip, json, sys
squad = json.load(gzip.open(sys.argv[1]))
with open(sys.argv[2], "w") as f:
    n = 0
    for article in squad["data"]:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                if n < 1000:
                    f.write(json.dumps({"id": qa["id"], "question": qa["question"], "context": p["context"]}) + "\n")
                    n += 1
PY
for i in $(seq 201); do
  printf '{"id": %d, "question": "%s", "context": "%s"}\n' "$i" "$question" "$context"
done > "$out/one-window.jsonl"
head -1 "$out/one-window.jsonl" > "$out/one-window-1.jsonl"

# The server on a free port (start_server [EXTRA...]); its address from its first log line.
start_server() {
  "$bin/qa-serve" --model "$model" --addr 127.0.0.1:0 --threads $threads "$@" 2>"$out/serve.log" &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  url=
  for _ in $(seq 600); do
    url=$(sed -n 's/^qa-serve: listening on //p' "$out/serve.log")
    [ -n "$url" ] && curl -sf "$url/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "$url/health" >/dev/null || { echo "bench_serve: the server did not come up: $(cat "$out/serve.log")" >&2; exit 1; }
}
start_server
load() { "$bin/qa-serve-load" --url "$url/" --questions "$1" --requests "$2" --concurrency "$3"; }
field() { python3 -c "import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print('' if v is None else round(v, 2))" "$1" "$2"; }
rss_kib() { sed -n "s/^$1:\s*\([0-9]*\) kB/\1/p" /proc/$server/status; }

load "$out/one-window.jsonl" 50 1 >/dev/null   # warm-up
one=$(load "$out/one-window.jsonl" 300 1)
serve_p50=$(field "$one" p50_ms) serve_p99=$(field "$one" p99_ms)

# qa-infer per question: (201 questions - 1 question) / 200, best of 3 each.
best() { local b=; for _ in 1 2 3; do local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); b=$(echo "$t0 $t1 $b" | awk '{t=$2-$1; print ($3==""||t<$3)?t:$3}'); done; echo "$b"; }
t1=$(RAYON_NUM_THREADS=$threads best "$bin/qa-infer" --model "$model" --jsonl "$out/one-window-1.jsonl")
t201=$(RAYON_NUM_THREADS=$threads best "$bin/qa-infer" --model "$model" --jsonl "$out/one-window.jsonl")
infer_ms=$(echo "$t1 $t201" | awk '{printf "%.2f", ($2 - $1) / 200 * 1000}')

declare -A qps p50 p99 errors
for c in 1 8 32; do
  r=$(load "$out/dev1000.jsonl" 1000 $c)
  qps[$c]=$(field "$r" questions_per_s) p50[$c]=$(field "$r" p50_ms) p99[$c]=$(field "$r" p99_ms) errors[$c]=$(field "$r" errors)
done
peak_mib=$(( $(rss_kib VmHWM) / 1024 ))
# The soak in parts of 1,000 requests, RSS read after each: the end and the highest against
# the RSS after the runs above (the warm-up), so a slow climb shows even if it ends low.
soak_n=${BENCH_SOAK_REQUESTS:-20000}
rss_warm=$(rss_kib VmRSS) soak_errors=0
rss_end=$rss_warm rss_high=$rss_warm
: >"$out/soak_rss.txt"
for ((sent = 0; sent < soak_n; sent += 1000)); do
  part=$(load "$out/dev1000.jsonl" $((soak_n - sent < 1000 ? soak_n - sent : 1000)) 16 || true)
  soak_errors=$((soak_errors + $(field "$part" errors 2>/dev/null || echo 1000)))
  rss_end=$(rss_kib VmRSS)
  rss_high=$((rss_end > rss_high ? rss_end : rss_high))
  echo "requests=$((sent + 1000 < soak_n ? sent + 1000 : soak_n)) rss_kib=$rss_end" >>"$out/soak_rss.txt"
done
growth=$(echo "$rss_warm $rss_end" | awk '{printf "%+.1f", ($2 - $1) / $1 * 100}')
growth_high=$(echo "$rss_warm $rss_high" | awk '{printf "%+.1f", ($2 - $1) / $1 * 100}')
# One reading moves with the batch in flight; a leak shows as a trend: the mean of the last
# quarter of the readings against the mean of the first quarter, over the warm-up RSS.
trend=$(sed 's/.*rss_kib=//' "$out/soak_rss.txt" | awk -v warm="$rss_warm" '
  { v[NR] = $1 } END { q = int((NR + 3) / 4); for (i = 1; i <= q; i++) { a += v[i]; b += v[NR - q + i] }
  printf "%+.1f", q ? (b - a) / q / warm * 100 : 0 }')
kill -TERM $server; wait $server || true; trap - EXIT

# bf16 GEMMs (--precision bf16) where the CPU has AVX512-BF16: latency and 8-client throughput.
bf16_p50= bf16_p99= bf16_infer_ms= bf16_qps=
if grep -q -w avx512_bf16 /proc/cpuinfo; then
  start_server --precision bf16
  load "$out/one-window.jsonl" 50 1 >/dev/null
  one=$(load "$out/one-window.jsonl" 300 1)
  bf16_p50=$(field "$one" p50_ms) bf16_p99=$(field "$one" p99_ms)
  r=$(load "$out/dev1000.jsonl" 1000 8); bf16_qps=$(field "$r" questions_per_s)
  kill -TERM $server; wait $server || true; trap - EXIT
  t1=$(RAYON_NUM_THREADS=$threads best "$bin/qa-infer" --model "$model" --precision bf16 --jsonl "$out/one-window-1.jsonl")
  t201=$(RAYON_NUM_THREADS=$threads best "$bin/qa-infer" --model "$model" --precision bf16 --jsonl "$out/one-window.jsonl")
  bf16_infer_ms=$(echo "$t1 $t201" | awk '{printf "%.2f", ($2 - $1) / 200 * 1000}')
fi

torch_p50= torch_p99= torch_qps= torch_rss=
if [ -n "$py" ] && [ -x "$py" ]; then
  cat > "$out/serve_torch.py" <<'PY'
# PyTorch doing qa-serve's work without HTTP: per-question latency on one question, and the
# 1,000 dev questions in batches of 8 windows (each padded to its longest), best span of at
# most 30 tokens inside the context per question, as qa-infer picks it.
import json, resource, sys, time, torch
from transformers import AutoTokenizer, BertForQuestionAnswering
torch.set_num_threads(int(sys.argv[4]))
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = BertForQuestionAnswering.from_pretrained(sys.argv[1]).eval()
def windows(q, c):
    enc = tok(q, c, truncation="only_second", max_length=384, stride=128,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    return [(enc["input_ids"][w], enc["token_type_ids"][w], enc["offset_mapping"][w], enc.sequence_ids(w))
            for w in range(len(enc["input_ids"]))]
def forward(ws):
    n = max(len(w[0]) for w in ws)
    ids = torch.zeros(len(ws), n, dtype=torch.long); types = torch.zeros_like(ids); mask = torch.zeros_like(ids)
    for k, w in enumerate(ws):
        ids[k, :len(w[0])] = torch.tensor(w[0]); types[k, :len(w[1])] = torch.tensor(w[1]); mask[k, :len(w[0])] = 1
    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
    return [(out.start_logits[k, :len(w[0])], out.end_logits[k, :len(w[0])]) for k, w in enumerate(ws)]
def best(c, ws, logits):
    top = (-1e9, "")
    for w, (s, e) in zip(ws, logits):
        ctx = torch.tensor([x == 1 for x in w[3]])
        scores = s[:, None] + e[None, :]
        ok = ctx[:, None] & ctx[None, :] & torch.ones_like(scores, dtype=torch.bool).triu().tril(29)
        scores = scores.masked_fill(~ok, -1e9)
        i, j = divmod(int(scores.argmax()), scores.shape[1])
        if float(scores[i, j]) > top[0]:
            top = (float(scores[i, j]), c[w[2][i][0]:w[2][j][1]])
    return top[1]
q, c = sys.argv[2], sys.argv[3]
times = []
for k in range(120):
    t = time.perf_counter(); ws = windows(q, c); best(c, ws, forward(ws)); times.append((time.perf_counter() - t) * 1000)
times = sorted(times[20:])
questions = [json.loads(l) for l in open(sys.argv[5])]
t = time.perf_counter()
pending = []  # (question index, window)
for i, x in enumerate(questions):
    pending += [(i, w) for w in windows(x["question"], x["context"])]
logits = []
for b in range(0, len(pending), 8):
    logits += forward([w for _, w in pending[b:b + 8]])
for i, x in enumerate(questions):
    mine = [k for k, (j, _) in enumerate(pending) if j == i]
    best(x["context"], [pending[k][1] for k in mine], [logits[k] for k in mine])
qps = len(questions) / (time.perf_counter() - t)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"p50_ms": times[len(times) // 2], "p99_ms": times[int(len(times) * 0.99)], "questions_per_s": qps, "peak_rss_mib": rss}))
PY
  if r=$(HF_HUB_OFFLINE=1 "$py" "$out/serve_torch.py" "$model" "$question" "$context" $threads "$out/dev1000.jsonl" 2>"$out/serve_torch.err"); then
    torch_p50=$(field "$r" p50_ms) torch_p99=$(field "$r" p99_ms) torch_qps=$(field "$r" questions_per_s) torch_rss=$(field "$r" peak_rss_mib)
  else
    echo "bench_serve: the PyTorch script failed (see $out/serve_torch.err)" >&2
  fi
fi
ratio() { [ -n "$1" ] && [ -n "$2" ] && echo "$1 $2" | awk '{printf "%.2fx", $1 / $2}'; }
{
  echo "| qa-serve ($(nproc) CPUs, $threads threads, MiniLM, loopback HTTP) | ours | PyTorch (no HTTP) | ours / PyTorch |"
  echo "|---|---|---|---|"
  echo "| one window, per question: p50 ms (qa-serve HTTP) | $serve_p50 | $torch_p50 | $(ratio "$serve_p50" "$torch_p50") |"
  echo "| one window, per question: p99 ms (qa-serve HTTP) | $serve_p99 | $torch_p99 | $(ratio "$serve_p99" "$torch_p99") |"
  echo "| one window, per question: qa-infer --jsonl ms | $infer_ms | $torch_p50 | $(ratio "$infer_ms" "$torch_p50") |"
  for c in 1 8 32; do
    echo "| 1,000 dev questions, $c clients: questions/s (p50 / p99 ms; errors) | ${qps[$c]} (${p50[$c]} / ${p99[$c]}; ${errors[$c]}) | $torch_qps (batches of 8 windows) | $(ratio "${qps[$c]}" "$torch_qps") |"
  done
  if [ -n "$bf16_p50" ]; then
    echo "| bf16 (--precision bf16) one window: p50 ms (qa-serve HTTP) vs PyTorch fp32 | $bf16_p50 | $torch_p50 | $(ratio "$bf16_p50" "$torch_p50") |"
    echo "| bf16 one window: p99 ms (qa-serve HTTP) vs PyTorch fp32 | $bf16_p99 | $torch_p99 | $(ratio "$bf16_p99" "$torch_p99") |"
    echo "| bf16 one window: qa-infer --jsonl ms vs PyTorch fp32 | $bf16_infer_ms | $torch_p50 | $(ratio "$bf16_infer_ms" "$torch_p50") |"
    echo "| bf16 1,000 dev questions, 8 clients: questions/s vs PyTorch fp32 batched | $bf16_qps | $torch_qps | $(ratio "$bf16_qps" "$torch_qps") |"
  fi
  echo "| peak RSS MiB (server after the runs above / PyTorch script) | $peak_mib | $torch_rss | |"
  # No soak row when none ran (BENCH_SOAK_REQUESTS=0): "+0.0%" would read as a measurement.
  if [ "$soak_n" -gt 0 ]; then
    echo "| soak: $soak_n requests at 16 clients: RSS after warm-up -> end (highest), MiB; errors | $((rss_warm / 1024)) -> $((rss_end / 1024)) (${growth}%; highest $((rss_high / 1024)), ${growth_high}%; trend, last vs first quarter: ${trend}%); $soak_errors | | |"
  fi
} | tee "$out/serve.md"
