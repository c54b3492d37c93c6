"""
nn.Linear and nn.RMSNorm for model.py, with the same parameters, state dicts and outputs, plus two CPU fast paths
kept apart from the network so that model.py reads as the network:

- Linear: a compiled CPU decode step of one row multiplies by `matvec`, a product and a sum that inductor turns into
  one loop streaming the weight once (F.linear's matrix-vector call reads it at about half the memory bandwidth).
  quantize.py's int8 / int4 layers use the same loop, converting each weight in it.
- RMSNorm: eager fp32 training on a CPU runs RMSNormFunction, the same forward ops in the same order (the same
  bits) with a backward written out, half the full-size elementwise ops of autograd's.

What each gains: docs/results.md (Speed).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# how many rows a compiled CPU step multiplies as a fused product-and-sum: inductor's loop streams the weight once
# for one row but re-reads it for every further row, so above one row F.linear is faster
GEMV_ROWS = 1


def matvec(x, weight):
    """x [..., in] @ weight[out, in].T as a product and a sum over `in`, for torch.compile on a CPU (see above).
    weight may be int8 (quantize.py): the conversion happens in the same loop, so only its bytes are read."""
    return (x.unsqueeze(-2) * weight.to(x.dtype)).sum(-1)


def fast_gemv(x):
    """Whether to use matvec: a compiled graph on a CPU, a step of at most GEMV_ROWS rows."""
    return torch.compiler.is_compiling() and x.device.type == "cpu" and x.numel() // x.shape[-1] <= GEMV_ROWS


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict), whose decode step compiled on a CPU uses matvec."""

    def forward(self, x):
        if not fast_gemv(x):
            return F.linear(x, self.weight, self.bias)
        y = matvec(x, self.weight)
        return y if self.bias is None else y + self.bias


class RMSNormFunction(torch.autograd.Function):
    """nn.RMSNorm's forward, the same ops in the same order (the same bits), with its backward written out: autograd's
    backward of the composite forward makes twice the full-size elementwise passes."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        xr = x * r
        ctx.save_for_backward(xr, r, weight)
        return xr * weight

    @staticmethod
    def backward(ctx, grad):
        xr, r, weight = ctx.saved_tensors
        gw = grad * weight
        dx = (gw - xr * (gw * xr).mean(-1, keepdim=True)) * r
        return dx, (grad * xr).flatten(0, -2).sum(0), None


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm (same parameters and outputs) whose eager fp32 training backward is RMSNormFunction's."""

    def forward(self, x):
        if (torch.compiler.is_compiling() or not torch.is_grad_enabled() or x.dtype != torch.float32
                or self.weight is None or self.weight.dtype != torch.float32):
            return super().forward(x)  # inductor fuses the composite (and its backward) by itself
        return RMSNormFunction.apply(x, self.weight, torch.finfo(x.dtype).eps if self.eps is None else self.eps)
