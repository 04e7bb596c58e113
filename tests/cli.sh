#!/usr/bin/env bash
# CLI tests of examples/train (and train_mpi, minimal) on synthetic text with a tiny model; no
# network beyond loopback. Usage: tests/cli.sh BUILD_DIR. Ends with "N passed, M failed".
set -u
build=${1:-build}
train="$build/train"
dir=$(mktemp -d)
trap 'rm -rf "$dir"; kill $(jobs -p) 2>/dev/null' EXIT
passed=0
failed=0
ok() { echo "OK     $1"; passed=$((passed + 1)); }
bad() { echo "FAILED $1"; failed=$((failed + 1)); }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

# synthetic text: numbered sentences from a small vocabulary, about 60 kB
awk 'BEGIN { split("the a stage link sends small tensors over slow wires and learns every step", w, " ");
             for (i = 0; i < 1500; i++) { s = ""; for (j = 0; j < 7; j++) s = s w[1 + (i * 7 + j * j) % 14] " ";
             printf "%d: %s.\n", i, s } }' > "$dir/text.txt"

tiny="--data $dir/text.txt --d 32 --layers 4 --heads 2 --seq 16 --batch 4 --micro 2 --ratio 8 --eval-every 5 --eval-rows 4 --sample 20 --seed 7"
result_re='^result: steps=[0-9]+ train_loss=[0-9.]+ val_bpb=[0-9.]+ tokens_per_s=[0-9.]+ wire_bytes_fwd=[0-9]+ wire_bytes_bwd=[0-9]+ wire_ratio=[0-9.]+$'
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" "$1"; }

# ---- threads mode: runs, prints the contract line last, counts the wire right
"$train" $tiny --stages 2 --steps 10 --log "$dir/log.csv" --plot "$dir/plot.svg" > "$dir/t2.out" 2> "$dir/t2.err"
check "threads: exit 0" "[ $? = 0 ]"
check "threads: last line is the result line" "tail -n 1 '$dir/t2.out' | grep -Eq '$result_re'"
tail -n 1 "$dir/t2.out" > "$dir/t2.res"
# 10 steps x 2 micro x 1 boundary, f32, r = 4, 2 rows x 16 tokens: 40 + 4*32*4 bytes per frame
check "threads: wire bytes = frames x (header + payload)" "[ '$(field "$dir/t2.res" wire_bytes_fwd)' = $((20 * (40 + 512))) ]"
check "threads: wire ratio vs r = d f32" "[ '$(field "$dir/t2.res" wire_ratio)' = $(awk 'BEGIN { printf "%.3f", (40 + 4*32*32) / (40 + 512) }') ]"
check "threads: loss is finite and falls" "awk -F, 'NR == 2 { a = \$3 } NR > 2 && \$3 != \"\" { b = \$3 } END { exit !(a > b && b > 0) }' '$dir/log.csv'"
check "threads: val bpb in the log" "grep -Eq '^5,[0-9]+,,[0-9.]+,' '$dir/log.csv'"
check "threads: SVG plot written" "grep -q '</svg>' '$dir/plot.svg' && grep -q polyline '$dir/plot.svg'"
check "threads: sample printed" "grep -q '^sample:' '$dir/t2.out'"
"$train" $tiny --stages 4 --steps 4 --wire bf16 --wire-bwd i8 --quiet > "$dir/t4.out" 2>&1
check "threads: 4 stages, bf16 forward, i8 back" "[ $? = 0 ] && grep -Eq '$result_re' '$dir/t4.out'"
"$train" $tiny --stages 2 --steps 3 --bandwidth-mbps 2 --latency-ms 5 --quiet > "$dir/ts.out" 2>&1
check "threads: shaped link gives the same numbers" "[ $? = 0 ] && [ '$(field "$dir/ts.out" train_loss)' = '$("$train" $tiny --stages 2 --steps 3 --quiet | field /dev/stdin train_loss)' ]"

# --tokens-bin: raw bytes, batches in file order
"$train" --tokens-bin "$dir/text.txt" --d 32 --layers 2 --heads 2 --seq 16 --batch 4 --micro 2 --stages 2 --steps 3 --sample 0 --eval-every 0 --quiet > "$dir/tb.out" 2>&1
check "tokens-bin: runs" "grep -Eq '$result_re' '$dir/tb.out'"

