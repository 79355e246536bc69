"""edge.passes.rank: rank > 5 tensors rewritten with rank <= 5 ops, bit-identical; and the CoreML route using it."""
from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

import edge
from edge.passes.rank import lower_rank, max_rank, merged_permute, permute_moves
from tests.conftest import needs


class ViewPermuteView(nn.Module):
    """``x.view(shape).permute(perm)`` back to the input's rank: a pure data movement through rank len(shape)."""

    def __init__(self, shape: tuple[int, ...], perm: tuple[int, ...]):
        super().__init__()
        self.shape, self.perm = shape, perm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.shape).permute(self.perm).reshape(x.shape[0], -1, x.shape[-1])


class HieraLike(nn.Module):
    """Hiera's forms at batch 2 (no size-1 dim to drop): unroll, q/k/v split with unbind, query pooling with max,
    plus select, strided slice, amax over two dims, argmax and elementwise ops on rank-6 and rank-7 values."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b = x.shape[0]
        y = x.view(b, 8, 2, 8, 2, 16).permute(0, 2, 4, 1, 3, 5).reshape(b * 4, 8, 8, 16)
        q, k, v, _ = y.view(b, -1, 4, 4, 4, 4).permute(3, 0, 4, 2, 1, 5).unbind(0)
        pooled = y.view(b, 2, 2, 4, 2, 128).max(dim=3).values
        z = (y.view(b, 2, 2, 4, 2, 8, 16) * 2.0).neg()   # elementwise on rank 7, a one-element operand
        z = z + torch.ones(1)
        picked = z.select(3, 1)[:, :, :, ::2]
        outs = (q + k * v, pooled, picked, z.amax(dim=(1, 4)), z.argmax(dim=5), torch.relu(z))
        return tuple(t.reshape(b, -1) for t in outs)


def _exported(model: nn.Module, x: torch.Tensor):
    return torch.export.export(model.eval(), (x,)).run_decompositions({})


def _lowered_is_bit_identical(model: nn.Module, x: torch.Tensor) -> int:
    ep = _exported(model, x)
    assert max_rank(ep) > 5
    with torch.no_grad():
        want = model(x)
    n = lower_rank(ep, (x,))
    assert n > 0 and max_rank(ep) <= 5, ep.graph
    got = ep.module()(x)
    for w, g in zip(*(t if isinstance(t, tuple) else (t,) for t in (want, got))):
        assert w.shape == g.shape and w.dtype == g.dtype and torch.equal(w, g)
    return n


def _random_permutation(rank: int, seed: int) -> tuple[int, ...]:
    perm = list(range(rank))
    random.Random(seed).shuffle(perm)
    return tuple(perm)


@pytest.mark.parametrize("shape,perm,merged_rank", [
    ((2, 8, 2, 8, 2, 16), (0, 2, 4, 1, 3, 5), 6),        # Hiera's unroll at batch 2: no merge possible
    ((1, 8, 2, 8, 2, 16), (0, 2, 4, 1, 3, 5), 5),        # at batch 1: the size-1 dim dropped
    ((2, 3, 4, 5, 6, 7), (0, 1, 4, 5, 2, 3), 3),          # adjacent dims merged
    ((2, 3, 2, 3, 2, 3, 2), (6, 5, 4, 3, 2, 1, 0), 7),    # reversed rank 7: no merge possible
    ((2, 3, 2, 2, 3, 2, 2, 2), _random_permutation(8, 0), None),
    ((3, 2, 2, 2, 2, 3, 2), _random_permutation(7, 1), None),
])
def test_permutations_through_high_rank_are_bit_identical(shape, perm, merged_rank):
    if merged_rank is not None:
        assert len(merged_permute(shape, list(perm))[0]) == merged_rank
    x = torch.randn(shape[0], math.prod(shape[1:-1]), shape[-1])
    _lowered_is_bit_identical(ViewPermuteView(shape, perm), x)


@pytest.mark.parametrize("seed", range(20))
def test_permute_moves_compose_to_the_permutation(seed):
    rank = 6 + seed % 3
    perm = list(_random_permutation(rank, seed))
    shape = [2 + (i + seed) % 3 for i in range(rank)]
    t = torch.arange(torch.Size(shape).numel())
    x = t
    for s, p in permute_moves(shape, perm):
        assert len(s) == 4
        x = x.reshape(s).permute(p)
    assert torch.equal(x.reshape(-1), t.reshape(shape).permute(perm).reshape(-1))


@pytest.mark.parametrize("batch", [1, 2])
def test_hiera_forms_and_selections_are_bit_identical(batch):
    assert _lowered_is_bit_identical(HieraLike(), torch.randn(batch, 16, 16, 16)) >= 6


class Broadcasts(nn.Module):
    """Rank-6 broadcasting (an outer sum), an expand (nearest upsampling written as one), a concatenation, where."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        b = x.shape[0]
        outer = x.view(b, 1, 1, 4, 4, 16) + x.view(b, 4, 4, 16)[:, :2, :2].reshape(b, 2, 2, 1, 1, 16)
        up = x.view(b, 4, 4, 1, 16, 1).expand(b, 4, 4, 2, 16, 2)
        six = x.view(b, 2, 2, 2, 2, 16)
        cat = torch.cat([six, six * 2, six.neg()], dim=3)
        return tuple(t.reshape(b, -1) for t in (torch.where(outer > 0, outer, 0.5 * outer), up, cat))


