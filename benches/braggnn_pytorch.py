"""BraggNN in PyTorch, for same-machine comparisons with beamflow and for
models made outside beamflow.

The network is the reference's (upstream HEAD forward, upstream parameter
names, so .npz weights with PyTorch names load strictly), written here from
its description. Three commands:

    train PATCHES.h5 [--epochs 3] [--threads 2] [--batch 512]
        training throughput on a beamflow patch file with the same recipe as
        `beamflow kernel braggnn train` (Adam 3e-4, MSE, ±aug shifted crops,
        min-max inputs); one JSON line per epoch.
    infer [--threads 1] [--batches 1,64,512,4096] [--patches 8192]
        inference throughput, patches/s per batch size; one JSON line each.
    export WEIGHTS.npz OUT.onnx
        torch.onnx.export (TorchScript exporter, opset 17, dynamic batch,
        names `input`/`output`): a peak model as a user would bring one;
        tests/braggnn.rs runs it under beamflow's model contract.

`beamflow bench braggnn` runs `train` and `infer` beside its own numbers.
"""
import argparse
import json
import time

import numpy as np
import torch
from torch import nn


class NonLocal(nn.Module):
    def __init__(self):
        super().__init__()
        self.theta_layer = nn.Conv2d(64, 32, 1)
        self.phi_layer = nn.Conv2d(64, 32, 1)
        self.g_layer = nn.Conv2d(64, 32, 1)
        self.out_cnn = nn.Conv2d(32, 64, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        theta = self.theta_layer(x).view(b, 32, -1).permute(0, 2, 1)
        phi = self.phi_layer(x).view(b, 32, -1)
        g = self.g_layer(x).view(b, 32, -1).permute(0, 2, 1)
        y = torch.softmax(theta @ phi, dim=-1) @ g
        y = y.permute(0, 2, 1).contiguous().view(b, 32, h, w)
        return self.out_cnn(y) + x


class BraggNN(nn.Module):
    def __init__(self, psz=11, fcsz=(16, 8, 4, 2)):
        super().__init__()
        self.nlb = NonLocal()
        # Upstream's indices: 0, 2, 4 hold the convolutions.
        self.cnn_layers = nn.Sequential(
            nn.Conv2d(1, 64, 3), nn.LeakyReLU(0.01), nn.Conv2d(64, 32, 3), nn.LeakyReLU(0.01),
            nn.Conv2d(32, 8, 3), nn.LeakyReLU(0.01))
        layers, w = [], 8 * (psz - 6) ** 2
        for f in fcsz:
            layers += [nn.Linear(w, f), nn.LeakyReLU(0.01)]
            w = f
        layers.append(nn.Linear(w, 2))
        self.dense_layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        c = self.cnn_layers
        x = c[1](self.nlb(c[0](x)))  # no activation before the non-local block
        x = c[5](c[4](c[3](c[2](x))))
        return self.dense_layers(x.flatten(start_dim=1))


def train(a):
    import h5py

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


def infer(a):
    torch.set_num_threads(a.threads)
    model = BraggNN().eval()
    x = torch.rand(a.patches, 1, 11, 11)
    for b in (int(v) for v in a.batches.split(",")):
        with torch.no_grad():
            model(x[:b])  # warm-up
            best = 0.0
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                for k in range(0, a.patches, b):
                    model(x[k:k + b])
                best = max(best, a.patches / (time.perf_counter() - t0))
        print(json.dumps({"batch": b, "patches_per_s": best, "threads": a.threads}), flush=True)


def export(a):
    state = {k: torch.from_numpy(v) for k, v in np.load(a.weights).items()}
    net = BraggNN()
    net.load_state_dict(state, strict=True)
    net.eval()
    torch.onnx.export(net, (torch.zeros(4, 1, 11, 11),), a.out, opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("patches")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--batch", type=int, default=512)
    i = sub.add_parser("infer")
    i.add_argument("--threads", type=int, default=1)
    i.add_argument("--batches", default="1,64,512,4096")
    i.add_argument("--patches", type=int, default=8192)
    i.add_argument("--repeat", type=int, default=3)
    e = sub.add_parser("export")
    e.add_argument("weights")
    e.add_argument("out")
    a = ap.parse_args()
    {"train": train, "infer": infer, "export": export}[a.cmd](a)


if __name__ == "__main__":
    main()
