"""Exports the small PyTorch models in this directory (run once; the .onnx files are committed so
the tests need no PyTorch): typical exporter output for the front end to digest — BN after conv,
Hardswish/Hardsigmoid/ReLU6, squeeze-excite Mul, depthwise and grouped convs, residual adds,
channel shuffle computed from ``x.shape`` (Shape/Gather/Div/Concat on a dynamic batch),
``x.view(x.size(0), -1)``, ceil-mode pools, PReLU, LeakyReLU, Softmax, at several opsets.

    python tests/data/make_torch_models.py
"""

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


class MobileBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1), nn.Hardsigmoid())
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x)
        y = y * self.se(y)
        x = x + self.pw(y)
        x = nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


class ShuffleNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1, groups=3)
        self.bn = nn.BatchNorm2d(12)
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.conv2 = nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=4)
        self.act = nn.PReLU(12)
        self.head = nn.Linear(12 * 6 * 6, 7)

    def forward(self, x):
        x = self.pool(self.bn(self.conv(x)))
        b, c, h, w = x.shape
        x = x.reshape(b, 3, c // 3, h, w).transpose(1, 2).reshape(b, c, h, w)  # channel shuffle
        x = self.act(self.conv2(x))
        x = nn.functional.avg_pool2d(x, 2, ceil_mode=True, count_include_pad=True, padding=1)
        x = torch.flatten(x, 1)
        return torch.softmax(nn.functional.leaky_relu(self.head(x), 0.1), dim=1)


class Lenetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5, padding=2)
        self.c2 = nn.Conv2d(6, 16, 5)
        self.f1 = nn.Linear(16 * 5 * 5, 32)
        self.drop = nn.Dropout(0.5)
        self.f2 = nn.Linear(32, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.sigmoid(self.c1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        x = self.drop(torch.relu(self.f1(x.flatten(1))))
        return self.f2(x)


MODELS = {
    "mobile_block": (MobileBlock, (1, 3, 32, 32), (11, 13, 17)),
    "shufflenetish": (ShuffleNetish, (1, 3, 20, 20), (11, 17)),
    "lenetish": (Lenetish, (1, 1, 28, 28), (9, 13)),
}


def main() -> None:
    torch.manual_seed(0)
    for name, (cls, shape, opsets) in MODELS.items():
        model = cls().eval()
        for m in model.modules():  # non-trivial BN statistics, so folding is really exercised
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
        x = torch.randn(*shape)
        for opset in opsets:
            path = HERE / f"torch_{name}_op{opset}.onnx"
            torch.onnx.export(model, (x,), str(path), opset_version=opset, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)  # fmt: skip
            print(path.name, path.stat().st_size)


if __name__ == "__main__":
    main()