# ---- one process per stage over TCP on loopback: bit-identical to threads (f32 wire)
tcp_run() { # S extra-flags...; on other ports again when a listening port was taken (a port
  # is chosen at random, and another run on this machine may hold it)
  local S=$1; shift
  local try rc
  for try in 1 2 3; do
    local base=$((20000 + ($$ * 7 + RANDOM) % 12000)) peers="" s pids=() # below the ephemeral ports
    for ((s = 0; s < S; s++)); do peers="$peers${peers:+,}127.0.0.1:$((base + s))"; done
    for ((s = S - 1; s >= 0; s--)); do
      "$train" $tiny --stages "$S" --stage $s --listen "127.0.0.1:$((base + s))" --peers "$peers" --timeout-ms 20000 "$@" \
        > "$dir/tcp$S.$s.out" 2> "$dir/tcp$S.$s.err" &
      pids+=($!)
    done
    rc=0
    local p
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    [ $rc = 0 ] && return 0
    grep -q 'cannot reach every peer.*transport' "$dir"/tcp$S.*.err || return $rc
  done
  return $rc
}
for S in 2 3; do
  "$train" $tiny --stages $S --steps 6 --quiet > "$dir/ref$S.out" 2>&1
  tcp_run $S --steps 6 --quiet
  check "tcp: $S processes exit 0" "[ $? = 0 ]"
  check "tcp: $S processes, result line equals threads mode" \
    "[ \"\$(grep -E '$result_re' '$dir/tcp$S.0.out' | sed 's/tokens_per_s=[^ ]*//')\" = \"\$(sed 's/tokens_per_s=[^ ]*//' '$dir/ref$S.out')\" ]"
done
# ---- the async schedule: steps overlap; evals, saves and the end flush; TCP equals threads
"$train" $tiny --stages 3 --steps 10 --schedule async --log "$dir/as.csv" > "$dir/as3.out" 2>&1
check "async: 3 stages, exit 0, result line last" "[ $? = 0 ] && tail -n 1 '$dir/as3.out' | grep -Eq '$result_re'"
check "async: not the exact schedule's numbers" "[ '$(field "$dir/as3.out" train_loss)' != '$("$train" $tiny --stages 3 --steps 10 --quiet | field /dev/stdin train_loss)' ]"
check "async: every frame counted (10 steps x 2 micro x 2 boundaries, as exact)" "[ '$(field "$dir/as3.out" wire_bytes_bwd)' = $((40 * (40 + 512))) ]"
check "async: train loss logged two steps behind, then the last step's" "[ \"\$(cut -d, -f1 '$dir/as.csv' | sed -n '2p')\" = 1 ] && grep -q '^10,' '$dir/as.csv'"
"$train" $tiny --stages 3 --steps 6 --schedule async --act-budget-mb 64 --quiet > "$dir/asref3.out" 2>&1
tcp_run 3 --steps 6 --schedule async --act-budget-mb 64 --quiet
check "async tcp: 3 processes, deepest in flight, result line equals threads mode" \
  "[ \"\$(grep -E '$result_re' '$dir/tcp3.0.out' | sed 's/tokens_per_s=[^ ]*//')\" = \"\$(sed 's/tokens_per_s=[^ ]*//' '$dir/asref3.out')\" ]"

# frames far larger than the socket buffers, r = d both ways: 1F1B has both neighbours sending at
# once, which deadlocks a transport whose send waits for the peer's recv
big="--data $dir/text.txt --d 64 --layers 2 --heads 2 --seq 512 --batch 8 --micro 2 --r 64 --eval-every 0 --eval-rows 2 --sample 0 --seed 3"
"$train" $big --stages 2 --steps 2 --quiet > "$dir/bigref.out" 2>&1
tiny_save=$tiny; tiny=$big
tcp_run 2 --steps 2 --quiet
check "tcp: 1 MB frames both ways, no deadlock, equal to threads" "[ \"\$(sed 's/tokens_per_s=[^ ]*//' '$dir/tcp2.0.out')\" = \"\$(sed 's/tokens_per_s=[^ ]*//' '$dir/bigref.out')\" ]"
tiny=$tiny_save
# a stage killed mid-run: the other reports the lost peer and exits 1, well within its timeout
base=$((20000 + ($$ * 5 + RANDOM) % 12000))
"$train" $tiny --stages 2 --stage 1 --listen 127.0.0.1:$((base + 1)) --peers 127.0.0.1:$base,127.0.0.1:$((base + 1)) --steps 100000 --eval-every 0 --quiet > /dev/null 2>&1 &
victim=$!
"$train" $tiny --stages 2 --stage 0 --listen 127.0.0.1:$base --peers 127.0.0.1:$base,127.0.0.1:$((base + 1)) --steps 100000 --eval-every 0 --timeout-ms 20000 --quiet --log "$dir/kill.csv" > "$dir/kill.out" 2> "$dir/kill.err" &
survivor=$!
# kill once training is under way (a few steps logged), however slow the machine is
for ((i = 0; i < 400; i++)); do [ -s "$dir/kill.csv" ] && [ "$(wc -l < "$dir/kill.csv")" -ge 4 ] && break; sleep 0.05; done
start=$(date +%s)
kill -9 $victim; wait $victim 2>/dev/null; wait $survivor; rc=$?
check "tcp: peer killed -> exit 1 with the reason, no hang" "[ $rc = 1 ] && [ \$((\$(date +%s) - start)) -le 15 ] && grep -Eq 'closed|gone' '$dir/kill.err'"
# a peer that never comes: a clear error within the deadline, not a hang
start=$(date +%s)
"$train" $tiny --stages 2 --stage 0 --listen 127.0.0.1:$((20000 + $$ % 12000)) --peers 127.0.0.1:$((20000 + $$ % 12000)),127.0.0.1:9 --timeout-ms 1500 --steps 2 > "$dir/lone.out" 2> "$dir/lone.err"
rc=$?
check "tcp: missing peer -> exit 1 with a message, within the timeout" "[ $rc = 1 ] && [ \$((\$(date +%s) - start)) -le 10 ] && grep -q 'stage 0' '$dir/lone.err'"

