#!/usr/bin/python3
"""torch_ckpt.py - PyTorch reads a checkpoint written by examples/train and reproduces its loss.

Usage: /usr/bin/python3 tests/torch_ckpt.py CKPT.safetensors DATA.txt EVAL_ROWS VAL_BPB

The checkpoint is read with json + struct (no safetensors package): every parameter under its
design name, "opt.*" optimizer state, metadata "config" (vocab=.. d=.. ...), "stages", "step".
The model is rebuilt in float64 (tests/torch_check.py), evaluated on the validation windows
train.c uses (the last 10% of DATA, EVAL_ROWS windows of seq+1 bytes, evenly spaced), and its
loss in bits per byte is compared with VAL_BPB, the value train printed on its result line.
Prints "N passed, M failed".
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_check as tc  # noqa: E402


def main(argv):
    path, data_path, eval_rows, want = argv[1], argv[2], int(argv[3]), float(argv[4])
    passed = failed = 0
    tensors, meta = tc.read_safetensors(path)
    cfg_kv = dict(kv.split("=") for kv in meta["config"].split())
    cfg_kv["stages"] = meta["stages"]
    cfg_kv["batch"] = "1"
    cfg = tc.Config(cfg_kv)
    shapes = cfg.param_shapes()

    def check(ok, what):
        nonlocal passed, failed
        print(("OK     " if ok else "FAILED ") + what)
        if ok:
            passed += 1
        else:
            failed += 1

    check(meta.get("format") == "resbm-checkpoint-1", "format metadata")
    check(all(n in tensors and tuple(tensors[n].shape) == s for n, s in shapes.items()),
          "every parameter present with its design shape (%d)" % len(shapes))
    check(all(("opt." + n + ".m") in tensors for n in shapes), "optimizer state opt.<name>.m")
    p = {n: torch.tensor(tensors[n], dtype=torch.float64) for n in shapes}

    with open(data_path, "rb") as f:
        data = f.read()
    T = cfg.seq
    val_off, val_len = len(data) - len(data) // 10, len(data) // 10
    rows = min(eval_rows, val_len // (T + 1))
    stride = (val_len - T - 1) // rows
    win = [data[val_off + b * stride: val_off + b * stride + T + 1] for b in range(rows)]
    tokens = torch.tensor([list(w[:T]) for w in win], dtype=torch.int64)
    targets = torch.tensor([list(w[1:]) for w in win], dtype=torch.int64)
    with torch.no_grad():
        bpb = tc.model_loss(p, tokens, targets, cfg).item() / math.log(2.0)
    rel = abs(bpb - want) / abs(bpb)
    check(rel <= 1e-4, "val bits/byte: torch %.6f, train %.6f, rel %.2e" % (bpb, want, rel))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
