#!/usr/bin/env bash
# Runs every suite, prints their lines, and ends with the total "N passed, M failed".
# The PyTorch cross-check needs Debian's python3-torch for /usr/bin/python3 (CI installs it);
# without it that suite counts as one failure unless RESBM_SKIP_TORCH=1 is set.
set -u
build=${1:-build}
quick=${2:-}   # "quick": the unit suite and the TCP adapter only (make check)
passed=0
failed=0

tally() { # reads a suite's output, echoes it, adds its "N passed, M failed" line
  local out rc=$2
  out=$1
  printf '%s\n' "$out"
  local line
  line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
  if [ -z "$line" ]; then
    echo "FAILED suite $3: it ended without a summary line (exit $rc)"
    failed=$((failed + 1))
    return
  fi
  passed=$((passed + $(echo "$line" | cut -d' ' -f1)))
  failed=$((failed + $(echo "$line" | cut -d' ' -f3)))
  if [ "$rc" -ne 0 ] && [ "$(echo "$line" | cut -d' ' -f3)" = 0 ]; then
    echo "FAILED suite $3: exit $rc with no failed test"
    failed=$((failed + 1))
  fi
}

echo "== unit, gradient and determinism tests"
out=$("$build/test_resbm" 2>&1); tally "$out" $? unit
echo "== examples/gpt2.c as a host engine: pipeline == sequential, its declaration, checkpoints, job"
out=$("$build/test_gpt2" 2>&1); tally "$out" $? gpt2
if [ "$quick" = quick ]; then
  echo "== the TCP adapter (examples/tcp.h) on loopback"
  out=$("$build/test_tcp" 2>&1); tally "$out" $? tcp
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]; exit
fi

for v in avx2 scalar nothreads; do
  echo "== the same suite, $v kernels"
  out=$("$build/test_resbm_$v" 2>&1); tally "$out" $? "$v"
done
echo "== the bf16 tests with AMX left out (RESBM_NO_AMX: AVX512_BF16 dot products)"
out=$("$build/test_resbm_noamx" --filter bf16 2>&1); tally "$out" $? noamx
if [ -x "$build/test_resbm_cblas" ]; then
  echo "== gradient tests with GEMM through OpenBLAS (RESBM_USE_CBLAS)"
  out=$("$build/test_resbm_cblas" --filter grad 2>&1); tally "$out" $? cblas
fi

echo "== PyTorch autograd cross-check"
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  dir=$(mktemp -d)
  if "$build/torch_dump" "$dir" > "$dir/log" 2>&1; then
    out=$(/usr/bin/python3 tests/torch_check.py "$dir"/*.safetensors 2>&1); tally "$out" $? torch
  else
    cat "$dir/log"; echo "FAILED torch_dump"; failed=$((failed + 1))
  fi
  mkdir "$dir/gpt2"
  if "$build/test_gpt2" --dump "$dir/gpt2" > "$dir/log" 2>&1; then
    out=$(/usr/bin/python3 tests/torch_gpt2.py "$dir"/gpt2/*.safetensors 2>&1); tally "$out" $? torch-gpt2
  else
    cat "$dir/log"; echo "FAILED test_gpt2 --dump"; failed=$((failed + 1))
  fi
  rm -rf "$dir"
elif [ "${RESBM_SKIP_TORCH:-0}" = 1 ]; then
  echo "SKIPPED torch cross-check (RESBM_SKIP_TORCH=1)"
else
  echo "FAILED torch cross-check: /usr/bin/python3 cannot import torch (apt-get install python3-torch, or RESBM_SKIP_TORCH=1)"
  failed=$((failed + 1))
fi

echo "== the TCP adapter (examples/tcp.h) on loopback"
out=$("$build/test_tcp" 2>&1); tally "$out" $? tcp

echo "== examples/train CLI: threads, TCP, MPI, resume, bad input, checkpoint read by PyTorch"
out=$(bash tests/cli.sh "$build" 2>&1); tally "$out" $? cli

echo "== sanitizers, valgrind and fuzzing (tests/tools.sh)"
out=$(bash tests/tools.sh 2>&1); tally "$out" $? tools

echo "== benchmark scripts in their smoke modes (bench/compress.sh, bench/pipeline.sh)"
out=$(bash tests/bench_smoke.sh 2>&1); tally "$out" $? bench

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