# stages reading different data fail each other's handshake with "a different job" at once, long
# before the 30 s timeout (before version 4 of the handshake both waited it out as strangers)
head -c 40000 "$dir/text.txt" > "$dir/text3.txt"
base=$((21000 + ($$ * 7 + RANDOM) % 11000)); start=$(date +%s) # below the ephemeral ports (32768 on)
"$train" $tiny --stages 2 --stage 1 --listen 127.0.0.1:$((base + 1)) --peers 127.0.0.1:$base,127.0.0.1:$((base + 1)) --data "$dir/text3.txt" --timeout-ms 30000 --steps 2 --quiet > /dev/null 2> "$dir/dd1.err" &
other=$!
"$train" $tiny --stages 2 --stage 0 --listen 127.0.0.1:$base --peers 127.0.0.1:$base,127.0.0.1:$((base + 1)) --timeout-ms 30000 --steps 2 --quiet > /dev/null 2> "$dir/dd0.err"
rc0=$?; wait $other; rc1=$?
check "tcp: stages with different data -> both exit 1 at once, naming another job" "[ $rc0 = 1 ] && [ $rc1 = 1 ] && [ \$((\$(date +%s) - start)) -le 10 ] && grep -q 'different job' '$dir/dd0.err' && grep -q 'different job' '$dir/dd1.err'"

# ---- MPI, when mpirun is there
if command -v mpirun >/dev/null && [ -x "$build/train_mpi" ]; then
  mpirun --allow-run-as-root --oversubscribe -np 1 "$build/train_mpi" --check-transport > "$dir/mpic.out" 2>&1
  check "mpi: the adapter passes resbm_transport_check" "[ $? = 0 ] && grep -q '^transport check: OK' '$dir/mpic.out'"
  mpirun --allow-run-as-root --oversubscribe -np 3 "$build/train_mpi" $tiny --steps 6 --quiet > "$dir/mpi.out" 2> "$dir/mpi.err"
  check "mpi: 3 ranks exit 0" "[ $? = 0 ]"
  check "mpi: result line equals threads mode" \
    "[ \"\$(grep -E '$result_re' '$dir/mpi.out' | sed 's/tokens_per_s=[^ ]*//')\" = \"\$(sed 's/tokens_per_s=[^ ]*//' '$dir/ref3.out')\" ]"
  mpirun --allow-run-as-root --oversubscribe -np 3 "$build/train_mpi" $tiny --steps 6 --schedule async --act-budget-mb 64 --quiet > "$dir/mpia.out" 2> "$dir/mpia.err"
  check "mpi async: result line equals threads mode" \
    "[ \"\$(grep -E '$result_re' '$dir/mpia.out' | sed 's/tokens_per_s=[^ ]*//')\" = \"\$(sed 's/tokens_per_s=[^ ]*//' '$dir/asref3.out')\" ]"
  # ranks reading different data (another file, or a half-copied one) refuse to train together
  head -c 40000 "$dir/text.txt" > "$dir/text2.txt"
  mpirun --allow-run-as-root --oversubscribe -np 1 "$build/train_mpi" $tiny --stages 2 --steps 2 --quiet : \
    -np 1 "$build/train_mpi" $tiny --data "$dir/text2.txt" --stages 2 --steps 2 --quiet > "$dir/mpid.out" 2> "$dir/mpid.err"
  check "mpi: ranks with different data exit non-zero, saying so" "[ $? != 0 ] && grep -q 'is not rank 0' '$dir/mpid.err'"
