#!/usr/bin/env bash
# Compression vs convergence on the Brown corpus: the same data order, seed and token budget for
# every row; one examples/train run per row. Prints a markdown table (wire factor measured, final
# train loss, val bits/byte, gap to the uncompressed row) and writes an SVG of the val curves.
#
#   bash bench/compress.sh [--steps 1500] [--schedule-steps N] [--only NAME[@LR][,NAME[@LR]...]]
#                          [--lr X] [--sweep X,Y,...] [--out bench/compress] [--d 256] [--seed 1337]
#                          [--data FILE] [--smoke]
#
# Learning rates: a row runs at the optimizer's default (AdamW 2e-3, Muon 0.02) unless --lr X
# sets one for every row, NAME@LR in --only sets one for that run (named NAME@LR), or
# --sweep X,Y,... runs every selected row at each of them (NAME@X, NAME@Y, ...). With several
# learning rates of a row, the tables take each row at its best (lowest val bits/byte) and a
# sweep table lists them all. The run's settings go to OUT/config.txt for bench/width.py.
#
# --schedule-steps N: the learning-rate schedule of an N-step run (a shorter run is then the
# first --steps of the full one, evaluations included).
#
# Model (the issue's reference point): d=256 L=8 H=4 f=688 S=4 T=128 batch 8, AdamW 2e-3
# (.9/.95, wd .1, 100 warm-up steps then cosine to 10%), clip 1.0, random windows. --d changes
# the width at a fixed head width of 64 (H = d/64, f = 8d/3 rounded up to 16); --seed changes the
# initialisation and the data order together. The bottleneck hidden width m is d unless a row
# says otherwise (m = 256 at d = 256, as in the reference).
#
# 128x-r7-i8 is the d = 256 recipe (r = 7 in i8, 134.9x) at any width; 128x-bytes-i8 spends
# 128x's bytes at any width the same way: r = d/128 f32 channels are 4d/128 bytes a token, and i8
# costs 17 bytes per 16 values (a 4-byte scale per block of 64), so r = 64d/2176 rounded down
# (7 at d = 256, 15 at 512, 22 at 768). rN, rN-i8 and rN-bf16 (in --only) are r = N channels
# in f32, i8 or bf16 at any width, to find the fewest bytes that stay within a given gap. rN-q4
# is an experiment: r channels on a 4-bit grid (values -7..7 a block, build/train_q4, built
# with RESBM_I8_LEVELS=7) carried in i8 frames, since the frame format has no 4-bit dtype; its
# wire factor in the tables is what a packed 4-bit dtype would send (bench/width.py wire_factor).
# Runs get a one-hour peer timeout, so a run paused (SIGSTOP) for a benchmark beside it goes on.
set -euo pipefail
steps=1500 out=bench/compress only="" data=data/brown.txt evalrows=128 evalevery=100 d=256 seed=1337 sched=0 lr="" sweep=""
while [ $# -gt 0 ]; do
  case $1 in
    --steps) steps=$2; shift 2 ;;
    --schedule-steps) sched=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --d) d=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --lr) lr=$2; shift 2 ;;
    --sweep) sweep=$2; shift 2 ;;
    --smoke) steps=6; evalrows=4; evalevery=3; shift ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
