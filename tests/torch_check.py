#!/usr/bin/python3
"""torch_check.py - compare resbm.h's loss and gradients with PyTorch autograd.

Usage: /usr/bin/python3 tests/torch_check.py FILE.safetensors [FILE2 ...]

Each file is written by a C test: the model parameters under their design-section-4
names, "grad.<name>" for each parameter (the C gradient of the mean loss), "tokens"
and "targets" (I32 [B, T]) and "loss" (F32 [1]); the model configuration is in
"__metadata__" (d, layers, heads, ff, vocab, seq, batch, stages, r, m, identity).

The model is rebuilt here in float64, the mean cross-entropy and every parameter
gradient are computed with autograd, and each C value is compared with
    rel = max|c - t| / max(max|t|, 1e-30)
One line per check (OK / FAILED), then "N passed, M failed".
Exit status: 0 all passed, 1 some check failed, 2 a file could not be read.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

REL_TOL = 1e-4          # pass when rel <= REL_TOL (NaN never passes)
RMS_EPS = 1e-5          # rmsnorm epsilon (docs/design.md §4)
ROPE_THETA = 10000.0    # RoPE base (docs/design.md §4)

DTYPES = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64}


class BadFile(Exception):
    """The file is not a readable safetensors file of the expected kind."""


# --------------------------------------------------------------------------
# safetensors reading (json + struct + numpy only)
# --------------------------------------------------------------------------

def read_safetensors(path):
    """Return (tensors: name -> numpy array, metadata: dict of str -> str)."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise BadFile("cannot open: %s" % e)
    if len(blob) < 8:
        raise BadFile("too short for a safetensors header (%d bytes)" % len(blob))
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise BadFile("header length %d exceeds the file size %d" % (n, len(blob)))
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadFile("header is not valid JSON: %s" % e)
    if not isinstance(header, dict):
        raise BadFile("header is not a JSON object")
    data = memoryview(blob)[8 + n:]

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise BadFile("__metadata__ is not an object")
    tensors = {}
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise BadFile("tensor %r: bad entry %r" % (name, info))
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= begin <= end <= len(data)) or end - begin != count * np.dtype(dtype).itemsize:
            raise BadFile("tensor %r: data_offsets [%d, %d] do not fit shape %s %s in %d data bytes"
                          % (name, begin, end, shape, info["dtype"], len(data)))
        arr = np.frombuffer(data[begin:end], dtype=np.dtype(dtype).newbyteorder("<"))
        tensors[name] = arr.reshape(shape).astype(dtype)
    return tensors, metadata


class Config:
    """Model configuration from the file's metadata (all values decimal strings)."""

    def __init__(self, meta):
        def get(key, default=None):
            if key not in meta:
                if default is None:
                    raise BadFile("metadata key %r is missing" % key)
                return default
            try:
                return int(meta[key])
            except (TypeError, ValueError):
                raise BadFile("metadata %r = %r is not a decimal integer" % (key, meta[key]))

        self.d = get("d")
        self.layers = get("layers")
        self.heads = get("heads")
        self.ff = get("ff")
        self.vocab = get("vocab")
        self.seq = get("seq")
        self.batch = get("batch")
        self.stages = get("stages", 1)
        self.r = get("r", self.d)
        self.identity = get("identity", 1)
        self.has_bottleneck = self.stages > 1 and self.r < self.d
        self.m = get("m") if self.has_bottleneck else get("m", 0)
        if self.d <= 0 or self.heads <= 0 or self.d % self.heads or (self.d // self.heads) % 2:
            raise BadFile("d=%d heads=%d: d/heads must be a positive even integer"
                          % (self.d, self.heads))
        if self.stages < 1 or not (0 < self.r <= self.d):
            raise BadFile("stages=%d r=%d: need stages >= 1 and 0 < r <= d" % (self.stages, self.r))
        self.hd = self.d // self.heads

    def stage_sizes(self):
        """Blocks per stage: contiguous, as even as possible, earlier stages take the extra."""
        base, extra = divmod(self.layers, self.stages)
        return [base + (1 if s < extra else 0) for s in range(self.stages)]

    def param_shapes(self):
        """Every parameter of the model, in order, with its shape (docs/design.md §4)."""
        d, f, V, r, m = self.d, self.ff, self.vocab, self.r, self.m
        shapes = {"tok_emb": (V, d)}
        for i in range(self.layers):
            p = "blocks.%d." % i
            shapes[p + "attn_norm"] = (d,)
            shapes[p + "wq"] = (d, d)
            shapes[p + "wk"] = (d, d)
            shapes[p + "wv"] = (d, d)
            shapes[p + "wo"] = (d, d)
            shapes[p + "mlp_norm"] = (d,)
            shapes[p + "w1"] = (f, d)
            shapes[p + "w2"] = (d, f)
            shapes[p + "w3"] = (f, d)
        if self.has_bottleneck:
            for s in range(self.stages - 1):
                p = "bottleneck.%d." % s
                shapes[p + "enc_norm"] = (d,)
                shapes[p + "enc_w1"] = (m, d)
                shapes[p + "enc_w2"] = (r, m)
                shapes[p + "dec_w1"] = (m, r)
                shapes[p + "dec_w2"] = (d, m)
        shapes["final_norm"] = (d,)
        shapes["lm_head"] = (V, d)
        return shapes


# --------------------------------------------------------------------------
# The model (docs/design.md §4), one function per layer.
# Activations are [B, T, d]; every row is one token.
# --------------------------------------------------------------------------

def rmsnorm(x, gain):
    # x [..., d], gain [d]: x / sqrt(mean(x^2) + eps) * gain
    return x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS) * gain