else
  echo "SKIPPED mpi (no mpirun or build/train_mpi)"
fi

# ---- resume: 8 steps == 4 steps + save + load + 4 steps, bit for bit (AdamW and Muon)
for opt in adamw muon; do
  "$train" $tiny --stages 2 --steps 8 --opt $opt --sample 0 --quiet --save "$dir/full.safetensors" > "$dir/full.out" 2>&1
  "$train" $tiny --stages 2 --steps 4 --schedule-steps 8 --opt $opt --sample 0 --quiet --save "$dir/half.safetensors" > /dev/null 2>&1
  "$train" $tiny --stages 2 --steps 8 --opt $opt --sample 0 --quiet --load "$dir/half.safetensors" --save "$dir/resumed.safetensors" > "$dir/resumed.out" 2>&1
  check "resume ($opt): checkpoint files identical" "cmp -s '$dir/full.safetensors' '$dir/resumed.safetensors'"
  check "resume ($opt): same final loss" "[ '$(field "$dir/full.out" train_loss)' = '$(field "$dir/resumed.out" train_loss)' ]"
done
# a checkpoint already past --steps is refused, not a silent run of no steps
"$train" $tiny --stages 2 --steps 3 --sample 0 --quiet --load "$dir/half.safetensors" > "$dir/past.out" 2> "$dir/past.err"
check "resume: a checkpoint past --steps -> exit 1, saying so" "[ $? = 1 ] && grep -q 'past --steps 3' '$dir/past.err'"
# an output never overwrites an input or another output
cp "$dir/text.txt" "$dir/clob.txt" # its own copy: a failure here spoils no other test's data
"$train" $tiny --data "$dir/clob.txt" --stages 2 --steps 2 --quiet --log "$dir/../$(basename "$dir")/clob.txt" > /dev/null 2> "$dir/clob.err"
check "cli: --log naming the --data file -> exit 2, the data untouched" "[ $? = 2 ] && cmp -s '$dir/text.txt' '$dir/clob.txt' && grep -q 'is the --data file' '$dir/clob.err'"
"$train" $tiny --stages 2 --steps 2 --quiet --log "$dir/same.out" --plot "$dir/./same.out" > /dev/null 2> "$dir/clob2.err"
check "cli: --log and --plot naming one file -> exit 2" "[ $? = 2 ] && grep -q 'both name' '$dir/clob2.err' && [ ! -e '$dir/same.out' ]"
# --ratio and --r both set r: one is refused, not silently the winner
"$train" $tiny --r 3 --stages 2 --steps 2 --quiet > /dev/null 2> "$dir/rr.err"
check "cli: --ratio beside --r -> exit 2" "[ $? = 2 ] && grep -q 'both set r' '$dir/rr.err'"
# a flag given twice counts at its last value (the README says so: scripts append overrides)
"$train" $tiny --stages 2 --steps 5 --seed 3 --steps 2 --quiet > "$dir/twice.out" 2> /dev/null
check "cli: a flag given twice counts at its last value" "[ $? = 0 ] && grep -q '^result: steps=2 ' '$dir/twice.out'"
# more kernel threads than cores: a note on stderr, and the same numbers as one thread
cores=$(getconf _NPROCESSORS_ONLN)
"$train" $tiny --stages 2 --steps 3 --sample 0 --quiet --threads $((cores < 2 ? 2 : cores > 1024 ? 1024 : cores)) > "$dir/th.out" 2> "$dir/th.err"
check "cli: --threads past the cores -> a note, the numbers of --threads 1" \
  "grep -q 'more than the $cores cores online' '$dir/th.err' && [ '$(field "$dir/th.out" val_bpb)' = \"\$("$train" $tiny --stages 2 --steps 3 --sample 0 --quiet --threads 1 2> '$dir/th1.err' | field /dev/stdin val_bpb)\" ] && [ ! -s '$dir/th1.err' ]"
