"""Writes a BraggNN peak model the way a user outside beamflow would: the
network in PyTorch (the layer list of the reference's model.py, written
from its description), the weights from an .npz with PyTorch names, and
torch.onnx.export's TorchScript exporter with a dynamic batch axis (its
graph carries Shape/Gather/Concat arithmetic that beamflow's own export
does not). Used by tests/braggnn.rs to check that `braggnn infer` runs
models it did not write.

usage: torch_export.py WEIGHTS.npz OUT.onnx
"""
import sys

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
        a = torch.softmax(torch.matmul(theta, phi), dim=-1)
        y = torch.matmul(a, g).permute(0, 2, 1).contiguous().view(b, 32, h, w)
        return self.out_cnn(y) + x


class BraggNN(nn.Module):
    def __init__(self, psz=11, fcsz=(16, 8, 4, 2)):
        super().__init__()
        self.nlb = NonLocal()
        self.cnn_layers = nn.Sequential(
            nn.Conv2d(1, 64, 3), nn.Identity(), nn.Conv2d(64, 32, 3), nn.LeakyReLU(0.01),
            nn.Conv2d(32, 8, 3), nn.LeakyReLU(0.01))
        widths = [8 * (psz - 6) ** 2, *fcsz]
        layers = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.01)]
        layers.append(nn.Linear(widths[-1], 2))
        self.dense_layers = nn.Sequential(*layers)

    def forward(self, x):
        x = self.cnn_layers[0](x)
        x = nn.functional.leaky_relu(self.nlb(x), 0.01)
        x = self.cnn_layers[3](self.cnn_layers[2](x))
        x = self.cnn_layers[5](self.cnn_layers[4](x))
        return self.dense_layers(x.flatten(start_dim=1))


def main(weights, out):
    state = {k: torch.from_numpy(v) for k, v in np.load(weights).items()}
    net = BraggNN()
    net.load_state_dict(state, strict=True)
    net.eval()
    x = torch.zeros(4, 1, 11, 11)
    torch.onnx.export(net, (x,), out, opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})


if __name__ == "__main__":
    main(*sys.argv[1:3])
