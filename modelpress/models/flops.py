"""Forward FLOPs counted per layer, and the training compute estimate.

Convention (Kaplan et al., OpenAI "AI and Compute"): a multiply-add is 2 FLOPs; a fully
connected layer N->M costs 2*N*M per example; a convolution costs
2 * (C_in/groups) * k_h * k_w * C_out * H_out * W_out. Normalisation, activations and
pooling are ignored (they are a few percent). Training ~ 3 x forward (forward + backward).
"""

from __future__ import annotations

import torch
from torch import nn

SECONDS_PER_DAY = 86_400
PETA = 1e15


def forward_flops(model: nn.Module, input_shape, per_layer: bool = False):
    """FLOPs of one forward pass for a single example (batch 1)."""
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(name):
        def hook(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                cin_per_group = module.in_channels // module.groups
                kh, kw = module.kernel_size
                flops = 2 * cin_per_group * kh * kw * output.numel()
            else:  # Linear: output.numel() = rows * out_features
                flops = 2 * module.in_features * output.numel()
            counts[name] = counts.get(name, 0) + int(flops)
        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    total = sum(counts.values())
    return (total, counts) if per_layer else total


def training_compute(forward_flops_per_example: int, examples: int, epochs: int,
                     seconds: float) -> dict:
    """Training FLOPs ~ 3 x forward x examples x epochs, in FLOPs and PetaFLOP/s-days."""
    total = 3 * forward_flops_per_example * examples * epochs
    return {
        "forward_flops_per_example": int(forward_flops_per_example),
        "training_flops": float(total),
        "training_pflop_days": total / (PETA * SECONDS_PER_DAY),
        "achieved_flops_per_s": total / seconds if seconds > 0 else 0.0,
    }
