"""FLOPs of a training step, for throughput and MFU (model FLOPs utilisation, Chowdhery et al. 2022,
PaLM, app. B): MFU = train FLOPs per step / step time / the device's peak FLOP/s.

    train FLOPs per step = 3 x forward FLOPs

since the backward pass costs about two forwards: each layer's gradient for its input and for its
weights is one matmul of the forward's size each (Kaplan et al. 2020, sec. 2.1). It runs slightly
under 3x where no input gradient is needed (the first layer, a frozen first stage: count those once).

Forward FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` for any family's net and
inputs, real or on the meta device (no memory, no arithmetic): matmuls, convolutions and attention,
a multiply-add counting 2; elementwise work (norms, activations, the optimizer) is not counted, as in
published MFU figures. Nets with a closed form may give one too (`genlab.nets.dit.dit_forward_flops`).
`flop_counter()` also counts the CPU's fused attention kernel, which torch 2.x's table leaves out
(so attention counted 0 on CPU tensors; the meta device and CUDA kernels were counted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter as fc

aten = torch.ops.aten


def _cpu_attention(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward,
}


def flop_counter() -> fc.FlopCounterMode:
    """A quiet `FlopCounterMode` that also counts attention on CPU tensors."""
    return fc.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


def forward_flops(module: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of one `module(*args, **kwargs)` (no gradients recorded): a net, or any function of nets
    (a family's loss, a first stage's `encode`)."""
    with torch.no_grad(), flop_counter() as counter:
        module(*args, **kwargs)
    return counter.get_total_flops()


def train_flops_per_step(module: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of one training step on this batch: forward + backward = 3 x forward."""
    return 3 * forward_flops(module, *args, **kwargs)