# async: a save flushes, so 8 steps saving at 4 == 4 steps + save + load + 4 steps, bit for bit
"$train" $tiny --stages 3 --steps 8 --schedule async --sample 0 --quiet --save "$dir/afull.safetensors" --save-every 4 > "$dir/afull.out" 2>&1
"$train" $tiny --stages 3 --steps 4 --schedule-steps 8 --schedule async --sample 0 --quiet --save "$dir/ahalf.safetensors" > /dev/null 2>&1
"$train" $tiny --stages 3 --steps 8 --schedule async --sample 0 --quiet --load "$dir/ahalf.safetensors" --save "$dir/ares.safetensors" > "$dir/ares.out" 2>&1
check "async resume: checkpoint files identical" "[ -s '$dir/afull.safetensors' ] && cmp -s '$dir/afull.safetensors' '$dir/ares.safetensors'"
check "async resume: same final loss" "[ -n '$(field "$dir/afull.out" train_loss)' ] && [ '$(field "$dir/afull.out" train_loss)' = '$(field "$dir/ares.out" train_loss)' ]"
# one process per stage writes one file per stage, and resumes from them
tcp_run 2 --steps 4 --schedule-steps 8 --sample 0 --quiet --save "$dir/st.safetensors"
check "tcp: per-stage checkpoints written" "[ -s '$dir/st.stage0.safetensors' ] && [ -s '$dir/st.stage1.safetensors' ]"
tcp_run 2 --steps 8 --sample 0 --quiet --load "$dir/st.safetensors"
"$train" $tiny --stages 2 --steps 8 --sample 0 --quiet > "$dir/full2.out" 2>&1
check "tcp: resumed run equals the uninterrupted one" "[ '$(field "$dir/tcp2.0.out" train_loss)' = '$(field "$dir/full2.out" train_loss)' ]"

# ---- a crashed stage, checkpoints every 2 steps: kill -9 stage 1 mid-run; stages 0 and 2 report
# the lost peer and exit 1 within their timeout; restarting all three from the checkpoints gives
# final parameters bit-identical to an uninterrupted run (each stage keeps the previous generation,
# and the restart takes the newest step every stage has)
tcp_run 3 --steps 12 --sample 0 --quiet --save "$dir/unint.safetensors"
base=$((20000 + ($$ * 13 + RANDOM) % 12000)) peers=""
for s in 0 1 2; do peers="$peers${peers:+,}127.0.0.1:$((base + s))"; done
pids=()
for s in 2 1 0; do
  "$train" $tiny --stages 3 --stage $s --listen "127.0.0.1:$((base + s))" --peers "$peers" --steps 12 --sample 0 --quiet \
    --latency-ms 25 --timeout-ms 3000 --save "$dir/crash.safetensors" --save-every 2 > "$dir/crash.$s.out" 2> "$dir/crash.$s.err" &
  pids+=($!)
done
for ((i = 0; i < 600; i++)); do [ -e "$dir/crash.stage0.safetensors.prev" ] && break; sleep 0.05; done
start=$(date +%s)
kill -9 "${pids[1]}" 2>/dev/null; wait "${pids[1]}" 2>/dev/null
wait "${pids[0]}"; rc2=$?; wait "${pids[2]}"; rc0=$?
check "crash: stage 1 killed after 2 saves, before the end" "[ -e '$dir/crash.stage0.safetensors.prev' ] && ! grep -q '^result' '$dir/crash.0.out'"
check "crash: stages 0 and 2 exit 1 with the reason, within the timeout" \
  "[ $rc0 = 1 ] && [ $rc2 = 1 ] && [ \$((\$(date +%s) - start)) -le 15 ] && grep -Eqi 'closed|gone|timed out' '$dir/crash.0.err' && grep -Eqi 'closed|gone|timed out' '$dir/crash.2.err'"
tcp_run 3 --steps 12 --sample 0 --quiet --load "$dir/crash.safetensors" --save "$dir/restart.safetensors"
check "crash: the restart runs to the end" "[ $? = 0 ]"
check "crash: restarted final checkpoints equal the uninterrupted run's, byte for byte" \
  "cmp -s '$dir/unint.stage0.safetensors' '$dir/restart.stage0.safetensors' && cmp -s '$dir/unint.stage1.safetensors' '$dir/restart.stage1.safetensors' && cmp -s '$dir/unint.stage2.safetensors' '$dir/restart.stage2.safetensors'"
# checkpoints from different steps with no common generation: refused with the reason
cp "$dir/unint.stage1.safetensors" "$dir/mixed.stage1.safetensors"
tcp_run 3 --steps 4 --schedule-steps 12 --sample 0 --quiet --save "$dir/mixed4.safetensors"
for s in 0 2; do cp "$dir/mixed4.stage$s.safetensors" "$dir/mixed.stage$s.safetensors"; done
tcp_run 3 --steps 12 --sample 0 --quiet --load "$dir/mixed.safetensors"
check "crash: checkpoints at different steps are refused, not mixed" "[ $? != 0 ] && grep -q 'share no step' '$dir/tcp3.0.err'"

