"""A few fully connected layers with ReLU between them."""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """A few fully connected layers with ReLU between them (the box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + dims, dims + [output_dim]))

    @property
    def first(self) -> nn.Linear:
        return cast(nn.Linear, self.layers[0])

    @property
    def last(self) -> nn.Linear:
        return cast(nn.Linear, self.layers[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x
