"""Helpers shared by the model tests (plain functions; fixtures live in conftest.py)."""

import torch


def perturbed(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Add noise to every weight (LayerNorms and biases too) so a misplaced one shows; eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()