class CoreForms(nn.Module):
    """HieraLike's and Broadcasts' float forms as one output (a Core ML model's outputs are float)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = (*HieraLike()(x), *Broadcasts()(x[:, 0].contiguous()))
        return torch.cat([t for t in outs if t.is_floating_point()], dim=1)


@pytest.mark.parametrize("batch", [1, 2])
def test_broadcasts_expands_and_concatenations_are_bit_identical(batch):
    assert _lowered_is_bit_identical(Broadcasts(), torch.randn(batch, 16, 16)) >= 5


@pytest.mark.parametrize("model,shape", [(HieraLike(), (2, 16, 16, 16)), (Broadcasts(), (2, 16, 16))])
def test_a_dynamic_batch_is_inferred_by_the_reshapes(model, shape):
    x = torch.randn(shape)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    ep = ep.run_decompositions({})
    assert lower_rank(ep, (x,)) >= 5 and max_rank(ep) <= 5
    for batch in (3, 1):   # other batches than the example's
        x = torch.randn(batch, *shape[1:])
        for want, got in zip(model(x), ep.module()(x)):
            assert torch.equal(want, got)


class Rank5(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(2, 4, 4, 2, 8).permute(0, 2, 1, 3, 4).reshape(2, 32, 8).amax(dim=1)


class Rank6Softmax(nn.Module):
    """A rank-6 tensor read by an op the pass does not rewrite (softmax over a dim): the group is left alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.view(2, 2, 2, 2, 2, 16).softmax(dim=3)
        return y.reshape(2, 16, 16) + x.view(2, 4, 4, 16).view(2, 2, 2, 2, 2, 16).permute(0, 2, 1, 3, 4, 5).reshape(
            2, 16, 16)


class Rank6Matmul(nn.Module):
    """A rank-6 tensor read by a matmul (not rewritten): left alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.view(2, 2, 2, 2, 2, 16)
        return (y @ y.transpose(-1, -2)).reshape(2, 2, -1)


class Rank6OuterSum(nn.Module):
    """A broadcasting add whose operands alternate broadcast dims six times: no merge brings it to rank 5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.view(2, 1, 4, 1, 4, 16) + x[:, :8].reshape(2, 2, 1, 4, 1, 16)).reshape(2, 2, -1)


@pytest.mark.parametrize("model", [Rank5(), Rank6Matmul(), Rank6OuterSum()])
def test_graphs_it_cannot_or_need_not_rewrite_are_unchanged(model):
    x = torch.randn(2, 16, 16)
    ep = _exported(model, x)
    code = ep.graph_module.code
    assert lower_rank(ep, (x,)) == 0
    assert ep.graph_module.code == code


def test_nothing_is_rewritten_unchecked():
    x = torch.randn(1, 16, 16, 16)
    ep = _exported(HieraLike(), x)
    code = ep.graph_module.code
    assert lower_rank(ep, (torch.randn(1, 3),)) == 0   # inputs the program cannot run on: no check, no rewrite
    assert ep.graph_module.code == code


def test_only_the_group_it_can_rewrite_is_rewritten():
    x = torch.randn(2, 16, 16)
    ep = _exported(Rank6Softmax(), x)
    assert lower_rank(ep, (x,)) == 3   # view, permute, clone of the second group; the softmax group stays rank 6
    assert max_rank(ep) == 6 and "softmax" in ep.graph_module.code
    assert torch.equal(ep.module()(x), Rank6Softmax()(x))


class SlicedOutput(nn.Module):
    """Returns a whole-range slice (Swin2SR's ``reconstruction[:, :, :h * s, :w * s]``): ``aten.alias`` once
    decomposed, the program's output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)[:, :, :x.shape[2], :x.shape[3]]


def test_an_alias_the_program_returns_keeps_its_name():
    from edge.converters.coreml import drop_aliases
    ep = _exported(SlicedOutput(), torch.randn(1, 3, 8, 8))
    out = ep.graph_signature.output_specs[0].arg.name
    assert drop_aliases(ep) == 1
    names = {n.name: n for n in ep.graph.nodes}
    assert names[out].target is torch.ops.aten.clone.default   # coremltools reads outputs by these names


@pytest.mark.slow
@needs("coremltools", "coreml")
@pytest.mark.parametrize("model,shape,dynamic", [(CoreForms(), (2, 16, 16, 16), False),
                                                 (CoreForms(), (2, 16, 16, 16), True),
                                                 (SlicedOutput(), (1, 3, 8, 8), False)],
                         ids=["rank6", "rank6-dynamic-batch", "alias-output"])
def test_coreml_converts_them(model, shape, dynamic, tmp_path):
    art = edge.convert(model.eval(), target="coreml", example_inputs=(torch.randn(shape),), out=tmp_path / "a",
                       dynamic_batch=dynamic)
    assert art.manifest.status in ("spec-checked", "verified")
    if isinstance(model, CoreForms):
        assert "rank_lowered" in art.manifest.details


@pytest.mark.slow
@needs("coremltools", "coreml")
@needs("transformers", "dev")
def test_coreml_converts_swin2sr(tmp_path):
    """transformers' Swin2SR: a returned whole-range slice and rank-6 window partitions."""
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution

    class Reconstruction(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = Swin2SRForImageSuperResolution(Swin2SRConfig(
                image_size=16, embed_dim=16, depths=[1, 1], num_heads=[1, 1], window_size=4, upscale=2)).eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x).reconstruction
    art = edge.convert(Reconstruction(), target="coreml", example_inputs=(torch.randn(1, 3, 16, 16),),
                       out=tmp_path / "a")
    assert art.manifest.status in ("spec-checked", "verified")
    assert "rank_lowered" in art.manifest.details
