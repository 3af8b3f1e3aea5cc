"""Trains medinfer's cardiac segmentation model on phantom patches.

Input: x.npy (N, 1, 96, 96) float32 z-scored patches at 1.6 mm and y.npy (N, 96, 96) uint8
labels, written by `medinfer phantom cardiac-training`. Output: one .npy per parameter, named
exactly like the initializers of the ONNX graph that `medinfer zoo build cardiac-unet --weights
DIR` assembles (medinfer's own ONNX builder defines the graph; this script only finds weights).

The network mirrors that graph: a 3-level U-Net, 16 base channels, (conv 3x3 -> BatchNorm ->
ReLU) x 2 per level, 2x2 max pooling, nearest 2x up-sampling then conv-BN-ReLU, skip
concatenation [up, skip], a 1x1 head with bias, 4 classes. Loss: cross-entropy + soft Dice
over the three heart classes. Deterministic for a given seed and thread count.
"""
import argparse, json, os, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class CBR(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = CBR(cin, cout)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    def __init__(self, levels=3, base=16, classes=4):
        super().__init__()
        self.levels = levels
        c = 1
        for l in range(levels):
            out = base << l
            setattr(self, f"enc{l+1}", nn.Sequential(CBR(c, out), CBR(out, out)))
            c = out
        self.bottleneck = nn.Sequential(CBR(c, base << levels), CBR(base << levels, base << levels))
        c = base << levels
        for l in reversed(range(levels)):
            sc = base << l
            setattr(self, f"up{l+1}", Up(c, sc))
            setattr(self, f"dec{l+1}", nn.Sequential(CBR(2 * sc, sc), CBR(sc, sc)))
            c = sc
        self.head = nn.Conv2d(c, classes, 1)

    def forward(self, x):
        skips = []
        for l in range(self.levels):
            x = getattr(self, f"enc{l+1}")(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for l in reversed(range(self.levels)):
            x = getattr(self, f"up{l+1}")(x)
            x = getattr(self, f"dec{l+1}")(torch.cat([x, skips[l]], 1))
        return self.head(x)


def dice_loss(logits, y):
    p = logits.softmax(1)
    oh = F.one_hot(y.long(), 4).permute(0, 3, 1, 2).float()
    inter = (p * oh).sum((0, 2, 3))
    den = p.sum((0, 2, 3)) + oh.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (den + 1))[1:].mean()


def dice_scores(pred, y):
    out = []
    for c in (1, 2, 3):
        a, b = pred == c, y == c
        out.append(float(2 * (a & b).sum() / max(1, int(a.sum() + b.sum()))))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    x = torch.from_numpy(np.load(os.path.join(a.data, "x.npy")))
    y = torch.from_numpy(np.load(os.path.join(a.data, "y.npy")).astype(np.int64))
    n = len(x)
    # Split by exam, never by patch: neighbouring slices of one exam look alike, and a
    # per-patch split would put them on both sides (an optimistic validation Dice).
    exam_path = os.path.join(a.data, "exam.npy")
    if os.path.exists(exam_path):
        exam = torch.from_numpy(np.load(exam_path))
        ids = torch.unique(exam)
        held = ids[torch.randperm(len(ids))[:max(1, int(len(ids) * a.val_fraction))]]
        is_val = torch.isin(exam, held)
        val, tr = torch.nonzero(is_val).flatten(), torch.nonzero(~is_val).flatten()
        print(f"validation: {len(held)} of {len(ids)} exams ({len(val)} patches)", flush=True)
    else:
        perm = torch.randperm(n)
        nval = int(n * a.val_fraction)
        val, tr = perm[:nval], perm[nval:]
    nval = len(val)
    model = UNet()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    steps = a.epochs * (len(tr) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.1)
    log = []
    t0 = time.time()
    for ep in range(a.epochs):
        model.train()
        order = tr[torch.randperm(len(tr))]
        tot = 0.0
        for i in range(len(tr) // a.batch):
            idx = order[i * a.batch:(i + 1) * a.batch]
            xb, yb = x[idx], y[idx]
            # Augmentation: random intensity gamma-like scaling of the z-scored patch.
            xb = xb * (1 + 0.1 * torch.randn(len(idx), 1, 1, 1))
            logits = model(xb)
            loss = F.cross_entropy(logits, yb) + dice_loss(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x[val[i:i + 64]]).argmax(1) for i in range(0, nval, 64)])
        d = dice_scores(pred, y[val])
        rec = {"epoch": ep + 1, "loss": tot / max(1, len(tr) // a.batch), "val_dice": d,
               "seconds": round(time.time() - t0, 1)}
        log.append(rec)
        print(json.dumps(rec), flush=True)
    os.makedirs(a.out, exist_ok=True)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        np.save(os.path.join(a.out, k + ".npy"), v.detach().numpy().astype(np.float32))
    with open(os.path.join(a.out, "training_log.json"), "w") as f:
        json.dump({"args": vars(a), "patches": n, "epochs": log}, f, indent=1)


if __name__ == "__main__":
    main()
