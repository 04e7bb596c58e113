#!/usr/bin/python3
"""step_torch.py - PyTorch baseline for one full training step of the resbm.h model.

One step = forward + backward + global-norm clip (1.0) + AdamW (lr 1e-3, betas (0.9, 0.95),
weight decay 0.1), float32, on random token batches. The model is the single-stage
(no bottleneck) byte-level decoder of docs/design.md §4.

FLOPs per step, the same count the C benchmark uses:
    flops = tokens * (6 * (L*(4*d*d + 3*d*f) + V*d) + 6*L*T*d)
(6 flops per matmul weight per token; causal attention 2*T*d per token per layer forward,
twice that backward).

--check FILE (written by `bench_step --check-out FILE`) first loads resbm.h's initial parameters
and batch, runs one forward and backward, and fails unless the loss and the gradient norm agree
with resbm.h's to 1e-4 relative: an anchor whose kernels compute wrong results is caught, not timed.

Last line (machine-readable):
    torch_step: tokens_per_s=X gflops=X median_ms=X best_ms=X threads=N torch=V blas=B
"""

import argparse
import ctypes
import math
import os
import re
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

RMS_EPS = 1e-5
ROPE_THETA = 10000.0


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + RMS_EPS) * self.gain


def rope_tables(T, hd):
    # cos, sin [T, hd/2]: angle = pos * theta^(-2j/hd)
    j = torch.arange(hd // 2, dtype=torch.float32)
    angle = torch.arange(T, dtype=torch.float32)[:, None] * ROPE_THETA ** (-2.0 * j / hd)
    return torch.cos(angle), torch.sin(angle)


def rope(x, cos, sin):
    # x [B, H, T, hd], rotate-half pairs (j, j + hd/2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.attn_norm = RMSNorm(d)
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, d = x.shape
        a = self.attn_norm(x)
        q = self.wq(a).view(B, T, self.heads, self.hd).transpose(1, 2)
        k = self.wk(a).view(B, T, self.heads, self.hd).transpose(1, 2)
        v = self.wv(a).view(B, T, self.heads, self.hd).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(self.hd))
        scores = scores.masked_fill(mask, float("-inf"))
        o = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, d)
        return self.wo(o)


class MLP(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.mlp_norm = RMSNorm(d)
        self.w1 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)

    def forward(self, x):
        b = self.mlp_norm(x)
        return self.w2(F.silu(self.w1(b)) * self.w3(b))


class Block(nn.Module):
    def __init__(self, d, heads, f):
        super().__init__()
        self.attn = Attention(d, heads)
        self.mlp = MLP(d, f)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(x, cos, sin, mask)
        return x + self.mlp(x)


