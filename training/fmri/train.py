"""Trains medinfer's fMRI network classifier on component slices from phantom cohorts.

Input: x.npy (N, 3, 45, 45) float32 (sagittal, coronal and axial slices through each
component's peak, 200 mm field of view, scaled to the peak) and y.npy (N,) class indices,
written by `medinfer phantom fmri-training`. Output: one .npy per parameter, named exactly like
the initializers of the graph that `medinfer zoo build fmri-resnet50 --weights DIR` assembles
(medinfer's own ONNX builder defines the graph; this script only finds weights).

The network mirrors that graph: torchvision's ResNet-50 v1.5 (bottlenecks, stride on the 3x3),
3 input channels, 13 outputs; module names follow the builder (stem.conv / stem.bn,
layerL.B.1 / .2 conv-bn-relu, .conv3 / .bn3, .downsample.conv / .bn, fc). Loss: cross-entropy
with label smoothing 0.05. Augmentation keeps what carries the label (where the peak lies, the
shape of the network): map amplitude x U(0.8, 1.2), additive Gaussian noise (sd U(0, 0.05)),
in-plane shifts of up to 2 pixels (9 mm). Deterministic for a given seed and thread count.
"""
import argparse, json, os, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class CBR(nn.Module):
    def __init__(self, cin, cout, k, s, p):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, p, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class DS(nn.Module):
    def __init__(self, cin, cout, s):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, s, 0, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)

    def forward(self, x):
        return self.bn(self.conv(x))


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        out = planes * 4
        self.add_module("1", CBR(cin, planes, 1, 1, 0))
        self.add_module("2", CBR(planes, planes, 3, stride, 1))
        self.conv3 = nn.Conv2d(planes, out, 1, 1, 0, bias=False)
        self.bn3 = nn.BatchNorm2d(out, eps=1e-5)
        # As torchvision's zero_init_residual: each block starts as the identity.
        nn.init.zeros_(self.bn3.weight)
        self.downsample = DS(cin, out, stride) if stride != 1 or cin != out else None

    def forward(self, x):
        a = getattr(self, "2")(getattr(self, "1")(x))
        b = self.bn3(self.conv3(a))
        s = self.downsample(x) if self.downsample is not None else x
        return F.relu(b + s)


class ResNet50(nn.Module):
    def __init__(self, classes=13):
        super().__init__()
        self.stem = CBR(3, 64, 7, 2, 3)
        cin = 64
        for li, n in enumerate([3, 4, 6, 3]):
            planes = 64 << li
            layer = nn.Module()
            for bi in range(n):
                stride = 2 if bi == 0 and li > 0 else 1
                layer.add_module(str(bi), Bottleneck(cin, planes, stride))
                cin = planes * 4
            self.add_module(f"layer{li + 1}", layer)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.max_pool2d(self.stem(x), 3, 2, 1)
        for li, n in enumerate([3, 4, 6, 3]):
            layer = getattr(self, f"layer{li + 1}")
            for bi in range(n):
                x = getattr(layer, str(bi))(x)
        return self.fc(x.mean((2, 3)))


def augment(xb, g):
    n = len(xb)
    amp = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    noise = torch.randn(xb.shape, generator=g) * (0.05 * torch.rand(n, 1, 1, 1, generator=g))
    out = xb * amp + noise
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    return torch.stack([torch.roll(out[i], (int(shifts[i, 0]), int(shifts[i, 1])), (1, 2))
                        for i in range(n)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val-fraction", type=float, default=0.05)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    g = torch.Generator().manual_seed(a.seed + 1)
    x = torch.from_numpy(np.load(os.path.join(a.data, "x.npy")))
    y = torch.from_numpy(np.load(os.path.join(a.data, "y.npy")).astype(np.int64))
    n = len(x)
    perm = torch.randperm(n)
    nval = int(n * a.val_fraction)
    val, tr = perm[:nval], perm[nval:]
    model = ResNet50()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    steps = a.epochs * (len(tr) // a.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps, pct_start=0.15)
    log = []
    t0 = time.time()
    for ep in range(a.epochs):
        model.train()
        order = tr[torch.randperm(len(tr))]
        tot, correct = 0.0, 0
        for i in range(len(tr) // a.batch):
            idx = order[i * a.batch:(i + 1) * a.batch]
            xb, yb = augment(x[idx], g), y[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach())
            correct += int((logits.argmax(1) == yb).sum())
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x[val[i:i + 64]]).argmax(1) for i in range(0, nval, 64)])
        acc = float((pred == y[val]).float().mean()) if nval else float("nan")
        steps_ep = max(1, len(tr) // a.batch)
        rec = {"epoch": ep + 1, "loss": tot / steps_ep, "train_acc": correct / (steps_ep * a.batch),
               "val_acc": acc, "seconds": round(time.time() - t0, 1)}
        log.append(rec)
        print(json.dumps(rec), flush=True)
    os.makedirs(a.out, exist_ok=True)
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        np.save(os.path.join(a.out, k + ".npy"), v.detach().numpy().astype(np.float32))
    with open(os.path.join(a.out, "training_log.json"), "w") as f:
        json.dump({"args": vars(a), "samples": n, "epochs": log}, f, indent=1)


if __name__ == "__main__":
    main()
