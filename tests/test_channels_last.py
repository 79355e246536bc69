"""Channels-last forms for XNNPACK (edge/passes/channels_last.py) and the group norm written on the map.

On captured programs: the regions and affines are rewritten where they should be, left alone where they should
not, and the numbers do not change. Through ExecuTorch: the artifact is verified, one delegate call, and the
XNNPACK runtime moves no map between layouts but the input and the output (counted in its ETDump profile).
"""
from __future__ import annotations

import glob

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edge
from edge.passes import graph as G
from tests.conftest import has
from tests.timm_like import LayerNorm2d

REGION = "permute to channels-last and back around per-channel ops (written on the map)"
AFFINE = "per-channel product / sum of a map (a depthwise 1 x 1 convolution)"
pytestmark = pytest.mark.skipif(not has("executorch"), reason="executorch not installed: pip install 'edge[executorch]'")


class ConvNeXtBlock(nn.Module):
    """transformers' ConvNext layer: a depthwise conv, then LayerNorm, MLP and layer scale on the permuted map."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem, self.norm0 = nn.Conv2d(3, c, 2, stride=2), LayerNorm2d(c)
        self.dw, self.ln = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.LayerNorm(c, eps=1e-6)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        x = self.norm0(self.stem(x))
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.fc2(F.gelu(self.fc1(self.ln(y))))
        return x + y.permute(0, 3, 1, 2)


class PoolFormerBlock(nn.Module):
    """PoolFormer's block: GroupNorm(1, C), pooling minus identity, layer scales ``[C, 1, 1]``, a hand-written
    channel norm's affine ``w[:, None, None] * x + b[:, None, None]`` and a per-channel sum."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem, self.norm = nn.Conv2d(3, c, 2, stride=2), nn.GroupNorm(1, c)
        self.norm4 = nn.GroupNorm(4, c)
        self.pool, self.fc = nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Conv2d(c, c, 1)
        self.scale = nn.Parameter(torch.rand(c) + 0.5)
        self.w, self.b, self.shift = (nn.Parameter(torch.randn(c)) for _ in range(3))

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(x)
        x = x + self.scale.unsqueeze(-1).unsqueeze(-1) * (self.pool(y) - y)
        x = self.w[:, None, None] * self.fc(self.norm4(x)) + self.b[:, None, None]
        return x + self.shift.reshape(1, -1, 1, 1)


class NotARegion(nn.Module):
    """Permutes that must stay: a region that reduces over H, one whose map is also read across H and W, one on
    a map XNNPACK does not hold channels-last (the model's input), and a product with a constant along W."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(c, c, 1), nn.Linear(c, c)
        self.along_w = nn.Parameter(torch.rand(4, 1) + 0.5)

    def forward(self, x):
        a = self.conv(x).permute(0, 2, 3, 1)
        a = self.fc(a).mean(1, keepdim=True).permute(0, 3, 1, 2)            # over H
        b = self.conv(x).permute(0, 2, 3, 1)
        b = (self.fc(b) + b.transpose(1, 2)).permute(0, 3, 1, 2)            # across H and W
        c = self.fc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)              # the input
        d = self.conv(x) * self.along_w                                      # [4, 1]: along W, not the channels
        return a + b + c + d


def _forms(model, x):
    details: dict = {}
    out = G.to_xnnpack_forms(torch.export.export(model, (x,)), details)
    return out, details["program_rewrites"]["decomposed"]


def _count(program, target) -> int:
    return sum(1 for n in program.graph.nodes if n.op == "call_function" and n.target is target)


@pytest.mark.parametrize("optimized", [False, True])
def test_regions_and_affines_are_written_on_the_map(optimized):
    """On the captured module (``layer_norm`` ops) and after edge's module passes for ExecuTorch (LayerNorms as
    linear means: the region is then a graph, not a chain, and a reshape to rows and back is part of it)."""
    torch.manual_seed(0)
    aten = torch.ops.aten
    for model, regions, affines in ((ConvNeXtBlock(), 2, 3), (PoolFormerBlock(), 0, 3)):
        x = torch.randn(2, 3, 8, 8)
        run = edge.optimize(model.eval(), target="executorch") if optimized else model.eval()
        program = torch.export.export(run, (x,))
        out, rec = _forms(run, x)
        assert rec.get(REGION, 0) == regions and rec.get(AFFINE, 0) == affines, rec
        assert _count(out, aten.permute.default) == 0 and _count(out, aten.linear.default) == 0
        assert _count(program, aten.permute.default) == 2 * regions   # the caller's program is not changed
        with torch.no_grad():
            torch.testing.assert_close(out.module()(x), model(x), rtol=1e-4, atol=1e-5)


def test_permutes_that_are_not_channel_regions_stay():
    torch.manual_seed(0)
    model, x = NotARegion().eval(), torch.randn(1, 8, 4, 4)
    out, rec = _forms(model, x)
    assert REGION not in rec and AFFINE not in rec, rec
    back = [n for n in out.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.permute.default
            and list(n.args[1]) == [0, 3, 1, 2]]
    assert len(back) == 3
    with torch.no_grad():
        torch.testing.assert_close(out.module()(x), model(x), rtol=1e-4, atol=1e-5)


def test_group_norm_of_a_map_keeps_the_numbers():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 5, 3) * 3 + 1
    w, b = torch.rand(12) + 0.5, torch.randn(12)
    for groups in (1, 3, 12):
        for weight, bias in ((w, b), (None, None), (w, None)):
            torch.testing.assert_close(G._group_norm(x, groups, weight, bias, 1e-5),
                                       F.group_norm(x, groups, weight, bias, 1e-5), rtol=1e-4, atol=1e-5)
    x3 = torch.randn(2, 12, 7)   # [N, C, L]: the same form on [N, C, L, 1]
    torch.testing.assert_close(G._group_norm(x3, 4, w, b, 1e-5), F.group_norm(x3, 4, w, b, 1e-5),
                               rtol=1e-4, atol=1e-5)


def _transposes(pte: str, x: torch.Tensor, tmp_path) -> int:
    """How many transposes the XNNPACK runtime ran in one call (its ETDump profile)."""
    from executorch.devtools import Inspector
    from executorch.extension.pybindings.portable_lib import _load_for_executorch
    module = _load_for_executorch(pte, enable_etdump=True)
    module.forward([x])
    module.write_etdump_result_to_file(str(tmp_path / "run.etdp"))
    events = Inspector(etdump_path=str(tmp_path / "run.etdp")).to_dataframe()["event_name"]
    return sum(1 for e in events if str(e).startswith("Transpose"))


@pytest.mark.slow
@pytest.mark.parametrize("make", [ConvNeXtBlock, PoolFormerBlock])
def test_no_map_changes_layout_inside_the_delegate(make, tmp_path):
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(1, 3, 16, 16)
    art = edge.convert(model, target="executorch", example_inputs=(x,), out=tmp_path / "a")
    m = art.manifest
    assert m.status == "verified" and m.parity["passed"], m.parity
    assert m.details["delegation"]["delegate_calls"] == 1 and not m.details["delegation"]["portable_ops"]
    # the input to channels-last and the output back: nothing in between (without these forms: 16 for each block)
    assert _transposes(glob.glob(str(tmp_path / "a" / "*.pte"))[0], x, tmp_path) == 2