class Model(nn.Module):
    def __init__(self, vocab, d, layers, heads, f, T):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, f) for _ in range(layers))
        self.final_norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        cos, sin = rope_tables(T, d // heads)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)
        self.register_buffer("mask", torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1))
        # init of docs/design.md §4: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L))
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("wo.weight", "w2.weight")) \
                    else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens, targets):
        x = self.tok_emb(tokens)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin, self.mask)
        logits = self.lm_head(self.final_norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def torch_name(name):
    """resbm.h's parameter name -> this module's."""
    m = re.match(r"blocks\.(\d+)\.(\w+)$", name)
    if not m:
        return {"tok_emb": "tok_emb.weight", "final_norm": "final_norm.gain",
                "lm_head": "lm_head.weight"}[name]
    i, w = m.groups()
    part = "attn" if w in ("attn_norm", "wq", "wk", "wv", "wo") else "mlp"
    return "blocks.%s.%s.%s" % (i, part, w + (".gain" if w.endswith("norm") else ".weight"))


def check_against_resbm(model, path):
    """The same step from the same parameters: loss and gradient norm must agree."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from torch_check import read_safetensors
    tensors, meta = read_safetensors(path)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            if name not in ("tokens", "targets"):
                params[torch_name(name)].copy_(torch.from_numpy(value))
    model.zero_grad(set_to_none=True)
    loss = model(torch.from_numpy(tensors["tokens"]).long(), torch.from_numpy(tensors["targets"]).long())
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters())).item()
    want_loss, want_norm = float(meta["loss"]), float(meta["grad_norm"])
    el, en = abs(loss.item() - want_loss) / abs(want_loss), abs(norm - want_norm) / want_norm
    ok = el < 1e-4 and en < 1e-4
    print("check: loss resbm %.7f torch %.7f (rel %.1e); gradient norm resbm %.7f torch %.7f (rel %.1e): %s"
          % (want_loss, loss.item(), el, want_norm, norm, en, "OK" if ok else "WRONG RESULTS"))
    return ok


def loaded_blas():
    """(token for the machine line, human description) of the BLAS torch really uses:
    torch's BLAS_INFO build setting plus the BLAS libraries mapped into this process."""
    m = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    info = m.group(1) if m else "unknown"
    mapped = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                base = os.path.basename(path)
                if path.startswith("/") and ("blas" in base or "mkl" in base) and path not in mapped:
                    mapped.append(path)
    except OSError:
        pass
    openblas = ""
    for path in mapped:
        try:
            lib = ctypes.CDLL(path)
            lib.openblas_get_config.restype = ctypes.c_char_p
            config = lib.openblas_get_config().decode().split()
            parallel = {0: "sequential", 1: "pthreads", 2: "openmp"}.get(
                lib.openblas_get_parallel(), "unknown")
            lib.openblas_get_corename.restype = ctypes.c_char_p
            openblas = "openblas-%s-%s-%dthreads-kernel=%s" % (
                config[1], parallel, lib.openblas_get_num_threads(),
                lib.openblas_get_corename().decode())
            break
        except (OSError, AttributeError, IndexError):
            continue
    token = ",".join([info] + mapped[:1] + ([openblas] if openblas else []))
    human = "BLAS_INFO=%s; mapped: %s%s" % (info, ", ".join(mapped) or "no BLAS library",
                                            "; " + openblas if openblas else "")
    return token, human


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--ff", type=int, default=688)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8, help="rows per step")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--check", metavar="FILE", help="bench_step --check-out FILE: verify first")
    ap.add_argument("--bf16", action="store_true",
                    help="forward and backward under torch.autocast('cpu', bfloat16): PyTorch's own "
                         "bf16 mixed precision, the anchor of bench_step --gemm bf16 (fp32 master weights)")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.d % args.heads or (args.d // args.heads) % 2:
        ap.error("need steps >= 1, warmup >= 0 and an even head width d/heads")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    d, L, H, f, V, T, B = args.d, args.layers, args.heads, args.ff, args.vocab, args.seq, args.batch
    model = Model(V, d, L, H, f, T)
    if args.check and not check_against_resbm(model, args.check):
        sys.exit(1)
    # as resbm.h does: weight decay on 2-D weights only, not on norm gains
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)

    def step():
        tokens = torch.randint(0, V, (B, T), generator=gen)
        targets = torch.randint(0, V, (B, T), generator=gen)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = model(tokens, targets)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - t0, loss.item()

    for _ in range(args.warmup):
        step()
    times, loss = [], float("nan")
    for _ in range(args.steps):
        dt, loss = step()
        times.append(dt)

    tokens = B * T
    flops = tokens * (6 * (L * (4 * d * d + 3 * d * f) + V * d) + 6 * L * T * d)
    median, best = statistics.median(times), min(times)
    tps, gflops = tokens / median, flops / median / 1e9
    blas_short, blas_long = loaded_blas()
    print("torch %s, %d threads, %s (OPENBLAS_CORETYPE=%s)%s" % (
        torch.__version__, torch.get_num_threads(), blas_long,
        os.environ.get("OPENBLAS_CORETYPE", "unset"), ", autocast bf16" if args.bf16 else ""))
    print("d=%d L=%d H=%d ff=%d V=%d T=%d B=%d: %d steps (+%d warmup), median %.1f ms, best %.1f ms, "
          "%.0f tokens/s, %.2f GFLOP/s (%.3f GFLOP/step), last loss %.4f"
          % (d, L, H, f, V, T, B, args.steps, args.warmup, median * 1e3, best * 1e3, tps, gflops,
             flops / 1e9, loss))
    print("torch_step: tokens_per_s=%.1f gflops=%.3f median_ms=%.3f best_ms=%.3f threads=%d "
          "torch=%s blas=%s precision=%s" % (tps, gflops, median * 1e3, best * 1e3, torch.get_num_threads(),
                                             torch.__version__, blas_short, "bf16" if args.bf16 else "f32"))


if __name__ == "__main__":
    main()