def rope(x):
    # x [B, H, T, hd]; rotate-half pairs (j, j + hd/2), angle = pos * theta^(-2j/hd),
    # pos = 0..T-1 in every sequence row.
    T, hd = x.shape[-2], x.shape[-1]
    half = hd // 2
    j = torch.arange(half, dtype=x.dtype)
    inv_freq = ROPE_THETA ** (-2.0 * j / hd)                      # [hd/2]
    angle = torch.arange(T, dtype=x.dtype)[:, None] * inv_freq    # [T, hd/2]
    cos, sin = torch.cos(angle), torch.sin(angle)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention(x, p, i, cfg):
    # x [B, T, d] -> attention output o [B, T, d] (before the residual add)
    B, T, d, H, hd = x.shape[0], x.shape[1], cfg.d, cfg.heads, cfg.hd
    pre = "blocks.%d." % i
    a = rmsnorm(x, p[pre + "attn_norm"])

    def heads(w):
        return (a @ w.t()).view(B, T, H, hd).transpose(1, 2)      # [B, H, T, hd]

    q = rope(heads(p[pre + "wq"]))
    k = rope(heads(p[pre + "wk"]))
    v = heads(p[pre + "wv"])
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)             # [B, H, T, T]
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(future, float("-inf"))
    att = torch.softmax(scores, dim=-1) @ v                        # [B, H, T, hd]
    att = att.transpose(1, 2).reshape(B, T, d)                     # concat(heads)
    return att @ p[pre + "wo"].t()


def mlp(x, p, i):
    # x [B, T, d] -> SwiGLU output [B, T, d] (before the residual add)
    pre = "blocks.%d." % i
    b = rmsnorm(x, p[pre + "mlp_norm"])
    return (F.silu(b @ p[pre + "w1"].t()) * (b @ p[pre + "w3"].t())) @ p[pre + "w2"].t()


def block(x, p, i, cfg):
    x = x + attention(x, p, i, cfg)
    x = x + mlp(x, p, i)
    return x


def bottleneck_encode(h, p, s, cfg):
    # sender, end of stage s: h [B, T, d] -> z [B, T, r]
    pre = "bottleneck.%d." % s
    u = rmsnorm(h, p[pre + "enc_norm"])
    e = F.silu(u @ p[pre + "enc_w1"].t()) @ p[pre + "enc_w2"].t()
    return e + h[..., :cfg.r] if cfg.identity else e


def bottleneck_decode(z, p, s, cfg):
    # receiver, start of stage s+1: z [B, T, r] -> x [B, T, d]
    pre = "bottleneck.%d." % s
    y = F.silu(z @ p[pre + "dec_w1"].t()) @ p[pre + "dec_w2"].t()
    if not cfg.identity:
        return y
    return torch.cat([y[..., :cfg.r] + z, y[..., cfg.r:]], dim=-1)


