#!/usr/bin/env bash
# Pipeline throughput against one-way link latency: 4 stages as threads over the shaping transport
# (and 4 TCP processes on loopback, shaped the same way), unlimited bandwidth, latency 0 / 5 / 20 /
# 50 / 100 ms on every link, ResBM 128x, for batch 8 in 4 microbatches and 32 in 16, each with
# 1F1B's minimum depth in flight and with every microbatch in flight (--act-budget-mb), under the
# exact schedule and the async one (steps overlap; its last steps' drain, the flush, is in the
# time). Prints a markdown table (tokens/s, fraction of the same row at 0 ms, stage 0's memory:
# activations, and async's two more copies of the parameters) and writes an SVG of the fraction
# against latency. Run it alone on the machine.
#
#   bash bench/latency.sh [--out bench/latency] [--data FILE] [--smoke]
#
# Model: d=256 L=8 H=4 f=688 S=4 T=128, AdamW, random windows; steps per row: 24 at batch 8, 10 at 32.
set -euo pipefail
out=bench/latency data=data/brown.txt smoke=0
lats="0 5 20 50 100" s8=24 s32=10 tcp_lats="0 50"
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --smoke) smoke=1; lats="0 20"; s8=2; s32=2; tcp_lats="20"; shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
[ -s "$data" ] || bash scripts/fetch_brown.sh "$data"
make -s build/train
mkdir -p "$out"
base="--data $data --d 256 --layers 8 --heads 4 --ff 688 --stages 4 --seq 128 --ratio 128 --seed 1337 --eval-every 0 --eval-rows 8 --sample 0"
[ $smoke = 1 ] && base="--data $data --d 64 --layers 4 --heads 2 --stages 4 --seq 32 --ratio 32 --seed 1337 --eval-every 0 --eval-rows 4 --sample 0"
: > "$out/results.txt"
run() { # batch micro depth(1f1b|all) latency steps mode schedule
  local b=$1 mi=$2 depth=$3 lat=$4 n=$5 mode=$6 sched=$7 line mem
  local flags="$base --batch $b --micro $mi --steps $n --latency-ms $lat --schedule $sched"
  [ "$depth" = all ] && flags="$flags --act-budget-mb 100000"
  if [ "$mode" = threads ]; then
    # shellcheck disable=SC2086
    ./build/train $flags > "$out/run.out" 2>&1 || { cat "$out/run.out" >&2; exit 1; }
    line=$(tail -n 1 "$out/run.out")
    mem=$(sed -n 's/.*stage 0: [0-9]* in flight, [0-9.]* MiB each, \([0-9.]*\) MiB in all.*/\1/p' "$out/run.out")
  else
    local port=$((42000 + RANDOM % 2000 * 4)) peers="" s pids=()
    peers="127.0.0.1:$port,127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2)),127.0.0.1:$((port + 3))"
    for s in 3 2 1 0; do
      # shellcheck disable=SC2086
      ./build/train $flags --stage $s --listen "127.0.0.1:$((port + s))" --peers "$peers" > "$out/tcp.$s.out" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    line=$(tail -n 1 "$out/tcp.0.out")
    mem=$(sed -n 's/.*stage 0: [0-9]* in flight, [0-9.]* MiB each, \([0-9.]*\) MiB in all.*/\1/p' "$out/tcp.0.out")
  fi
  case $line in result:*) ;; *) echo "batch $b/$mi $depth $lat ms $mode $sched failed: $line" >&2; exit 1 ;; esac
  local tps; tps=$(echo "$line" | tr ' ' '\n' | sed -n 's/^tokens_per_s=//p')
  echo "$b/$mi $depth $mode $sched $lat $tps ${mem:-0}" | tee -a "$out/results.txt" >&2
}
for bm in "8 4 $s8" "32 16 $s32"; do
  set -- $bm
  for sched in exact async; do
    for depth in 1f1b all; do
      for lat in $lats; do run "$1" "$2" $depth "$lat" "$3" threads $sched; done
    done
  done
done
for sched in exact async; do
  for lat in $tcp_lats; do run 32 16 all "$lat" "$s32" tcp $sched; done
  [ $smoke = 1 ] || for lat in $tcp_lats; do run 32 16 1f1b "$lat" "$s32" tcp $sched; done
done
/usr/bin/python3 - "$out" <<'PY'
import os, sys
out = sys.argv[1]
rows = [l.split() for l in open(os.path.join(out, "results.txt")) if l.strip()]
tps = {(b, d, m, sc, float(l)): float(t) for b, d, m, sc, l, t, _ in rows}
mem = {(b, d, m, sc): float(x) for b, d, m, sc, _, _, x in rows}
names = []
for b, d, m, sc, _, _, _ in rows:
    if (b, d, m, sc) not in names: names.append((b, d, m, sc))
lats = sorted({float(l) for _, _, _, _, l, _, _ in rows})
print("| row: batch / micro | schedule | in flight | transport | stage 0 memory | " + " | ".join("%g ms" % l for l in lats) + " |")
print("|---|---|---|---|--:|" + "--:|" * len(lats))
for n in names:
    base = tps.get(n + (0.0,))
    cells = []
    for l in lats:
        t = tps.get(n + (l,))
        cells.append("-" if t is None else "%.0f (%.0f%%)" % (t, 100 * t / base) if base else "%.0f" % t)
    print("| %s | %s | %s | %s | %.0f MiB | %s |" % (n[0], n[3], "1F1B (S - s)" if n[1] == "1f1b" else "all", n[2], mem[n], " | ".join(cells)))
# SVG: fraction of the 0 ms rate against latency
W, H, L, R, T, B = 720, 420, 60, 200, 30, 50
lmax = max(lats) or 1.0
X = lambda l: L + (W - L - R) * l / lmax
Y = lambda f: H - B - (H - B - T) * f
s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
     '<rect width="100%" height="100%" fill="white"/>',
     '<text x="%d" y="18">throughput / its 0 ms rate against one-way latency (4 stages, 128x)</text>' % L,
     '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, H - B, W - R, H - B),
     '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, T, L, H - B)]
for l in lats: s.append('<text x="%.1f" y="%d" text-anchor="middle">%g</text>' % (X(l), H - B + 18, l))
for i in range(5): s.append('<text x="8" y="%.1f">%d%%</text>' % (Y(i / 4) + 4, 25 * i))
colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
for k, n in enumerate(names):
    base = tps.get(n + (0.0,))
    if not base: continue
    pts = [(X(l), Y(tps[n + (l,)] / base)) for l in lats if n + (l,) in tps]
    c = colors[k % len(colors)]
    dash = ' stroke-dasharray="5,4"' if n[2] == "tcp" else ' stroke-dasharray="2,2"' if n[3] == "async" else ""
    s.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>' % (c, dash, " ".join("%.1f,%.1f" % p for p in pts)))
    for x, y in pts: s.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, c))
    s.append('<text x="%d" y="%d" fill="%s">%s, %s, %s, %s</text>' % (W - R + 10, T + 16 * k + 10, c, n[0], n[3], "1F1B" if n[1] == "1f1b" else "all in flight", n[2]))
s.append('<text x="%d" y="%d" text-anchor="middle">one-way latency per link, ms</text></svg>' % ((W + L - R) // 2, H - 12))
open(os.path.join(out, "latency.svg"), "w").write("\n".join(s) + "\n")
PY