# ---- the run's secret (--secret-file): peers that know it train; a peer with another one is
# refused by the handshake, and both processes exit 1 within their timeout
printf 'correct horse battery staple' > "$dir/secret"
printf 'another secret' > "$dir/secret2"
tcp_run 2 --steps 2 --sample 0 --quiet --secret-file "$dir/secret"
check "tcp: peers with the run's secret train" "[ $? = 0 ] && grep -Eq '$result_re' '$dir/tcp2.0.out'"
sbase=$((20000 + ($$ * 11 + RANDOM) % 12000)); speers="127.0.0.1:$sbase,127.0.0.1:$((sbase + 1))"
start=$(date +%s)
"$train" $tiny --stages 2 --stage 1 --listen "127.0.0.1:$((sbase + 1))" --peers "$speers" --timeout-ms 3000 --steps 2 \
  --secret-file "$dir/secret" > /dev/null 2> "$dir/sec1.err" &
spid=$!
"$train" $tiny --stages 2 --stage 0 --listen "127.0.0.1:$sbase" --peers "$speers" --timeout-ms 3000 --steps 2 \
  --secret-file "$dir/secret2" > /dev/null 2> "$dir/sec0.err"
r0=$?
wait $spid
r1=$?
check "tcp: a peer with another secret is refused (both exit 1 within the timeout)" \
  "[ $r0 = 1 ] && [ $r1 = 1 ] && [ \$((\$(date +%s) - start)) -le 15 ]"
: > "$dir/empty.secret"
expect_fail_early() { "$train" "$@" > /dev/null 2> "$dir/fe.err"; echo $?; }
check "tcp: an empty secret file is refused" "[ \$(expect_fail_early $tiny --stages 2 --stage 0 --listen 127.0.0.1:1 --peers 127.0.0.1:1,127.0.0.1:2 --secret-file '$dir/empty.secret') = 2 ] && grep -q empty '$dir/fe.err'"

# ---- threads mode keeps the previous checkpoint generation, as each process does
"$train" $tiny --stages 2 --steps 4 --save-every 2 --sample 0 --quiet --save "$dir/gen.safetensors" > /dev/null 2>&1
check "threads: the previous checkpoint generation is kept" "[ -s '$dir/gen.safetensors' ] && [ -s '$dir/gen.safetensors.prev' ]"
cp "$dir/gen.safetensors" "$dir/gen.good"; head -c 500 "$dir/gen.good" > "$dir/gen.safetensors"
"$train" $tiny --stages 2 --steps 6 --sample 0 --quiet --load "$dir/gen.safetensors" > "$dir/gen.out" 2> "$dir/gen.err"
check "threads: an unreadable checkpoint falls back to its previous generation" "[ $? = 0 ] && grep -q 'previous generation' '$dir/gen.out'"

# ---- the timeout rule through the CLI: a slow shaped link with --link-mbps is not a dead peer
"$train" $tiny --stages 2 --steps 2 --sample 0 --bandwidth-mbps 0.05 --link-mbps 0.05 --timeout-ms 100 --quiet > "$dir/lm.out" 2>&1
check "threads: --link-mbps 0.05 with a 100 ms timeout trains" "[ $? = 0 ] && grep -Eq '$result_re' '$dir/lm.out'"

