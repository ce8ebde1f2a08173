#!/usr/bin/env bash
# Data-parallel training throughput (make bench with MPI; or on its own):
#   scripts/bench_mpi.sh BIN OUT FEATURES TRAIN_JSON MODEL PYTHON
# MiniLM, batch 8 per process, padded to 384 and dynamic: ours 1 process x 1 thread,
# 1 x 2 threads and 2 processes x 1 thread (mpirun), PyTorch 1 x 1 and DDP with 2
# processes (torchrun --nproc_per_node 2 ref_train.py --threads 1; gloo on the CPU), on the
# same features. Medians of BENCH_RUNS runs, alternating ours and PyTorch. Writes
# OUT/mpi-table.md. Scaling efficiency = throughput(2 x 1) / (2 x throughput(1 x 1)).
set -euo pipefail
bin=$1 out=$2 features=$3 train=$4 model=$5 py=${6:-}
runs=${BENCH_RUNS:-3}
dev=${DEV_JSON:-data/squad/dev-v1.1.json.gz}
mpirun=(mpirun --oversubscribe --bind-to none)
[ "$(id -u)" = 0 ] && mpirun+=(--allow-run-as-root)
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
features_per_s() { sed -n 's/.*"train_features_per_second":\([0-9.]*\).*/\1/p' | head -1; }
torch_features_per_s() { sed -n 's/.*"train_features_per_s": \([0-9.]*\).*/\1/p' | head -1; }

# ours PROCS THREADS MODE -> features/s (all processes together)
ours() {
  local procs=$1 threads=$2 mode=$3 launch=()
  local flag=; [ "$mode" = fixed ] && flag=--pad-to-max-length
  [ "$procs" -gt 1 ] && launch=("${mpirun[@]}" -np "$procs")
  "${launch[@]}" "$bin/qa-train" --features "$features" --model "$model" --output "$out/mpi-train" \
    --overwrite --threads "$threads" --quiet --save-steps 0 --no-group-by-length --batch-size 8 $flag 2>/dev/null |
    features_per_s
}
# torch PROCS MODE -> features/s (1 thread per process)
torch() {
  local procs=$1 mode=$2 launch=("$py")
  local flag=; [ "$mode" = dynamic ] && flag=--dynamic-padding
  [ "$procs" -gt 1 ] && launch=("$(dirname "$py")/torchrun" --nproc_per_node "$procs")
  MINILM_DIR=$PWD/$model "${launch[@]}" "${REF_DIR:-../shared/ref}/ref_train.py" --train-file "$train" \
    --dev-file "$dev" --train-limit 96 --eval-limit 8 --threads 1 --out "$out/mpi-ref-train" $flag 2>/dev/null |
    torch_features_per_s
}

cases="ours-1x1 ours-1x2 ours-2x1"
[ -n "$py" ] && [ -x "$py" ] && cases="$cases torch-1x1 torch-2x1"
for mode in fixed dynamic; do
  for c in $cases; do : > "$out/mpi-$c-$mode.txt"; done
  for _ in $(seq "$runs"); do
    for c in $cases; do
      procs=${c#*-}; procs=${procs%x*}; threads=${c##*x}
      case $c in
        ours-*) ours "$procs" "$threads" "$mode" >> "$out/mpi-$c-$mode.txt" ;;
        torch-*) torch "$procs" "$mode" >> "$out/mpi-$c-$mode.txt" || true ;;
      esac
    done
  done
done

m() { median < "$out/mpi-$1-$2.txt"; }
ratio() { [ -n "$1" ] && [ -n "$2" ] && echo "$1 $2" | awk '{ printf "%.2f", $1 / $2 }'; }
eff() { [ -n "$1" ] && [ -n "$2" ] && echo "$1 $2" | awk '{ printf "%.2f", $2 / (2 * $1) }'; }
table=$out/mpi-table.md
{
  echo "| MiniLM, batch 8 per process ($(nproc) CPUs; BENCH_RUNS=$runs; features/s) | 1 proc x 1 thread | 1 x 2 threads | 2 procs x 1 thread | efficiency 2x1 / (2 x 1x1) |"
  echo "|---|---|---|---|---|"
  for mode in fixed dynamic; do
    label=$([ $mode = fixed ] && echo "padded to 384" || echo "dynamic padding")
    echo "| ours, $label | $(m ours-1x1 $mode) | $(m ours-1x2 $mode) | $(m ours-2x1 $mode) | $(eff "$(m ours-1x1 $mode)" "$(m ours-2x1 $mode)") |"
    if [[ $cases == *torch* ]]; then
      echo "| PyTorch (DDP, gloo), $label | $(m torch-1x1 $mode) | | $(m torch-2x1 $mode) | $(eff "$(m torch-1x1 $mode)" "$(m torch-2x1 $mode)") |"
      echo "| ours / PyTorch, $label | $(ratio "$(m ours-1x1 $mode)" "$(m torch-1x1 $mode)")x | | $(ratio "$(m ours-2x1 $mode)" "$(m torch-2x1 $mode)")x | |"
    fi
  done
} > "$table"
cat "$table"
