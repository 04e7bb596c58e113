#!/usr/bin/python3
"""width.py - the compression gap against model width, from bench/compress.sh output folders.

    /usr/bin/python3 bench/width.py DIR [DIR ...] [--sweeps] [--svg FILE]

Each DIR is one `bench/compress.sh --d D --out DIR` run (its config.txt gives d, steps, seed);
runs named NAME@LR (--sweep, or NAME@LR in --only) count as the same row at another learning
rate, and every row is taken at its best (lowest final val bits/byte), its gap measured against
the uncompressed run of the same optimizer and schedule where there is one (NAME-muon against
uncompressed-muon); folders of the same d (and steps and seed) are merged, so a sweep may span
several runs. Prints one table row per
width: the uncompressed baseline and each compressed row with its learning rate and its gap to
the baseline; --sweeps adds, per width, every learning rate each row was run at and its val;
--svg draws each row's gap against d.
"""
import glob
import os
import re
import sys


def wire_factor(run, result, d):
    """A run's wire factor: as measured, except for the rN-q4 rows (compress.sh), whose values
    went as i8 frames on a 4-bit grid (build/train_q4). For those, what a packed 4-bit dtype
    would send: half a byte a value, the same f32 scale per 64 and 40-byte header, for frames of
    compress.sh's 2 rows x 128 tokens x r values, against f32 frames at r = d. The measured i8
    factor must agree with that frame size, or the numbers are not what this assumes."""
    factor = float(result["wire_ratio"])
    m = re.match(r"r(\d+)-q4(@|$)", run)
    if not m:
        return factor
    n = 2 * 128 * int(m.group(1))
    scales, f32 = 4 * -(-n // 64), 40 + 4 * 2 * 128 * d
    if abs(f32 / (40 + n + scales) / factor - 1.0) > 1e-3:
        raise SystemExit("width.py: %s: measured wire factor %.3f is not i8 frames of %d values" % (run, factor, n))
    return f32 / (40 + -(-n // 2) + scales)


def merge_lrs(a, b):
    """A row's every learning rate run and its val ({lr: val}), from two sets of runs; a rate run
    twice keeps its better val, as the row's best does."""
    out = dict(a)
    for lr, val in b.items():
        out[lr] = min(val, out.get(lr, val))
    return out


def load(folder):
    cfg = dict(l.strip().split("=", 1) for l in open(os.path.join(folder, "config.txt")) if "=" in l)
    best = {}
    for f in sorted(glob.glob(os.path.join(folder, "*.out"))):
        run = os.path.basename(f)[:-4]
        lines = open(f).read().strip().splitlines()
        if not lines or not lines[-1].startswith("result:"):
            continue
        r = dict(kv.split("=", 1) for kv in lines[-1].split()[1:])
        row, _, lr = run.partition("@")
        if row == "128x-r7-i8" and int(cfg["d"]) * 64 // 2176 == 7:
            row = "128x-bytes-i8"  # at d = 256 they are the same run (r = 7 in i8, compress.sh)
        val = float(r["val_bpb"])
        lrs = merge_lrs(best[row][3] if row in best else {}, {lr or "default": val})
        if row not in best or val < best[row][0]:
            best[row] = (val, lr or "default", wire_factor(run, r, int(cfg["d"])), lrs)
        else:
            best[row] = best[row][:3] + (lrs,)
    return int(cfg["d"]), cfg, best


def baseline(row, best):
    """The uncompressed row a row is measured against: the one with the same optimizer and
    schedule suffix (128x-r7-i8-muon against uncompressed-muon, 128x-async against
    uncompressed-async) where that run exists, else the plain uncompressed row."""
    if not row.startswith("uncompressed"):
        for i, c in enumerate(row):
            if c == "-" and "uncompressed" + row[i:] in best:
                return "uncompressed" + row[i:]
    return "uncompressed"


def main(argv):
    svg = None
    sweeps = "--sweeps" in argv
    argv = [a for a in argv if a != "--sweeps"]
    if "--svg" in argv:
        i = argv.index("--svg")
        svg = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    merged = {}  # folders of one width (a sweep run in several sittings) are one row set
    for d, cfg, best in (load(f) for f in argv):
        if d not in merged:
            merged[d] = (d, cfg, best)
            continue
        _, mcfg, mbest = merged[d]
        for key in ("steps", "seed", "schedule_steps"):
            if mcfg.get(key) != cfg.get(key):
                print("width.py: two folders of d=%d differ in %s (%s, %s)" % (d, key, mcfg.get(key), cfg.get(key)),
                      file=sys.stderr)
                return 2
        for row, v in best.items():
            lrs = merge_lrs(mbest[row][3] if row in mbest else {}, v[3])
            mbest[row] = (v if row not in mbest or v[0] < mbest[row][0] else mbest[row])[:3] + (lrs,)
    widths = sorted(merged.values(), key=lambda t: t[0])
    rows = []
    for _, _, best in widths:
        rows += [r for r in best if r != "uncompressed" and r not in rows]
    print("| d | steps | uncompressed val (lr) | " + " | ".join("%s val (lr), gap" % r for r in rows) + " |")
    print("|--:|--:|--:|" + "--:|" * len(rows))
    gaps = {r: [] for r in rows}
    for d, cfg, best in widths:
        ref = best.get("uncompressed")
        cells = []
        for r in rows:
            if r not in best:
                cells.append("-")
                continue
            val, lr = best[r][:2]
            against = baseline(r, best)
            rv = best.get(against)
            gap = 100.0 * (val / rv[0] - 1.0) if rv else None
            if gap is not None:
                gaps[r].append((d, gap))
            cells.append("%.4f (%s), %s%s" % (val, lr, "%+.1f%%" % gap if gap is not None else "-",
                                             "" if against == "uncompressed" else " vs " + against))
        ref_cell = "%.4f (%s)" % (ref[0], ref[1]) if ref else "-"
        print("| %d | %s | %s | %s |" % (d, cfg.get("steps", "?"), ref_cell, " | ".join(cells)))
    # Per width, every row by wire factor (measured): which saves the most bytes within 3%? A row
    # run at one learning rate is untuned: within 3% it counts (tuning can only help it); outside,
    # it says "no, untuned", since its tuned gap is not known.
    for d, cfg, best in widths:
        print("\nd = %d: rows by bytes saved (wire factor measured against f32 at r = d; -q4: a packed\n4-bit wire's, the values measured in i8 frames)\n" % d)
        print("| row | wire factor | val (lr; lrs run) | gap (against) | within 3% |")
        print("|---|--:|--:|--:|:-:|")
        within = None
        for r in sorted(best, key=lambda r: -best[r][2]):
            val, lr, factor, lrs = best[r]
            against = baseline(r, best)
            rv = best.get(against)
            gap = round(100.0 * (val / rv[0] - 1.0), 1) if rv and r != against else None
            ok = gap is not None and gap <= 3.0
            if ok and within is None and factor > 1.0:
                within = r
            verdict = "-" if gap is None else "yes" if ok else "no" if len(lrs) > 1 else "no, untuned"
            print("| %s | %.1fx | %.4f (%s; %d) | %s | %s |" % (r, factor, val, lr, len(lrs),
                                                              "%+.1f%% (%s)" % (gap, against) if gap is not None else "-", verdict))
        print("\nthe most bytes-saving row within 3%%: %s" % ("%s (%.1fx)" % (within, best[within][2]) if within else "none"))
    if sweeps:
        # The sweep behind each cell: every learning rate run, the best in bold. "bracketed": a
        # rate below and one above the best were run, so the best is a minimum, not an edge.
        for d, cfg, best in widths:
            print("\nd = %d: every learning rate run (val bits/byte at step %s, the best in bold)\n" % (d, cfg.get("steps", "?")))
            print("| row | val at each learning rate | best | bracketed |")
            print("|---|---|--:|:-:|")
            for r in sorted(best, key=lambda r: (r != "uncompressed", -best[r][2])):
                val, lr, _, lrs = best[r]
                order = sorted(lrs, key=lambda x: float(x) if x != "default" else 0.0)
                cells = ", ".join(("**%s: %.4f**" if x == lr else "%s: %.4f") % (x, lrs[x]) for x in order)
                i = order.index(lr)
                edge = "default" in order or i in (0, len(order) - 1)
                print("| %s | %s | %s | %s |" % (r, cells, lr, "no" if edge else "yes"))
    if svg:
        W, H, L, R, T, B = 640, 380, 60, 170, 30, 50
        pts = [p for v in gaps.values() for p in v]
        if not pts:
            return 0
        ds = sorted({d for d, _ in pts})
        y0, y1 = min(0.0, min(g for _, g in pts)), max(g for _, g in pts)
        y1 = y1 + 0.05 * (y1 - y0 + 1e-9)
        X = lambda d: L + (W - L - R) * (ds.index(d) + 0.5) / len(ds)
        Y = lambda g: H - B - (H - B - T) * (g - y0) / (y1 - y0 + 1e-9)
        colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
        s = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">' % (W, H),
             '<rect width="100%" height="100%" fill="white"/>',
             '<text x="%d" y="18">gap to the uncompressed model (val bits/byte, %%) against width d</text>' % L,
             '<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#999"/>' % (L, Y(0), W - R, Y(0)),
             '<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (L, T, L, H - B)]
        for i in range(5):
            g = y0 + (y1 - y0) * i / 4
            s.append('<text x="4" y="%.1f">%+.1f%%</text>' % (Y(g) + 4, g))
        for d in ds:
            s.append('<text x="%.1f" y="%d" text-anchor="middle">d=%d</text>' % (X(d), H - B + 18, d))
        for k, (r, v) in enumerate((r, v) for r, v in gaps.items() if v):
            c = colors[k % len(colors)]
            s.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' %
                     (c, " ".join("%.1f,%.1f" % (X(d), Y(g)) for d, g in v)))
            s.append('<text x="%d" y="%d" fill="%s">%s</text>' % (W - R + 10, T + 16 * k + 10, c, r))
        s.append("</svg>")
        open(svg, "w").write("\n".join(s) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