# ---- bad input: a clear message and a non-zero exit; a bad checkpoint is left as it was
expect_fail() { # name code pattern args...
  local name=$1 code=$2 pat=$3; shift 3
  "$train" "$@" > "$dir/f.out" 2> "$dir/f.err"
  local rc=$?
  if [ $rc = "$code" ] && grep -q -- "$pat" "$dir/f.err"; then ok "$name"; else bad "$name (exit $rc: $(head -c 200 "$dir/f.err"))"; fi
}
expect_fail "async: an unknown schedule is refused" 2 "exact or async" $tiny --stages 2 --steps 2 --schedule later
expect_fail "unknown flag" 2 "unknown flag --bogus" $tiny --bogus 1
expect_fail "bad number" 2 "--steps" $tiny --steps 1x
expect_fail "batch not a multiple of micro" 2 "not a multiple" $tiny --batch 5
expect_fail "no data" 2 "exactly one of" --steps 1
expect_fail "missing data file" 1 "cannot open" --data "$dir/nope.txt"
printf 'tiny' > "$dir/short.txt"
expect_fail "data too short" 1 "needs at least" --data "$dir/short.txt"
mkfifo "$dir/fifo"
expect_fail "a FIFO as data (no writer): refused, not a hang" 1 "not a regular file" --data "$dir/fifo"
expect_fail "bad wire" 2 "--wire" $tiny --wire f8
expect_fail "seed 0" 2 "--seed" $tiny --seed 0
expect_fail "bad --gemm" 2 "--gemm" $tiny --gemm f8
# opt-in bf16 GEMMs: a result where the build has AVX512_BF16, else a clear error naming bf16
"$train" $tiny --stages 2 --steps 4 --gemm bf16 > "$dir/bf.out" 2> "$dir/bf.err"
rc=$?
check "--gemm bf16: trains, or says the build lacks it" \
  "{ [ $rc = 0 ] && tail -n 1 '$dir/bf.out' | grep -Eq '$result_re' && grep -q 'bf16 GEMMs' '$dir/bf.out'; } || { [ $rc != 0 ] && grep -q 'bf16' '$dir/bf.err'; }"
"$train" $tiny --stages 2 --steps 0 > "$dir/zero.out" 2>&1
check "--steps 0: evaluates, says nothing was trained" "[ $? = 0 ] && grep -q 'train_loss=nan' '$dir/zero.out' && grep -q 'wire_ratio=nan' '$dir/zero.out'"
expect_fail "stage without peers" 2 "--listen" $tiny --stage 0
head -c 1000 "$dir/full.safetensors" > "$dir/trunc.safetensors"
cp "$dir/trunc.safetensors" "$dir/trunc.copy"
expect_fail "truncated checkpoint refused" 1 "cannot resume" $tiny --stages 2 --steps 2 --load "$dir/trunc.safetensors"
check "truncated checkpoint untouched" "cmp -s '$dir/trunc.safetensors' '$dir/trunc.copy'"
{ cat "$dir/full.safetensors"; printf 'trailing'; } > "$dir/over.safetensors"
expect_fail "oversized checkpoint refused" 1 "cannot resume" $tiny --stages 2 --steps 2 --opt muon --load "$dir/over.safetensors"
expect_fail "checkpoint of another shape refused" 1 "model shape differs" $tiny --d 64 --stages 2 --steps 2 --load "$dir/full.safetensors"
expect_fail "checkpoint of another optimizer refused" 1 "optimizer" $tiny --stages 2 --steps 2 --opt sgd --load "$dir/full.safetensors"
# a FIFO as a checkpoint: refused at once (the library opens checkpoints without blocking)
timeout 20 "$train" $tiny --stages 2 --steps 2 --load "$dir/fifo" > "$dir/ff.out" 2> "$dir/ff.err"
check "a FIFO as the checkpoint (no writer): refused, not a hang" "[ $? = 1 ] && grep -q 'cannot resume' '$dir/ff.err'"
# --save onto a directory: refused before training, the directory left where it is
mkdir -p "$dir/savedir/inner"
expect_fail "--save onto a directory refused" 2 "not a regular file" $tiny --stages 2 --steps 2 --save "$dir/savedir"
check "--save onto a directory: the directory untouched" "[ -d '$dir/savedir/inner' ] && [ ! -e '$dir/savedir.prev' ]"
expect_fail "a seed with a leading space refused (it would wrap)" 2 "--seed" $tiny --seed " -1"
expect_fail "a number with a leading space refused" 2 "--steps" $tiny --steps " 2"
expect_fail "a number with a plus refused" 2 "--steps" $tiny --steps +2
expect_fail "--sample above what is printed refused" 2 "--sample" $tiny --sample 5000
expect_fail "a file name longer than the buffers refused" 2 "file name" $tiny --save "$dir/$(head -c 4100 /dev/zero | tr '\0' x)"
if [ -w /dev/full ]; then # a full disk under the log: the run fails and says so
  expect_fail "--log on a full disk: exit 1 with the reason" 1 "cannot write" $tiny --stages 2 --steps 2 --sample 0 --log /dev/full
fi

# ---- PyTorch reads a checkpoint and reproduces the loss train printed
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  "$train" $tiny --stages 2 --steps 6 --sample 0 --quiet --save "$dir/pt.safetensors" > "$dir/pt.out" 2>&1
  out=$(/usr/bin/python3 tests/torch_ckpt.py "$dir/pt.safetensors" "$dir/text.txt" 4 "$(field "$dir/pt.out" val_bpb)" 2>&1)
  echo "$out" | grep -v '^[0-9]* passed'
  check "torch reads the checkpoint and reproduces val_bpb" "echo \"\$out\" | grep -q '^[0-9]* passed, 0 failed$'"
