"""Random weights for a Hugging Face DETR that show every tensor in its outputs: the forward
benchmark (forward_vs_huggingface.py) and the layout tests compare such a model with ours."""
from __future__ import annotations

import torch


def randomize_vectors(model: torch.nn.Module) -> None:
    """Hugging Face initialises biases, norms and frozen-BN statistics to constants and its
    linear layers with std 0.02 (near-uniform attention); re-draw them all (linear layers
    as the reference does, xavier) so that every renamed or packed tensor shows in the outputs."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight, generator=generator)
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if tensor.dim() != 1:
                continue
            noise = torch.randn(tensor.shape, generator=generator) * 0.1
            if name.endswith("running_var"):
                tensor.copy_(noise.abs() + 0.5)
            elif name.endswith("weight"):  # norm scales
                tensor.copy_(noise + 1.0)
            else:
                tensor.copy_(noise)
