"""Projection to Llama-style shapes: bytes per token per boundary (each way) and the link a stage
needs so that it never waits on the link.

    python3 bench/project.py [--tflops 400] [--util 0.4] [--layers 4] [--seq 2048] [--rows 2048]
                             [--check bench/compress]

Bytes per token per boundary, each way, for a frame of `rows` tokens (wire format, docs/design.md §5:
a 40-byte header per frame; i8 adds one f32 scale per 64 values):
    f32 4d, bf16 2d, ResBM 128x 4r, 128x + i8 r (1 + 4/64), with r = d/128, each + 40/rows.
Training FLOPs per token of one stage of n layers (Llama block: attention 4d^2 and a SwiGLU MLP
with f = 8d/3, so 12 d^2 weights; forward 2 FLOPs per weight, backward 4; causal attention scores
and their use add 2Td forward, 4Td backward):
    F = n (72 d^2 + 6 T d)
A stage computes P = tflops * util FLOP/s, so it handles P / F tokens per second; in 1F1B steady
state it sends one activation row forward and one gradient row back per token, so each direction
of its link must carry at least
    B = bytes_per_token * P / F   bytes/s   (x 8 for bit/s).
--check compares the byte formula with the bytes examples/train measured in bench/compress.
"""
import argparse, os

ap = argparse.ArgumentParser()
ap.add_argument("--tflops", type=float, default=400.0)
ap.add_argument("--util", type=float, default=0.4)
ap.add_argument("--layers", type=int, default=4)
ap.add_argument("--seq", type=int, default=2048)
ap.add_argument("--rows", type=int, default=2048, help="tokens per frame (one microbatch row)")
ap.add_argument("--check", default="")
a = ap.parse_args()

HEADER = 40


def per_token(kind, d, rows):
    r = d // 128
    val = {"f32": 4 * d, "bf16": 2 * d, "ResBM 128x": 4 * r, "ResBM 128x + i8": r * (1 + 4 / 64)}[kind]
    return val + HEADER / rows


P = a.tflops * 1e12 * a.util
kinds = ["f32", "bf16", "ResBM 128x", "ResBM 128x + i8"]
print("One stage = %d layers at %g TFLOP/s x %.0f%% = %.0f TFLOP/s, T = %d, %d tokens per frame.\n"
      % (a.layers, a.tflops, 100 * a.util, P / 1e12, a.seq, a.rows))
print("| d | stage FLOPs/token | tokens/s per stage | " + " | ".join("%s bytes/token" % k for k in kinds) + " | "
      + " | ".join("%s link" % k for k in kinds) + " |")
print("|--:|--:|--:|" + "--:|" * (2 * len(kinds)))
for d in (2048, 4096, 8192):
    F = a.layers * (72 * d * d + 6 * a.seq * d)
    tps = P / F
    b = [per_token(k, d, a.rows) for k in kinds]
    link = []
    for x in b:
        bits = x * tps * 8
        link.append("%.2f Gbit/s" % (bits / 1e9) if bits >= 1e9 else "%.1f Mbit/s" % (bits / 1e6))
    print("| %d | %.3g | %.0f | %s | %s |" % (d, F, tps, " | ".join("%.1f" % x for x in b), " | ".join(link)))

if a.check:
    # train's result line: wire_bytes_fwd over steps x batch x seq tokens x (S-1) boundaries,
    # for the d=256, S=4, batch 8, T=128, 4 microbatches (256 tokens a frame) of bench/compress
    print("\nFormula against bytes measured by examples/train (d=256, 256 tokens a frame):\n")
    print("| row | measured bytes/token | formula |")
    print("|---|--:|--:|")
    for name, kind in (("uncompressed", "f32"), ("128x", "ResBM 128x"), ("128x-i8", "ResBM 128x + i8")):
        f = os.path.join(a.check, name + ".out")
        if not os.path.exists(f):
            continue
        kv = dict(x.split("=") for x in open(f).read().split("result:")[-1].split())
        tokens = int(kv["steps"]) * 8 * 128 * 3
        print("| %s | %.3f | %.3f |" % (name, int(kv["wire_bytes_fwd"]) / tokens, per_token(kind, 256, 256)))
