"""Factories used by the intake tests as `tests/models_for_tests.py:build`."""
import torch


def build():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 3))


def broken():
    raise RuntimeError("factory exploded")
