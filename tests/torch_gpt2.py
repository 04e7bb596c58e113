#!/usr/bin/python3
"""torch_gpt2.py - examples/gpt2.c through a pipeline with bottlenecks, against PyTorch autograd.

Usage: /usr/bin/python3 tests/torch_gpt2.py FILE.safetensors [FILE2 ...]

Each file is written by `test_gpt2 --dump DIR`: every parameter of every stage (GPT-2 names, and
bottleneck.s.* between stages), "grad.<name>" (the C gradient of the mean loss over all
microbatches), "tokens", "targets" and "loss"; metadata d, heads, layers, stages, r, identity,
seq, tied. The whole pipeline is rebuilt here in float64 (LayerNorm with bias, tanh GELU, learned
positions, causal attention, the head tied to wte on one stage and its own tensor otherwise) and
compared as tests/torch_check.py does: rel = max|c - t| / max|t| <= 1e-4.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_check import BadFile, Report, read_safetensors, bottleneck_encode, bottleneck_decode  # noqa: E402

LN_EPS = 1e-5


class Cfg:
    def __init__(self, meta):
        try:
            for k in ("d", "heads", "layers", "stages", "r", "identity", "seq", "tied"):
                setattr(self, k, int(meta[k]))
        except (KeyError, ValueError) as e:
            raise BadFile("metadata: %s" % e)
        self.vocab = 256
        self.has_bottleneck = self.stages > 1 and self.r < self.d

    def stage_sizes(self):
        base, extra = divmod(self.layers, self.stages)
        return [base + (1 if s < extra else 0) for s in range(self.stages)]


def block(x, p, i, cfg):
    pre = "h.%d." % i
    d, H = cfg.d, cfg.heads
    B, T, _ = x.shape
    a = F.layer_norm(x, (d,), p[pre + "ln_1.weight"], p[pre + "ln_1.bias"], LN_EPS)
    qkv = a @ p[pre + "attn.c_attn.weight"].t() + p[pre + "attn.c_attn.bias"]
    q, k, v = (t.reshape(B, T, H, d // H).transpose(1, 2) for t in qkv.split(d, dim=-1))
    s = (q @ k.transpose(-1, -2)) / (d // H) ** 0.5
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    o = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, T, d)
    x = x + o @ p[pre + "attn.c_proj.weight"].t() + p[pre + "attn.c_proj.bias"]
    b = F.layer_norm(x, (d,), p[pre + "ln_2.weight"], p[pre + "ln_2.bias"], LN_EPS)
    h = F.gelu(b @ p[pre + "mlp.c_fc.weight"].t() + p[pre + "mlp.c_fc.bias"], approximate="tanh")
    return x + h @ p[pre + "mlp.c_proj.weight"].t() + p[pre + "mlp.c_proj.bias"]


def model_loss(p, tokens, targets, cfg):
    T = tokens.shape[1]
    x = p["wte"][tokens] + p["wpe"][:T]
    i = 0
    for s, n in enumerate(cfg.stage_sizes()):
        if s > 0 and cfg.has_bottleneck:
            x = bottleneck_decode(bottleneck_encode(x, p, s - 1, cfg), p, s - 1, cfg)
        for _ in range(n):
            x = block(x, p, i, cfg)
            i += 1
    x = F.layer_norm(x, (cfg.d,), p["ln_f.weight"], p["ln_f.bias"], LN_EPS)
    head = p["wte"] if cfg.tied else p["lm_head"]
    return F.cross_entropy((x @ head.t()).reshape(-1, cfg.vocab), targets.reshape(-1))


def check_file(path, report):
    fname = os.path.basename(path)
    tensors, meta = read_safetensors(path)
    cfg = Cfg(meta)
    names = [n for n in tensors if not n.startswith("grad.") and n not in ("tokens", "targets", "loss")]
    # what the configuration needs, and nothing else
    want = {"wte", "wpe", "ln_f.weight", "ln_f.bias"} | ({"lm_head"} if not cfg.tied else set())
    for i in range(cfg.layers):
        for t in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                  "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                  "mlp.c_proj.weight", "mlp.c_proj.bias"):
            want.add("h.%d.%s" % (i, t))
    if cfg.has_bottleneck:
        for s in range(cfg.stages - 1):
            for t in ("enc_norm", "enc_w1", "enc_w2", "dec_w1", "dec_w2"):
                want.add("bottleneck.%d.%s" % (s, t))
    if set(names) != want:
        report.fail(fname, "parameters", float("nan"), "missing %s, unexpected %s"
                    % (sorted(want - set(names)), sorted(set(names) - want)))
        return
    if cfg.has_bottleneck:
        cfg.m = tensors["bottleneck.0.enc_w1"].shape[0]
    params = {n: torch.tensor(tensors[n], dtype=torch.float64, requires_grad=True) for n in names}
    tokens = torch.from_numpy(tensors["tokens"].astype(np.int64))
    targets = torch.from_numpy(tensors["targets"].astype(np.int64))
    loss = model_loss(params, tokens, targets, cfg)
    loss.backward()
    report.compare(fname, "loss", tensors["loss"], loss.detach().numpy().reshape(1))
    for n in sorted(names):
        if "grad." + n not in tensors:
            report.fail(fname, "grad." + n, float("nan"), "gradient missing")
        else:
            report.compare(fname, "grad." + n, tensors["grad." + n], params[n].grad.numpy())


def main(argv):
    if len(argv) < 2:
        print("usage: %s FILE.safetensors ..." % argv[0], file=sys.stderr)
        return 2
    report = Report()
    for path in argv[1:]:
        try:
            check_file(path, report)
        except BadFile as e:
            report.fail(os.path.basename(path), "file", float("nan"), str(e))
    for name in report.failed:
        print("failed: %s" % name)
    print("%d passed, %d failed" % (report.passed, len(report.failed)))
    return 0 if not report.failed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
