#!/usr/bin/env bash
# The benchmark scripts in their seconds-long smoke modes, on a local text file (no network):
# they must run end to end and produce their tables and plots. No timing is asserted here.
set -u
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
check() { # name, condition (a command)
  local name=$1; shift
  if "$@"; then echo "OK     $name"; pass=$((pass + 1)); else echo "FAILED $name"; fail=$((fail + 1)); fi
}
rows_ok() { # file, expected number of table rows, every row's numbers positive and finite
  /usr/bin/python3 - "$1" "$2" <<'PY'
import math, re, sys
rows = [l for l in open(sys.argv[1]) if l.startswith("| ") and not l.startswith("| row")]
nums = [float(x) for l in rows for x in re.findall(r"(?<![\w.+-])\d+\.?\d*(?![\w.])", l)]
sys.exit(0 if len(rows) == int(sys.argv[2]) and nums and all(math.isfinite(x) and x >= 0 for x in nums) else 1)
PY
}

bash bench/compress.sh --smoke --data resbm.h --only uncompressed,128x,128x-i8 --out "$dir/c" > "$dir/c.md" 2> "$dir/c.err"
rc=$?
check "compress.sh runs" test $rc -eq 0
check "compress.sh prints three rows" rows_ok "$dir/c.md" 3
check "compress.sh gap of the uncompressed row is +0.0%" grep -q '^| uncompressed | 1.0x .* +0.0% |$' "$dir/c.md"
check "compress.sh draws the val curves" grep -q '<polyline' "$dir/c/val_curves.svg"

bash bench/compress.sh --smoke --data resbm.h --only uncompressed,128x --sweep 1e-3,3e-3 --out "$dir/s" > "$dir/s.md" 2> "$dir/s.err"
rc=$?
check "compress.sh --sweep runs each row at each learning rate" test $rc -eq 0 -a -s "$dir/s/128x@1e-3.out" -a -s "$dir/s/uncompressed@3e-3.out"
check "compress.sh --sweep prints the sweep, best in bold" grep -q '^| 128x | [*0-9.]* | [*0-9.]* |$' "$dir/s.md"
check "compress.sh --sweep takes each row at its best" grep -q '^| uncompressed@[0-9e.-]* | 1.0x .* +0.0% |$' "$dir/s.md"
bash bench/compress.sh --smoke --d 128 --data resbm.h --only uncompressed,128x@2e-3 --out "$dir/s128" > /dev/null 2>> "$dir/s.err"
/usr/bin/python3 bench/width.py "$dir/s128" "$dir/s" --svg "$dir/w.svg" > "$dir/w.md" 2>> "$dir/s.err"
check "width.py: a row per width, each at its best learning rate, and the SVG" \
  sh -c "grep -q '^| 128 | 6 | [0-9.]* (default) | [0-9.]* (2e-3), [+-][0-9.]*% |$' '$dir/w.md' && grep -q '^| 256 | 6 |' '$dir/w.md' && grep -q '<polyline' '$dir/w.svg'"

bash bench/compress.sh --smoke --data resbm.h --only uncompressed@5e-4,uncompressed-muon,128x-muon --out "$dir/s2" > /dev/null 2>> "$dir/s.err"
/usr/bin/python3 bench/width.py "$dir/s" "$dir/s2" > "$dir/w2.md" 2>> "$dir/s.err"
check "width.py merges folders of one width and measures a Muon row against the Muon baseline" \
  sh -c "[ \$(grep -c '^| 256 |' '$dir/w2.md') -eq 1 ] && grep -q '(default), [+-][0-9.]*% vs uncompressed-muon' '$dir/w2.md'"
# --sweeps, on written result lines (the numbers are ours, so the verdicts are known): a row's
# every rate with its val, the best in bold; bracketed only with a rate run on each side of it
mkdir -p "$dir/f"
printf 'd=64\nseed=1\nsteps=10\nschedule_steps=10\n' > "$dir/f/config.txt"
for run in uncompressed@1e-3:2.5 uncompressed@2e-3:2.4 uncompressed@4e-3:2.45 128x@1e-3:2.9 128x@2e-3:2.8; do
  echo "result: steps=10 val_bpb=${run#*:} wire_ratio=1.0" > "$dir/f/${run%:*}.out"
