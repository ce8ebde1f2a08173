#!/usr/bin/env bash
# timed.sh TIMINGS.tsv STAGE -- COMMAND...: runs COMMAND and records its wall time as
# "STAGE<TAB>seconds" in TIMINGS.tsv (replacing that stage's earlier line). The exit status
# is the command's; a failed command records nothing.
set -uo pipefail
file=$1 stage=$2; shift 2
[ "${1:-}" = -- ] && shift
t0=$(date +%s.%N)
"$@" || exit $?
t1=$(date +%s.%N)
mkdir -p "$(dirname "$file")"
record() {
  tmp=$(mktemp "$file.XXXXXX")
  { [ -f "$file" ] && awk -F'\t' -v s="$stage" '$1 != s' "$file"; printf '%s\t%.2f\n' "$stage" "$(echo "$t0 $t1" | awk '{print $2 - $1}')"; } > "$tmp"
  mv "$tmp" "$file"
}
# make -j runs stages side by side: serialise the read-modify-write.
if command -v flock >/dev/null; then
  exec 9>"$file.lock"; flock 9; record
else
  record
fi
