#!/usr/bin/env bash
# config_stamp.sh CONFIG.yaml DIR SECTION...: for each top-level SECTION of the pipeline YAML,
# keeps DIR/SECTION.sha256 holding the sha256 of that section's text (comments, blank lines
# and trailing spaces ignored) and rewrites it only when the text changed. Prints the stamp
# paths. The Makefile makes each stage depend on the stamps of the sections it reads, so
# editing `train:` retrains without redoing ingest or features, and reverting an edit reruns
# too (the stamp holds the hash, not just a time).
set -euo pipefail
config=$1 dir=$2; shift 2
mkdir -p "$dir"
for section in "$@"; do
  sha=$(awk -v s="$section" '
      { sub(/[[:space:]]+#.*$/, ""); sub(/^#.*$/, ""); sub(/[[:space:]]+$/, "") }
      /^[^[:space:]]/ { inside = ($0 ~ "^" s ":") }
      inside && NF' "$config" | sha256sum | cut -d' ' -f1)
  stamp=$dir/$section.sha256
  if [ "$(cat "$stamp" 2>/dev/null)" != "$sha" ]; then
    tmp=$(mktemp "$stamp.XXXXXX")
    echo "$sha" > "$tmp"
    mv "$tmp" "$stamp"
  fi
  echo "$stamp"
done