else
  echo "SKIPPED torch checkpoint read (no python3-torch)"
fi

# ---- examples/minimal: two processes over a socketpair
if [ -x "$build/minimal" ]; then
  "$build/minimal" > "$dir/min.out" 2>&1
  check "minimal: runs and exits 0" "[ $? = 0 ]"
fi

# ---- examples/gpt2: a host engine driven by resbm_stage, with train's flags and result line
if [ -x "$build/gpt2" ]; then
  train_save=$train; train="$build/gpt2"
  "$train" $tiny --stages 3 --steps 10 --log "$dir/g.csv" > "$dir/g3.out" 2>&1
  check "gpt2: 3 stages, exit 0, result line last" "[ $? = 0 ] && tail -n 1 '$dir/g3.out' | grep -Eq '$result_re'"
  check "gpt2: loss falls" "awk -F, 'NR == 2 { a = \$3 } NR > 2 && \$3 != \"\" { b = \$3 } END { exit !(a > b && b > 0) }' '$dir/g.csv'"
  check "gpt2: sample printed" "grep -q '^sample:' '$dir/g3.out'"
  check "gpt2: 2 boundaries x 10 steps x 2 micro at r = 4, f32" "[ '$(field "$dir/g3.out" wire_bytes_fwd)' = $((2 * 20 * (40 + 512))) ]"
  "$train" $tiny --stages 1 --steps 3 --opt muon --quiet > "$dir/g1.out" 2>&1
  check "gpt2: 1 stage (tied head), muon" "[ $? = 0 ] && grep -Eq '^result: steps=3 ' '$dir/g1.out'"
  "$train" $tiny --stages 2 --steps 4 --wire bf16 --wire-bwd i8 --quiet > "$dir/g2w.out" 2>&1
  check "gpt2: bf16 forward, i8 back" "[ $? = 0 ] && grep -Eq '$result_re' '$dir/g2w.out'"
  "$train" $tiny --stages 2 --steps 6 --quiet > "$dir/gref2.out" 2>&1
  tcp_run 2 --steps 6 --quiet
  check "gpt2 tcp: 2 processes, result line equals threads mode" \
    "[ \"\$(grep -E '$result_re' '$dir/tcp2.0.out' | sed 's/tokens_per_s=[^ ]*//')\" = \"\$(sed 's/tokens_per_s=[^ ]*//' '$dir/gref2.out')\" ]"
  for opt in adamw muon; do
    "$train" $tiny --stages 3 --steps 8 --opt $opt --sample 0 --quiet --save "$dir/gfull.safetensors" > "$dir/gfull.out" 2>&1
    "$train" $tiny --stages 3 --steps 4 --schedule-steps 8 --opt $opt --sample 0 --quiet --save "$dir/ghalf.safetensors" > /dev/null 2>&1
    "$train" $tiny --stages 3 --steps 8 --opt $opt --sample 0 --quiet --load "$dir/ghalf.safetensors" --save "$dir/gres.safetensors" > "$dir/gres.out" 2>&1
    check "gpt2 resume ($opt): checkpoint files identical" "cmp -s '$dir/gfull.safetensors' '$dir/gres.safetensors'"
    check "gpt2 resume ($opt): same final loss" "[ -n '$(field "$dir/gfull.out" train_loss)' ] && [ '$(field "$dir/gfull.out" train_loss)' = '$(field "$dir/gres.out" train_loss)' ]"
  done
  expect_fail "gpt2: a built-in model's checkpoint refused" 1 "model shape differs" $tiny --stages 2 --steps 2 --load "$dir/full.safetensors"
  "$train" $tiny --stages 3 --steps 6 --schedule async --quiet > "$dir/gas.out" 2>&1
  check "gpt2 async: 3 stages, exit 0" "[ $? = 0 ] && tail -n 1 '$dir/gas.out' | grep -Eq '$result_re'"
  tcp_run 3 --steps 6 --schedule async --quiet
  check "gpt2 async tcp: result line equals threads mode" \
    "[ \"\$(grep -E '$result_re' '$dir/tcp3.0.out' | sed 's/tokens_per_s=[^ ]*//')\" = \"\$(sed 's/tokens_per_s=[^ ]*//' '$dir/gas.out')\" ]"
  train=$train_save
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
