#!/usr/bin/env bash
# The checking tools over the code: ASan+UBSan on the whole unit suite (and the PyTorch dump and
# TCP tests), ThreadSanitizer on everything that runs threads, valgrind memcheck on a short
# pipeline training run, and libFuzzer on each target for FUZZ_SECONDS (default 60) under
# ASan+UBSan. Each is one check; its log is printed only when it fails.
set -u
pass=0 fail=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
step() { # name, make target and arguments
  local name=$1; shift
  if make -s "$@" > "$log" 2>&1; then echo "OK     $name"; pass=$((pass + 1));
  else tail -n 60 "$log"; echo "FAILED $name"; fail=$((fail + 1)); fi
}
step "ASan+UBSan: unit suite, torch dump, TCP tests" sanitize
step "ThreadSanitizer: runtime, transports, pool, TCP" tsan
step "valgrind memcheck: a 2-stage training run, no errors, no leaks" valgrind
step "libFuzzer: frame decoder, safetensors loader, stage receive path, ${FUZZ_SECONDS:-60} s each" fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
grep -E '^(stat::number_of_executed_units|Done [0-9]+ runs)' "$log" | sed 's/^/       /'
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
