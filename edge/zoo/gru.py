"""GRU sequence classifiers: an image read as a sequence of rows (or any [B, T, F] sequence) through nn.GRU.

The ``gru`` optimize pass (edge/passes/recurrent.py) turns the nn.GRU into the tuned form on
targets where that is faster (ExecuTorch, CoreML, ...) and keeps the native op on ONNX/OpenVINO.
"""
from __future__ import annotations

import torch
from torch import nn

from edge.zoo import register_model
from edge.zoo.digits import LABELS, PREPROCESSING, SIZE, test_set


class GRUClassifier(nn.Module):
    """[B, T, F] sequences (or [B, 1, T, F] images, rows as steps) -> nn.GRU -> last hidden state -> Linear."""

    def __init__(self, input_size: int = 64, hidden_size: int = 128, num_classes: int = 10, num_layers: int = 1,
                 bidirectional: bool = False):
        super().__init__()
        self.gru = nn.GRU(input_size, hidden_size, num_layers=num_layers, batch_first=True,
                          bidirectional=bidirectional)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:                      # [B, 1, H, W] image: H rows of W features
            x = x.flatten(1, 2)
        _, h_n = self.gru(x)
        dirs = 2 if self.gru.bidirectional else 1
        # [dirs, B, H] -> [B, dirs * H] (forward then backward) without unbind: a view every target delegates
        return self.head(h_n[-dirs:].transpose(0, 1).reshape(x.shape[0], -1))


@register_model("gru_classifier", input_shape=(1, 196, 64), num_classes=10, task="classification",
                tags=("recurrent", "gru"), test_shapes=[(1, 24, 64)])
def gru_classifier(**kw) -> nn.Module:
    """nn.GRU 64->128 over 196 steps + a linear head (the STACK.md GRU case), random init."""
    return GRUClassifier(**kw)


@register_model("gru_digits", input_shape=(1, 1, SIZE, SIZE), num_classes=10, preprocessing=PREPROCESSING,
                weights="gru_digits.safetensors", test_set=test_set, labels=LABELS, tags=("recurrent", "gru", "digits"))
def gru_digits(**kw) -> nn.Module:
    """A GRU (32 -> 64, bidirectional) reading the 32 rows of a 32x32 digit, trained here."""
    return GRUClassifier(**{"input_size": SIZE, "hidden_size": 64, "bidirectional": True, **kw})
