"""BraggNN training throughput in PyTorch on a beamflow patch file, for the
same-machine comparison with `beamflow kernel braggnn train`.

Same network (upstream HEAD forward), recipe (Adam 3e-4, MSE, batch 512,
±aug shifted crops, min-max inputs) and data as the Rust trainer; prints
samples/s per epoch as JSON lines.

    .cache/venv/bin/python benches/braggnn_pytorch.py PATCHES.h5 [--epochs 3] [--threads 2]
"""
import argparse
import json
import time

import h5py
import numpy as np
import torch
from torch import nn


class NLB(nn.Module):
    def __init__(self, c=64):
        super().__init__()
        self.theta_layer = nn.Conv2d(c, c // 2, 1)
        self.phi_layer = nn.Conv2d(c, c // 2, 1)
        self.g_layer = nn.Conv2d(c, c // 2, 1)
        self.out_cnn = nn.Conv2d(c // 2, c, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        t = self.theta_layer(x).view(b, 32, -1).permute(0, 2, 1)
        p = self.phi_layer(x).view(b, 32, -1)
        g = self.g_layer(x).view(b, 32, -1).permute(0, 2, 1)
        y = torch.softmax(t @ p, dim=-1) @ g
        y = y.permute(0, 2, 1).contiguous().view(b, 32, h, w)
        return self.out_cnn(y) + x


class BraggNN(nn.Module):
    def __init__(self, psz=11, fcsz=(16, 8, 4, 2)):
        super().__init__()
        self.cnn_layers_1 = nn.Conv2d(1, 64, 3)
        self.nlb = NLB()
        self.rest = nn.Sequential(
            nn.LeakyReLU(0.01), nn.Conv2d(64, 32, 3), nn.LeakyReLU(0.01),
            nn.Conv2d(32, 8, 3), nn.LeakyReLU(0.01), nn.Flatten())
        layers, w = [], 8 * (psz - 6) ** 2
        for f in fcsz:
            layers += [nn.Linear(w, f), nn.LeakyReLU(0.01)]
            w = f
        layers.append(nn.Linear(w, 2))
        self.dense = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.dense(self.rest(self.nlb(self.cnn_layers_1(x))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("patches")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with h5py.File(a.patches, "r") as f:
        pix = f["patches"][...].astype(np.float32)
        cen = f["centres"][...]
        psz, aug = int(f.attrs["psz"]), int(f.attrs["aug"])
    n_train = len(pix) - round(0.2 * len(pix))
    rng = np.random.default_rng(0)
    model = BraggNN(psz)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    loss_fn = nn.MSELoss()
    for epoch in range(a.epochs):
        t0 = time.perf_counter()
        order = rng.permutation(n_train)
        seen = 0
        for k in range(0, n_train - a.batch + 1, a.batch):
            idx = order[k:k + a.batch]
            dy = rng.integers(-aug, aug + 1, len(idx))
            dx = rng.integers(-aug, aug + 1, len(idx))
            x = np.empty((len(idx), 1, psz, psz), np.float32)
            y = np.empty((len(idx), 2), np.float32)
            for j, (i, sy, sx) in enumerate(zip(idx, dy, dx)):
                r0, c0 = aug + sy, aug + sx
                p = pix[i, r0:r0 + psz, c0:c0 + psz]
                lo, hi = p.min(), p.max()
                x[j, 0] = (p - lo) / (hi - lo) if hi > lo else p
                y[j] = ((cen[i, 1] - c0) / psz, (cen[i, 0] - r0) / psz)
            opt.zero_grad()
            loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
            loss.backward()
            opt.step()
            seen += len(idx)
        dt = time.perf_counter() - t0
        print(json.dumps({"epoch": epoch, "loss": loss.item(), "seconds": dt,
                          "samples_per_s": seen / dt, "threads": a.threads}), flush=True)


if __name__ == "__main__":
    main()