[ -s "$data" ] || bash scripts/fetch_brown.sh "$data"
make -s build/train
mkdir -p "$out"
printf 'd=%s\nseed=%s\nsteps=%s\nschedule_steps=%s\n' "$d" "$seed" "$steps" "$((sched > 0 ? sched : steps))" > "$out/config.txt"
base="--data $data --d $d --layers 8 --heads $((d / 64)) --stages 4 --seq 128 --batch 8 --micro 4 --steps $steps --schedule-steps $((sched > 0 ? sched : steps)) --seed $seed --eval-every $evalevery --eval-rows $evalrows --sample 0 --quiet --timeout-ms 3600000"
# name | flags
rows="uncompressed|--r $d
16x|--ratio 16 --m $d
64x|--ratio 64 --m $d
128x|--ratio 128 --m $d
128x-bf16|--ratio 128 --m $d --wire bf16
128x-i8|--ratio 128 --m $d --wire i8
128x-noid|--ratio 128 --m $d --no-identity
uncompressed-muon|--r $d --opt muon
128x-muon|--ratio 128 --m $d --opt muon
128x-r4-bf16|--r 4 --m $d --wire bf16
128x-r7-i8|--r 7 --m $d --wire i8
128x-r7-i8-muon|--r 7 --m $d --wire i8 --opt muon
128x-bytes-i8|--r $((d * 64 / 2176)) --m $d --wire i8
uncompressed-gemm-bf16|--r $d --gemm bf16
128x-m1024|--ratio 128 --m 1024
128x-m64|--ratio 128 --m 64
128x-blr4|--ratio 128 --m $d --bottleneck-lr-scale 4
128x-blr0.25|--ratio 128 --m $d --bottleneck-lr-scale 0.25
uncompressed-async|--r $d --schedule async
128x-async|--ratio 128 --m $d --schedule async
uncompressed-async-plain|--r $d --schedule async --async-predict 0
128x-async-plain|--ratio 128 --m $d --schedule async --async-predict 0
uncompressed-async-w200|--r $d --schedule async --async-warmup 200
128x-async-w200|--ratio 128 --m $d --schedule async --async-warmup 200
uncompressed-muon-async|--r $d --opt muon --schedule async
128x-muon-async|--ratio 128 --m $d --opt muon --schedule async
128x-muon-async-plain|--ratio 128 --m $d --opt muon --schedule async --async-predict 0"
for tok in $(echo "$only" | tr ',' ' '); do # every NAME of --only must be a row; rN[-i8|-bf16] is one
  name=${tok%%@*}
  if [[ $name =~ ^r([1-9][0-9]*)(-i8|-bf16|-q4)?$ ]] && ! echo "$rows" | cut -d'|' -f1 | grep -qx "$name"; then
    [ "${BASH_REMATCH[1]}" -le "$d" ] || { echo "row $name: r must be at most d = $d" >&2; exit 2; }
    wire=${BASH_REMATCH[2]#-}
    rows="$rows
$name|--r ${BASH_REMATCH[1]} --m $d${wire:+ --wire ${wire/q4/i8}}"
  fi
  echo "$rows" | cut -d'|' -f1 | grep -qx "$name" || { echo "unknown row $name" >&2; exit 2; }
done
echo "$rows" | while IFS='|' read -r name flags; do
  lrs="-"                                              # "-": the default (or --lr)
  if [ -n "$only" ]; then
    picks=$(echo ",$only," | tr ',' '\n' | grep -E "^$name(@|\$)") || continue
    at=$(echo "$picks" | { grep '@' || true; } | sed 's/.*@//' | tr '\n' ' ')
    [ -n "$at" ] && lrs=$at
  fi
  [ -n "$sweep" ] && lrs=$(echo "$sweep" | tr ',' ' ')
  for x in $lrs; do
    run=$name lrflag=""
    if [ "$x" != "-" ]; then run="$name@$x"; lrflag="--lr $x"; elif [ -n "$lr" ]; then lrflag="--lr $lr"; fi
    start=$(date +%s)
    bin=./build/train
    if [[ $name == *-q4 ]]; then bin=./build/train_q4; make -s "$bin"; fi
    $bin $base $flags $lrflag --log "$out/$run.csv" > "$out/$run.out" 2>&1 || { echo "$run failed:"; cat "$out/$run.out"; exit 1; }
    echo "$run: $(tail -n 1 "$out/$run.out") ($(( $(date +%s) - start )) s)" >&2
  done
done
# the table, from whatever rows have results
/usr/bin/python3 - "$out" "$d" <<'PY'
import csv, glob, os, re, sys
sys.path.insert(0, "bench")
from width import wire_factor  # as measured; rN-q4 rows: a packed 4-bit wire's
out, d = sys.argv[1], sys.argv[2]
res = {}
for f in sorted(glob.glob(os.path.join(out, "*.out"))):
    name = os.path.basename(f)[:-4]
    last = open(f).read().strip().splitlines()[-1]
    if last.startswith("result:"):
        res[name] = dict(kv.split("=") for kv in last.split()[1:])
order = ["uncompressed", "16x", "64x", "128x", "128x-bf16", "128x-i8", "128x-noid", "uncompressed-muon", "128x-muon",
         "128x-r4-bf16", "128x-r7-i8", "128x-r7-i8-muon", "128x-bytes-i8", "uncompressed-gemm-bf16", "128x-m1024", "128x-m64",
         "128x-blr4", "128x-blr0.25"]
# NAME@LR runs: each row at its best learning rate (lowest val bits/byte) in the main table
base = lambda n: n.split("@")[0]
runs = {}
for n in res:
    runs.setdefault(base(n), []).append(n)
best = {b: min(v, key=lambda n: float(res[n]["val_bpb"])) for b, v in runs.items()}
if any("@" in n for n in res):
    print("Learning-rate sweep (val bits/byte; the best of each row in bold):\n")
    lrs = sorted({n.split("@")[1] for n in res if "@" in n}, key=float)
    print("| row | " + " | ".join("lr " + x for x in lrs) + " |")
    print("|---|" + "--:|" * len(lrs))
    for b in [o for o in order if o in runs] + sorted(b for b in runs if b not in order):
        cells = []
        for x in lrs:
            n = b + "@" + x
            cells.append(("**%.4f**" if n == best[b] else "%.4f") % float(res[n]["val_bpb"]) if n in res else "-")
        print("| %s | %s |" % (b, " | ".join(cells)))
    print()
res = {(best[b] if "@" in best[b] else b): res[best[b]] for b in best}
names = [best[n] for n in order if n in best] + sorted(best[n] for n in best if n not in order)
ref = res.get(best.get("uncompressed", "uncompressed"))
print("| row | wire factor | final train loss | val bits/byte | gap to uncompressed |")
print("|---|--:|--:|--:|--:|")
for n in names:
    r = res[n]
    gap = "%+.1f%%" % (100 * (float(r["val_bpb"]) / float(ref["val_bpb"]) - 1)) if ref else "-"
    print("| %s | %.1fx | %.4f | %.4f | %s |" % (n, wire_factor(n, r, int(d)), float(r["train_loss"]), float(r["val_bpb"]), gap))
# SVG of the val curves
curves = {}
for n in names:
    pts = []
    with open(os.path.join(out, n + ".csv")) as f:
        for row in csv.DictReader(f):
            if row["val_bpb"]:
                pts.append((float(row["tokens"]), float(row["val_bpb"])))
    if pts:
        curves[n] = pts
if curves:
    W, H, L, R, T, B = 760, 440, 60, 170, 30, 50
    xs = [x for p in curves.values() for x, _ in p]; ys = [y for p in curves.values() for _, y in p]
    x1, y0, y1 = max(xs), min(ys), max(ys)
    y0, y1 = y0 - 0.02 * (y1 - y0 + 1e-9), y1 + 0.02 * (y1 - y0 + 1e-9)
    X = lambda x: L + (W - L - R) * x / x1
    Y = lambda y: H - B - (H - B - T) * (y - y0) / (y1 - y0)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#17becf", "#bcbd22", "#393b79", "#ad494a", "#637939", "#e7ba52", "#000000"]
    s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="18">val bits per byte against training tokens (Brown corpus, d=%s, S=4)</text>' % (L, d),
         '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, H - B, W - R, H - B),
         '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, T, L, H - B)]
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        s.append('<text x="4" y="%.1f">%.2f</text>' % (Y(y) + 4, y))
        x = x1 * i / 4
        s.append('<text x="%.1f" y="%d" text-anchor="middle">%.2gM</text>' % (X(x), H - B + 18, x / 1e6))
    for k, (n, pts) in enumerate(curves.items()):
        c = colors[k % len(colors)]
        s.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (c, " ".join("%.1f,%.1f" % (X(x), Y(y)) for x, y in pts)))
        s.append('<text x="%d" y="%d" fill="%s">%s</text>' % (W - R + 10, T + 16 * k + 10, c, n))
    s.append('<text x="%d" y="%d" text-anchor="middle">tokens</text></svg>' % ((W + L) // 2, H - 12))
    open(os.path.join(out, "val_curves.svg"), "w").write("\n".join(s) + "\n")
PY