def model_loss(p, tokens, targets, cfg):
    # tokens, targets [B, T] int64 -> mean cross-entropy over all B*T tokens
    x = p["tok_emb"][tokens]                                       # [B, T, d]
    i = 0
    for s, n_blocks in enumerate(cfg.stage_sizes()):
        if s > 0 and cfg.has_bottleneck:        # r == d: h crosses unchanged
            x = bottleneck_decode(bottleneck_encode(x, p, s - 1, cfg), p, s - 1, cfg)
        for _ in range(n_blocks):
            x = block(x, p, i, cfg)
            i += 1
    logits = rmsnorm(x, p["final_norm"]) @ p["lm_head"].t()        # [B, T, V]
    return F.cross_entropy(logits.reshape(-1, cfg.vocab), targets.reshape(-1))


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def ok(self, fname, name, rel):
        self.passed += 1
        print("OK     torch %s %s rel=%.3e" % (fname, name, rel))

    def fail(self, fname, name, rel, why):
        self.failed.append("%s %s" % (fname, name))
        print("FAILED torch %s %s rel=%.3e (%s)" % (fname, name, rel, why))

    def compare(self, fname, name, c, t):
        """c: the C value, t: torch's (numpy arrays, same shape)."""
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        scale = max(float(np.max(np.abs(t))) if t.size else 0.0, 1e-30)
        err = np.abs(c - t)
        rel = float(np.max(err)) / scale if err.size else 0.0
        if np.isnan(err).any() or not np.isfinite(scale):
            rel = float("nan")
        if rel <= REL_TOL:                      # False for NaN
            self.ok(fname, name, rel)
            return
        bad = np.flatnonzero(~(err <= REL_TOL * scale))
        k = int(bad[0]) if bad.size else 0
        self.fail(fname, name, rel, "first mismatch at index %d: c=%.9g torch=%.9g"
                  % (k, c[k], t[k]))


def check_file(path, report):
    fname = os.path.basename(path)
    tensors, meta = read_safetensors(path)
    cfg = Config(meta)
    B, T = cfg.batch, cfg.seq

    for key, shape, dt in (("tokens", (B, T), np.int32), ("targets", (B, T), np.int32),
                           ("loss", (1,), np.float32)):
        if key not in tensors:
            raise BadFile("tensor %r is missing" % key)
        if tuple(tensors[key].shape) != shape or tensors[key].dtype != dt:
            raise BadFile("tensor %r is %s %s, expected %s %s"
                          % (key, tensors[key].dtype, list(tensors[key].shape), dt.__name__,
                             list(shape)))
    for key in ("tokens", "targets"):
        v = tensors[key]
        if v.size and (v.min() < 0 or v.max() >= cfg.vocab):
            raise BadFile("%r has values outside [0, %d)" % (key, cfg.vocab))

    # Parameters: every one the model needs must be in the file with the right shape.
    shapes = cfg.param_shapes()
    params, complete = {}, True
    for name, shape in shapes.items():
        if name not in tensors:
            report.fail(fname, name, float("nan"), "parameter missing from the file")
            complete = False
        elif tuple(tensors[name].shape) != shape:
            report.fail(fname, name, float("nan"), "parameter shape %s, expected %s"
                        % (list(tensors[name].shape), list(shape)))
            complete = False
        else:
            params[name] = torch.tensor(tensors[name], dtype=torch.float64, requires_grad=True)

    # Anything in the file that this configuration does not explain is a mismatch too.
    for name in sorted(tensors):
        base = name[5:] if name.startswith("grad.") else name
        if base in shapes or name in ("tokens", "targets", "loss"):
            continue
        if name.startswith("grad.") or name.startswith("blocks.") or name.startswith("bottleneck."):
            report.fail(fname, name, float("nan"),
                        "in the file but not a parameter of this configuration")
        else:
            print("note: %s: tensor %r ignored" % (fname, name), file=sys.stderr)

    if not complete:
        report.fail(fname, "loss", float("nan"), "not computed: model parameters incomplete")
        for name in shapes:
            report.fail(fname, "grad." + name, float("nan"),
                        "not computed: model parameters incomplete")
        return

    tokens = torch.from_numpy(tensors["tokens"].astype(np.int64))
    targets = torch.from_numpy(tensors["targets"].astype(np.int64))
    loss = model_loss(params, tokens, targets, cfg)
    loss.backward()

    report.compare(fname, "loss", tensors["loss"], loss.detach().numpy().reshape(1))
    for name, shape in shapes.items():
        gname = "grad." + name
        if gname not in tensors:
            report.fail(fname, gname, float("nan"), "gradient missing from the file")
        elif tuple(tensors[gname].shape) != shape:
            report.fail(fname, gname, float("nan"), "gradient shape %s, expected %s"
                        % (list(tensors[gname].shape), list(shape)))
        else:
            report.compare(fname, gname, tensors[gname], params[name].grad.numpy())


def main(argv):
    if len(argv) < 2:
        print("usage: %s FILE.safetensors [FILE2 ...]" % argv[0], file=sys.stderr)
        return 2
    torch.set_grad_enabled(True)
    report = Report()
    unreadable = []
    for path in argv[1:]:
        try:
            check_file(path, report)
        except BadFile as e:
            print("ERROR  torch %s: unreadable file: %s" % (path, e), file=sys.stderr)
            unreadable.append(path)
    for name in report.failed:
        print("failed: %s" % name)
    for path in unreadable:
        print("unreadable: %s" % path)
    print("%d passed, %d failed" % (report.passed, len(report.failed)))
    if unreadable:
        return 2
    return 0 if not report.failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
