#!/usr/bin/env bash
# Pipeline throughput against link bandwidth: 4 stages as threads over the shaping transport (and
# one run as 4 TCP processes on loopback, shaped the same way), one-way latency 20 ms, bandwidths
# unlimited / 1000 / 100 / 80 / 10 / 1 Mbit/s, for the uncompressed f32 pipeline, ResBM 128x and
# ResBM 128x with an i8 wire. Prints a markdown table (tokens/s, fraction of the unlimited rate of
# the same row) and writes an SVG of tokens/s against bandwidth. Run it alone on the machine.
#
#   bash bench/pipeline.sh [--steps 20] [--out bench/pipeline] [--smoke]
#
# Model: d=256 L=8 H=4 f=688 S=4 T=128 batch 8 in 4 microbatches, AdamW, random windows.
set -euo pipefail
steps=20 out=bench/pipeline data=data/brown.txt latency=20 smoke=0
bws="0 1000 100 80 10 1"
while [ $# -gt 0 ]; do
  case $1 in
    --steps) steps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --smoke) steps=2; bws="0 10"; smoke=1; shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
[ -s "$data" ] || bash scripts/fetch_brown.sh "$data"
make -s build/train
mkdir -p "$out"
base="--data $data --d 256 --layers 8 --heads 4 --ff 688 --stages 4 --seq 128 --batch 8 --micro 4 --seed 1337 --eval-every 0 --eval-rows 8 --sample 0 --quiet --latency-ms $latency"
# name | flags
rows="f32|--r 256
128x|--ratio 128 --m 256
128x-i8|--ratio 128 --m 256 --wire i8"
: > "$out/results.txt"
run() { # name bw steps mode flags...
  local name=$1 bw=$2 n=$3 mode=$4; shift 4
  local line
  if [ "$mode" = threads ]; then
    line=$(./build/train $base --steps "$n" --bandwidth-mbps "$bw" "$@" | tail -n 1)
  else
    local port=$((42000 + RANDOM % 2000 * 4)) peers="" s pids=()
    peers="127.0.0.1:$port,127.0.0.1:$((port + 1)),127.0.0.1:$((port + 2)),127.0.0.1:$((port + 3))"
    for s in 3 2 1 0; do
      ./build/train $base --steps "$n" --bandwidth-mbps "$bw" "$@" --stage $s \
        --listen "127.0.0.1:$((port + s))" --peers "$peers" > "$out/tcp.$s.out" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    line=$(tail -n 1 "$out/tcp.0.out")
  fi
  case $line in result:*) ;; *) echo "$name $bw $mode failed: $line" >&2; exit 1 ;; esac
  local tps; tps=$(echo "$line" | tr ' ' '\n' | sed -n 's/^tokens_per_s=//p')
  echo "$name $mode $bw $n $tps" | tee -a "$out/results.txt" >&2
}
echo "$rows" | while IFS='|' read -r name flags; do
  for bw in $bws; do
    n=$steps
    # f32 at 1 Mbit/s moves ~1 MB per boundary per step each way (~8.5 s a step): fewer steps
    if [ "$name" = f32 ] && [ "$bw" = 1 ] && [ $smoke = 0 ]; then n=4; fi
    # shellcheck disable=SC2086
    run "$name" "$bw" "$n" threads $flags
  done
done
# shellcheck disable=SC2086
run 128x 80 "$steps" tcp --ratio 128 --m 256
# shellcheck disable=SC2086
run 128x 0 "$steps" tcp --ratio 128 --m 256
/usr/bin/python3 - "$out" <<'PY'
import os, sys
out = sys.argv[1]
rows = [l.split() for l in open(os.path.join(out, "results.txt")) if l.strip()]
tps = {(n, m, float(b)): float(t) for n, m, b, _, t in rows}
names = []
for n, m, _, _, _ in rows:
    if (n, m) not in names: names.append((n, m))
bws = sorted({float(b) for _, _, b, _, _ in rows}, key=lambda b: (b == 0, b), reverse=True)
label = lambda b: "unlimited" if b == 0 else "%g Mbit/s" % b
print("| row | transport | " + " | ".join(label(b) for b in bws) + " |")
print("|---|---|" + "--:|" * len(bws))
for n, m in names:
    full = tps.get((n, m, 0.0))
    cells = []
    for b in bws:
        t = tps.get((n, m, b))
        cells.append("-" if t is None else "%.0f (%.0f%%)" % (t, 100 * t / full) if full else "%.0f" % t)
    print("| %s | %s | %s |" % (n, m, " | ".join(cells)))
# SVG: tokens/s against bandwidth, log x; unlimited drawn at the right edge
W, H, L, R, T, B = 720, 420, 70, 150, 30, 50
finite = sorted(b for b in bws if b > 0)
if finite:
    import math
    lo, hi = math.log10(min(finite)), math.log10(max(finite)) + 1
    X = lambda b: L + (W - L - R) * ((hi if b == 0 else math.log10(b)) - lo) / (hi - lo)
    y1 = max(tps.values()) * 1.1
    Y = lambda t: H - B - (H - B - T) * t / y1
    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="18">training tokens/s against link bandwidth (4 stages, 20 ms latency, d=256)</text>' % L,
         '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, H - B, W - R, H - B),
         '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, T, L, H - B)]
    for b in bws:
        s.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>' % (X(b), H - B + 18, "unl." if b == 0 else "%g" % b))
    for i in range(5):
        t = y1 * i / 4
        s.append('<text x="4" y="%.1f">%.0f</text>' % (Y(t) + 4, t))
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    for k, (n, m) in enumerate(names):
        pts = sorted(((X(b), Y(tps[(n, m, b)])) for b in bws if (n, m, b) in tps))
        c = colors[k % len(colors)]
        dash = ' stroke-dasharray="5,4"' if m == "tcp" else ""
        s.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>' % (c, dash, " ".join("%.1f,%.1f" % p for p in pts)))
        for x, y in pts: s.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, c))
        s.append('<text x="%d" y="%d" fill="%s">%s (%s)</text>' % (W - R + 10, T + 16 * k + 10, c, n, m))
    s.append('<text x="%d" y="%d" text-anchor="middle">link bandwidth, Mbit/s (log)</text></svg>' % ((W + L - R) // 2, H - 12))
    open(os.path.join(out, "throughput.svg"), "w").write("\n".join(s) + "\n")
PY
