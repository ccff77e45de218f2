"""Elastic layers: they hold the largest weights and take the sub-shape as call arguments (no active state).

Elastic kernel (once-for-all, Cai et al. 2020): the largest kernel is stored; a smaller one is the centre
crop of the next larger *transformed* kernel, passed through a learned (k*k x k*k) matrix initialised to
the identity and shared by all channels of the layer. Elastic width: the first c channels are used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACT_FUNCS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "hswish": F.hardswish,
    "swish": F.silu,
    "hsigmoid": F.hardsigmoid,
    "sigmoid": torch.sigmoid,
}


def centre_crop(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    start = (weight.shape[-1] - kernel) // 2
    return weight[..., start:start + kernel, start:start + kernel]


class ElasticConv(nn.Module):
    """A convolution that runs with any in/out width up to its maximum and any of its kernels.

    `depthwise=True` makes a depthwise conv (one filter per channel; in = out = the input's width).
    """

    def __init__(self, in_max: int, out_max: int, kernels: tuple[int, ...], *, depthwise: bool = False,
                 bias: bool = False) -> None:
        super().__init__()
        self.kernels = tuple(sorted(set(kernels), reverse=True))
        self.depthwise = depthwise
        k = self.kernels[0]
        self.weight = nn.Parameter(torch.empty(out_max, 1 if depthwise else in_max, k, k))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # torch's Conv2d default
        self.bias = nn.Parameter(torch.zeros(out_max)) if bias else None
        if bias:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        # One matrix per step down the kernel chain, e.g. 7->5 (25x25) and 5->3 (9x9).
        self.transforms = nn.ParameterDict({
            f"{big}to{small}": nn.Parameter(torch.eye(small * small))
            for big, small in zip(self.kernels, self.kernels[1:], strict=False)
        })

    def kernel_weight(self, out_ch: int, in_ch: int, kernel: int) -> torch.Tensor:
        """The weight a subnet uses: sliced to (out_ch, in_ch) and brought down to `kernel`."""
        if kernel not in self.kernels:
            raise ValueError(f"kernel {kernel} is not one of this layer's kernels {self.kernels}")
        weight = self.weight[:out_ch, : (1 if self.depthwise else in_ch)]
        for big, small in zip(self.kernels, self.kernels[1:], strict=False):
            if big == kernel:
                break
            crop = centre_crop(weight, small)
            weight = (crop.reshape(-1, small * small) @ self.transforms[f"{big}to{small}"]).reshape(crop.shape)
        return weight

    def forward(self, x: torch.Tensor, out_ch: int, kernel: int, stride: int = 1) -> torch.Tensor:
        in_ch = x.shape[1]
        if self.depthwise:
            out_ch = in_ch
        weight = self.kernel_weight(out_ch, in_ch, kernel)
        bias = self.bias[:out_ch] if self.bias is not None else None
        return F.conv2d(x, weight, bias, stride, kernel // 2, 1, in_ch if self.depthwise else 1)


class ElasticBN(nn.BatchNorm2d):
    """BatchNorm over the first C channels of its statistics and affine parameters (C = the input's width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        use_batch_stats = self.training or not self.track_running_stats
        running_mean = self.running_mean[:c] if self.running_mean is not None else None
        running_var = self.running_var[:c] if self.running_var is not None else None
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, running_mean, running_var, self.weight[:c], self.bias[:c], use_batch_stats,
                            self.momentum if self.momentum is not None else 0.1, self.eps)


class ElasticConvBN(nn.Module):
    """Elastic conv + elastic BN (+ activation by name at call time)."""

    def __init__(self, in_max: int, out_max: int, kernels: tuple[int, ...], *, depthwise: bool = False) -> None:
        super().__init__()
        self.conv = ElasticConv(in_max, out_max, kernels, depthwise=depthwise)
        self.bn = ElasticBN(out_max)

    def forward(self, x: torch.Tensor, out_ch: int, kernel: int, stride: int = 1, act: str | None = None
                ) -> torch.Tensor:
        y = self.bn(self.conv(x, out_ch, kernel, stride))
        return ACT_FUNCS[act](y) if act else y

    @torch.no_grad()
    def copy_into(self, static: nn.Sequential, out_ch: int, in_ch: int, kernel: int) -> None:
        """Copy the sub-weights into a static ConvBNAct (conv at [0], BatchNorm at [1])."""
        static[0].weight.copy_(self.conv.kernel_weight(out_ch, in_ch, kernel))
        copy_bn(self.bn, static[1])


@torch.no_grad()
def copy_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d) -> None:
    c = dst.num_features
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)