done
/usr/bin/python3 bench/width.py "$dir/f" --sweeps > "$dir/f.md" 2>> "$dir/s.err"
check "width.py --sweeps: every rate run, the best in bold, bracketed only when it is" \
  sh -c "grep -qx '| uncompressed | 1e-3: 2.5000, \*\*2e-3: 2.4000\*\*, 4e-3: 2.4500 | 2e-3 | yes |' '$dir/f.md' &&
         grep -qx '| 128x | 1e-3: 2.9000, \*\*2e-3: 2.8000\*\* | 2e-3 | no |' '$dir/f.md' &&
         grep -q '^| 64 | 10 | 2.4000 (2e-3) | 2.8000 (2e-3), +16.7% |$' '$dir/f.md'"
# rN-q4: i8 frames on a 4-bit grid; the table gives a packed 4-bit wire's factor (d = 256,
# r = 7: f32 frames of 40 + 4 x 256 x 256 bytes against 40 + 896 + 28 x 4), and the run differs
# from r7-i8's (the grid is coarser), with the same bytes measured
bash bench/compress.sh --smoke --data resbm.h --only r7-i8,r7-q4 --out "$dir/q" > "$dir/q.md" 2>> "$dir/s.err"
rc=$?
check "compress.sh rN-q4: the packed 4-bit factor, a run of its own on i8's bytes" \
  sh -c "[ $rc -eq 0 ] && grep -q '^| r7-q4 | 250.2x |' '$dir/q.md' && grep -q '^| r7-i8 | 134.9x |' '$dir/q.md' &&
         [ \"\$(sed 's/.*wire_bytes_fwd=//' '$dir/q/r7-q4.out' | tail -n 1)\" = \"\$(sed 's/.*wire_bytes_fwd=//' '$dir/q/r7-i8.out' | tail -n 1)\" ] &&
         ! cmp -s '$dir/q/r7-q4.csv' '$dir/q/r7-i8.csv'"
bash bench/pipeline.sh --smoke --data resbm.h --out "$dir/p" > "$dir/p.md" 2> "$dir/p.err"
rc=$?
check "pipeline.sh runs" test $rc -eq 0
check "pipeline.sh prints threads rows and the TCP row" rows_ok "$dir/p.md" 4
check "pipeline.sh TCP row" grep -q '^| 128x | tcp |' "$dir/p.md"
check "pipeline.sh draws throughput" grep -q '<polyline' "$dir/p/throughput.svg"
bash bench/latency.sh --smoke --data resbm.h --out "$dir/l" > "$dir/l.md" 2> "$dir/l.err"
rc=$?
check "latency.sh runs" test $rc -eq 0
check "latency.sh prints eight threads rows and two TCP rows (exact and async)" rows_ok "$dir/l.md" 10
check "latency.sh TCP rows" grep -q '^| 32/16 | exact | all | tcp |' "$dir/l.md" && grep -q '^| 32/16 | async | all | tcp |' "$dir/l.md"
check "latency.sh draws the fractions" grep -q '<polyline' "$dir/l/latency.svg"
make -s build/bench_profile > "$dir/prof.err" 2>&1 && build/bench_profile --threads 2 --steps 1 --d 64 --layers 2 > "$dir/prof.md" 2>> "$dir/prof.err"
rc=$?
check "bench_profile runs" test $rc -eq 0
prof_rows() { local r; for r in 'GEMM' 'attention backward' 'optimizer' 'outside the pool' '\*\*total'; do grep -q "^| $r" "$dir/prof.md" || return 1; done; }
check "bench_profile splits the step: GEMM, attention, optimizer, outside, total" prof_rows
check "bench_profile takes the GEMMs apart by shape (in the step, alone warm and cold)" sh -c "grep -q '^| NT [0-9]* [0-9]* [0-9]*[ +=]* | [0-9]' '$dir/prof.md' && grep -q '^| TN [0-9]* [0-9]* [0-9]*[ +=]* | [0-9]' '$dir/prof.md' && grep -q '^| \\*\\*all\\*\\* | | [0-9]' '$dir/prof.md'"
check "bench_profile times are not negative" sh -c "! grep -q '| -[0-9]' '$dir/prof.md'"
[ $fail -eq 0 ] || { cat "$dir"/*.err "$dir"/*.md; }
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
