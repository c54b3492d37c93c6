"""
Weight-only quantisation for sampling, as gpt-fast's: `--quantize=int8` (or int4) in sample.py, eval.py and bench.py
quantises a loaded model (any checkpoint, out_dir or export) when it is loaded; nothing is saved, and the model's own
files stay fp32/bf16. Batch-1 decoding reads every weight once a token, so a step is bound by how many bytes the
weights take: int8 reads a quarter of fp32's, int4 an eighth.

    int8  each output channel (a weight row) has its own scale: w = q * scale, q in -127..127
    int4  each group of GROUP inputs of a row has a scale and an offset: w = q * scale + offset, q in 0..15, two
          per byte

Quantised: every linear layer of the blocks (qkv, proj, gate_up, down) and both stages of the head, unless the
model ties its head to its input embeddings (GPTConfig.tie_weights: then the head stays, 1% of the bytes). The
embedding tables stay: a step reads only the rows of its token. Activations, the KV cache and the logits keep the
model's dtype.

Which kernel: whatever measures fastest on the device (docs/results.md). A compiled decode step on a CPU multiplies
by layers.matvec, a product-and-sum over the int8 weight (int4: QuantLinear.int4_matvec, per group) that inductor
turns into one loop reading only the quantised bytes; torch's own CPU kernels, aten._weight_int8pack_mm and
_weight_int4pack_mm_for_cpu, measured slower than fp32 F.linear there (docs/results.md). Eager, and on a GPU, the
weight is dequantised and multiplied with F.linear; compiled on CUDA, inductor fuses the dequantisation into the
product (gpt-fast's int8 form; not yet measured on a GPU here).
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from layers import Linear, fast_gemv, matvec
from model import N_AUDIO, N_FINE

MODES = ("int8", "int4")
GROUP = 128  # int4: inputs per scale and offset (fewer where a layer's width is not a multiple of it)


@dataclass(frozen=True)
class Quantization:
    """The quantisation setting every sampling script takes (same name, same default) from here."""

    # weight-only quantisation of the linear layers at load time: '' (off), 'int8' (per-channel scales; ~4x fewer
    # bytes a step than fp32) or 'int4' (groups of 128 inputs; ~8x fewer, coarser)
    quantize: str = ""

    def __post_init__(self):
        if self.quantize not in ("",) + MODES:
            raise ValueError(f"--quantize={self.quantize!r} is not a quantisation: use '' (off), 'int8' or 'int4'")

    @classmethod
    def defaults(cls):
        return asdict(cls())

    @classmethod
    def from_settings(cls, settings):
        return cls(quantize=settings["quantize"])


class QuantLinear(nn.Module):
    """A Linear's weight in int8 (per-row scales) or int4 (per-group scales and offsets, two per byte)."""

    def __init__(self, linear, bits):
        super().__init__()
        w = linear.weight.detach()
        self.bits, self.in_features, self.out_features = bits, w.shape[1], w.shape[0]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        wf = w.float()
        if bits == 8:
            scale = wf.abs().amax(dim=1).clamp(min=1e-12) / 127  # symmetric: 0 stays exactly 0
            q = (wf / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
            self.register_buffer("weight", q)
            self.register_buffer("scales", scale.to(w.dtype))
            return
        group = math.gcd(w.shape[1], GROUP)
        self.group = group if group >= 32 or group == w.shape[1] else w.shape[1]  # per row, rather than tiny groups
        if self.group % 2:
            raise ValueError(f"int4 needs an even number of inputs per layer, not {w.shape[1]}")
        wg = wf.view(w.shape[0], -1, self.group)
        low, high = wg.amin(dim=-1), wg.amax(dim=-1)
        scale = ((high - low) / 15).clamp(min=1e-12)
        q = ((wg - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.uint8)
        # in each group, the first half of the inputs in the high nibbles, the second half in the low ones: each half
        # then meets a contiguous half of x, which a compiled loop reads as plain vectors (interleaved nibbles need
        # shuffles: docs/results.md)
        half = self.group // 2
        self.register_buffer("weight", q[..., :half] << 4 | q[..., half:])  # [out, in / group, group / 2]
        self.register_buffer("scales", scale.to(w.dtype))  # [out, in / group]
        self.register_buffer("offsets", low.to(w.dtype))

    def dequantized(self, dtype):
        """The weight [out, in] in dtype (eager sampling; a compiled CPU step never makes it, see forward)."""
        if self.bits == 8:
            return self.weight.to(dtype) * self.scales.to(dtype)[:, None]
        q = torch.cat((self.weight >> 4, self.weight & 15), dim=-1)
        w = q.to(dtype) * self.scales.to(dtype)[..., None] + self.offsets.to(dtype)[..., None]
        return w.view(self.out_features, self.in_features)

    def int4_matvec(self, x):
        """x @ the int4 weight for a few rows, in the groups: sum_g scale_g (x_g . q_g) + offset_g sum(x_g)."""
        xg = x.view(*x.shape[:-1], 1, -1, 2, self.group // 2)  # [..., 1, groups, the two halves, group / 2]
        dots = (xg[..., 0, :] * (self.weight >> 4).to(x.dtype) + xg[..., 1, :] * (self.weight & 15).to(x.dtype))
        sums = xg.sum(dim=(-2, -1))  # [..., 1, groups]
        return (dots.sum(-1) * self.scales.to(x.dtype) + sums * self.offsets.to(x.dtype)).sum(-1)

    def forward(self, x):
        if self.bits == 8:  # the scale after the sum: one product per output, not one per weight
            y = matvec(x, self.weight) if fast_gemv(x) else F.linear(x, self.weight.to(x.dtype))
            y = y * self.scales.to(x.dtype)
        else:
            y = self.int4_matvec(x) if fast_gemv(x) else F.linear(x, self.dequantized(x.dtype))
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits}"


def quantize_model(model, mode):
    """Replace model's linear layers (see the module docstring) with int8 / int4 ones, in place; '' = none. -> model"""
    if not mode:
        return model
    Quantization(mode)  # a ValueError naming the setting
    bits = {"int8": 8, "int4": 4}[mode]
    owners = list(model.blocks.modules()) + ([] if model.config.tie_weights else [model])
    with torch.no_grad():
        for owner in owners:
            for name, child in list(owner.named_children()):
                if isinstance(child, Linear) and (owner is not model or name in ("coarse_head", "fine_head")):
                    setattr(owner, name, QuantLinear(child, bits).to(child.weight.device))
    return model


@torch.no_grad()
def logits_difference(model, quantized, streams):
    """
    How far quantisation moves the model: the mean absolute difference of the head's logits (both stages, each at
    the true coarse class) between model and quantized, teacher-forced over streams (1-D token tensors: prompt and
    audio), at every audio position.
    """
    total, count = 0.0, 0
    for stream in streams:
        idx = stream[None, :-1].to(model.wte.weight.device)
        target = stream[1:].to(idx.device)
        keep = target < N_AUDIO
        if not keep.any():
            continue
        coarse = (target // N_FINE)[keep]
        diffs = []
        for m in (model, quantized):
            h = m(idx)[0][keep]
            diffs.append(torch.cat([m.coarse_logits(h), m.fine_logits(h, coarse)], dim=-1))
        total += float((diffs[0] - diffs[1]).abs().sum())
        count += diffs[0].numel()
    return total / max(1, count)
