"""ExecuTorch target: vit_tiny_digits in fp32/fp16/int8 lowered to XNNPACK, run and verified (full delegation
with the optimize passes, accuracy of int8 against fp32); a tiny net for int8-dynamic, 8da4w, the bundled
program and its on-device test, the ETDump profile; bad input errors."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("executorch", reason="the executorch extra is not installed")
pytest.importorskip("torchao", reason="the executorch extra (torchao) is not installed")

import edge  # noqa: E402
from edge.errors import ArtifactError, UsageError, VerificationError  # noqa: E402
from edge.profile import format_kinds, op_kinds  # noqa: E402

DIGITS_PRECISIONS = ("fp32", "fp16", "int8")


class Small(torch.nn.Module):
    """Conv + two Linears (in_features 288 and 32: both divide by the 8da4w group of 32)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3)
        self.fc1 = torch.nn.Linear(288, 32)
        self.fc2 = torch.nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def small():
    torch.manual_seed(0)
    return Small().eval(), (torch.randn(1, 1, 8, 8),)


def _out(art):
    return art.manifest.parity["outputs"]["output"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """vit_tiny_digits in three precisions, captured once, each verified by the spine on the test set."""
    arts = edge.convert_all("vit_tiny_digits", targets=["executorch"], precisions=DIGITS_PRECISIONS,
                            out=tmp_path_factory.mktemp("et"))
    return {a.manifest.precision: a for a in arts}


@pytest.mark.slow
@pytest.mark.parametrize("precision", DIGITS_PRECISIONS)
def test_digits_verified_and_fully_delegated(digits, precision):
    art = digits[precision]
    m = art.manifest
    assert m.status == "verified" and m.parity["passed"] is True and m.parity["input_kind"] == "test-set"
    assert (art.path / "model.pte").is_file() and (art.path / "etrecord.bin").is_file()
    deleg = m.details["delegation"]
    assert deleg["delegate_calls"] >= 1 and deleg["delegated_nodes"] > 0
    if precision != "fp16":   # XNNPACK has no fp16 GELU: the MLP activations stay on portable kernels
        assert deleg["fully_delegated"], deleg
        assert deleg["delegate_calls"] == 1 and deleg["portable_ops"] == {}
    assert m.details["lowering_seconds"] > 0 and m.details["lowering_cpu_seconds"] > 0
    assert _out(art)["top1_agreement"] >= 0.98


@pytest.mark.slow
def test_digits_int8_accuracy_within_one_point_of_fp32(digits):
    fp32, int8 = _out(digits["fp32"]), _out(digits["int8"])
    assert int8["accuracy_samples"] == fp32["accuracy_samples"] > 100
    assert abs(int8["accuracy"] - fp32["accuracy"]) <= 0.01, (int8["accuracy"], fp32["accuracy"])
    q = digits["int8"].manifest.details["quantization"]
    assert "per-channel" in q["weights"] and "static" in q["activations"]
    assert q["fp32_modules"] == ["EdgeLayerNorm", "EdgeAttention", "ChunkedMinGRU", "TunedGRU", "TunedLSTM"]
    assert digits["int8"].manifest.details["calibration"]["kind"] == "testset"


@pytest.mark.slow
def test_digits_session_matches_eager_and_profiles(digits):
    from edge.zoo import create_model
    from edge.zoo.digits import test_set
    model, _ = create_model("vit_tiny_digits")
    x = test_set()[0][:1]
    with edge.load(digits["fp32"].path) as s:
        (y,) = s.run(x)
        ref = model(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(y, ref, atol=1e-4, rtol=1e-3)
        table = s.native_profile(s.prepare(x), iters=3)
        full = s.native_profile(s.prepare(x), iters=3, top=None)
    assert table and all(r["calls"] >= 3 and r["total_ms"] >= 0 for r in table)
    assert any(r["type"] == "xnnpack" and "[delegate 0]" in r["op"] for r in table)   # per-op, inside the delegate
    assert len(table) == min(25, len(full)) and abs(sum(r["share"] for r in full) - 1.0) < 1e-6
    # per kind of XNNPACK operator: every row counted once, the matrix multiplies among them
    kinds = op_kinds(full, iters=3)
    assert sum(k["ops"] for k in kinds) == len(full)
    assert abs(sum(k["ms"] for k in kinds) - sum(r["total_ms"] for r in full) / 3) < 1e-9
    assert any(k["kind"].startswith("Fully Connected (NC, F32)") for k in kinds)
    assert not any("#" in k["kind"] or "[delegate" in k["kind"] for k in kinds)
    assert format_kinds(kinds, top=2)[0].endswith(kinds[0]["kind"]) and len(format_kinds(kinds, top=2)) == 2


@pytest.mark.slow
def test_raw_program_reports_partial_delegation(tmp_path):
    """Without the passes a ViT block keeps LayerNorm/SDPA masking on portable kernels: the manifest says so."""
    from edge.zoo.vit import VisionTransformer
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=1,
                            num_heads=2).eval()
    with pytest.warns(UserWarning, match="not fully delegated"):
        art = edge.convert(vit, example_inputs=(torch.randn(1, 1, 8, 8),), target="executorch",
                           out=tmp_path / "raw", optimize=False)
    d = art.manifest.details["delegation"]
    assert not d["fully_delegated"] and d["delegate_calls"] > 1
    assert "aten_native_layer_norm_default" in d["portable_ops"] and "not fully delegated" in d["warning"]
    assert art.manifest.status == "verified"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["int8-dynamic", "8da4w"])
def test_small_dynamic_quantization(tmp_path, precision):
    model, args = small()
    art = edge.convert(model, example_inputs=args, target="executorch", precision=precision, out=tmp_path / "q")
    assert art.manifest.status == "verified"
    d = art.manifest.details
    assert d["delegation"]["fully_delegated"], d["delegation"]
    assert "dynamic" in d["quantization"]["activations"]
    if precision == "8da4w":
        assert d["quantization"]["layers"] == "2 of 2 nn.Linear"


@pytest.mark.slow
def test_bundled_program_carries_its_test(tmp_path):
    model, args = small()
    art = edge.convert(model, example_inputs=args, target="executorch", out=tmp_path / "b", options={"bundle": True})
    assert art.manifest.format == "bpte" and (art.path / "model.bpte").is_file()
    assert not (art.path / "model.pte").exists() and art.manifest.status == "verified"
    with edge.load(art.path) as s:
        rec = s.run_bundled_test()
        assert rec["passed"] and rec["expected_outputs_from"] == "PyTorch eager"
        (y,) = s.run(args[0])
        np.testing.assert_allclose(y, model(*args).detach().numpy(), atol=1e-5, rtol=1e-4)
        assert s.native_profile(s.prepare(args[0]), iters=2)


@pytest.mark.slow
def test_bundled_test_fails_on_wrong_expected_output(tmp_path):
    """The bundled check can fail: a bundle whose expected output is off by 1 is rejected."""
    from edge.artifact import Artifact, Manifest, TensorSpec
    from edge.converters.base import ConversionJob
    from edge.converters.executorch import bundle, lower
    model, args = small()
    et = lower(torch.export.export(model, args), etrecord=False).to_executorch()
    job = ConversionJob(program=None, module=model, example_inputs=args, inputs=[], outputs=[], precision="int8",
                        out_dir=tmp_path)
    details: dict = {}
    bundle(et, job, [model(*args).detach() + 1.0], tmp_path / "model.bpte", details)
    manifest = Manifest(target="executorch", format="bpte", runtime="executorch", precision="int8",
                        files={"model.bpte": ""}, inputs=[TensorSpec("input", [1, 1, 8, 8])],
                        outputs=[TensorSpec("output", [1, 10])], details=details)
    from edge.runtimes.executorch import ExecuTorchSession
    s = ExecuTorchSession(Artifact(tmp_path, manifest))
    with pytest.raises(VerificationError, match="bundled test failed"):
        s.run_bundled_test()


def test_bad_options_and_precision_are_clear_errors(tmp_path):
    model, args = small()
    with pytest.raises(UsageError, match="precision for target 'executorch'.*8da4w"):
        edge.convert(model, example_inputs=args, target="executorch", precision="int4", out=tmp_path / "x")
    with pytest.raises(UsageError, match="bundle"):
        edge.convert(model, example_inputs=args, target="executorch", out=tmp_path / "y", options={"bundle": "yes"})
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.slow
def test_run_bundled_test_needs_a_bundle(digits):
    with edge.load(digits["fp32"].path) as s:
        with pytest.raises(ArtifactError, match="--bundle"):
            s.run_bundled_test()


def test_skipped_xnnpack_passes_could_not_have_matched():
    """The lowering skips XNNPACK preprocess passes only when they provably have nothing to rewrite.

    The cheap gates must hold for the installed ExecuTorch: every pattern graph of a gated pattern pass
    holds the gate's ops (an upgrade that changes the patterns fails here, not silently in a model).
    """
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa
    from edge.converters.executorch import lower

    def names(g):
        return {str(getattr(n.target, "__name__", n.target)) for n in g.graph.nodes if n.op == "call_function"}
    for g in sdpa.get_graphs():
        assert all(any(part in t for t in names(g)) for part in ("aten.bmm", "aten._softmax", "aten.any"))
    for g in bilinear_2d.get_graphs():
        assert any("upsample_bilinear2d" in t for t in names(g))

    nn = torch.nn
    up = type("Up", (nn.Module,), {"forward": lambda self, x: nn.functional.interpolate(x, scale_factor=2.0,
                                                                                         mode="bilinear")})
    cat6 = type("Cat6", (nn.Module,), {"forward": lambda self, x: torch.cat([x * i for i in range(6)], dim=1)})
    def fn(name, forward, **attrs):   # a one-line module
        return type(name, (nn.Module,), {"forward": forward, **attrs})()
    mm = nn.Module()
    mm.w = nn.Parameter(torch.randn(3, 3))
    mm.forward = lambda x: torch.mm(x, mm.w) + 1.0
    to_cl = fn("ToCL", lambda self, x: (x + 1.0).to(memory_format=torch.channels_last) * 2.0)
    clone = fn("Clone", lambda self, x: (x + 1.0).clone() * 2.0)
    max_dim = fn("MaxDim", lambda self, x: torch.max(x + 1.0, dim=3, keepdim=True)[0] * 2.0)
    pad = fn("Pad", lambda self, x: nn.functional.pad(x + 1.0, (1, 1)) * 2.0)
    cases = [  # (module, input, passes that must run on it)
        (nn.Sequential(nn.Conv1d(2, 2, 1), nn.BatchNorm1d(2)), (1, 2, 4), {"Conv1dUnsqueezePass", "FuseBatchNormPass"}),
        (nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.BatchNorm2d(2)), (1, 2, 4, 4), {"DecomposeBatchNorm"}),
        (nn.Sequential(nn.Conv2d(2, 2, 1), nn.PReLU()), (1, 2, 4, 4), {"PReLUReshapePass"}),
        (cat6(), (1, 2, 4), {"DecomposeConcatenate"}),
        (up(), (1, 2, 4, 4), {"ConvertToUpsampleBilinear2d"}),
        (nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU()), (1, 2, 4, 4),
         {"FuseActivationPass", "ChannelsLastTaggedReshapePass"}),
        (nn.Sequential(nn.Linear(4, 4), nn.Hardtanh()), (2, 4), {"FuseActivationPass"}),
        (mm, (3, 3), {"ConvertToLinearPass"}),
        (to_cl, (1, 2, 4, 4), {"DimOrderOpsRevertPass", "RemoveRedundantCopyPass"}),   # 3 copies -> 1
        (clone, (1, 2, 4, 4), {"XNNPACKRemoveCloneOpsTransform"}),
        (max_dim, (1, 2, 4, 4), {"RemoveGetItemPass"}),
        (pad, (1, 2, 4, 4), {"InsertPadQDQPass"}),
    ]
    for module, shape, must_run in cases:
        details: dict = {}
        lowered = lower(torch.export.export(module.eval(), (torch.randn(*shape),)), etrecord=False, details=details)
        assert not must_run & set(details["xnnpack_passes_skipped"]), (module, details)
        assert lowered.exported_program() is not None
    model, args = small()
    details = {}
    lower(torch.export.export(model, args), etrecord=False, details=details)
    assert {"PReLUReshapePass", "ConvertToSDPAPass", "DecomposeConcatenate"} <= set(details["xnnpack_passes_skipped"])
    assert "Conv1dUnsqueezePass" in details["xnnpack_passes_skipped"]   # a 2-D convolution only
    assert {"PropagateCustomMetaPass", "RemoveGetItemPass", "InsertPadQDQPass",
            "ConvertToLinearPass"} <= set(details["xnnpack_passes_skipped"])   # no q/dq, max.dim, pad or [add]mm
    assert "FuseActivationPass" not in details["xnnpack_passes_skipped"]   # relu after conv and linear
    # a relu whose input has another user cannot be fused (VisionGRU's minGRU gates): the pass is skipped
    two_users = nn.Module()
    two_users.fc = nn.Linear(4, 4)
    two_users.forward = lambda x: (lambda h: torch.relu(h) + torch.sigmoid(h.clamp(max=0.0)))(two_users.fc(x))
    details = {}
    lower(torch.export.export(two_users.eval(), (torch.randn(2, 4),)), etrecord=False, details=details)
    assert "FuseActivationPass" in details["xnnpack_passes_skipped"]


def test_skipped_edge_passes_could_not_have_matched():
    """ExecuTorch's ATen-to-edge passes are skipped only where they have nothing to rewrite: each runs on a
    program that needs it (mixed dtypes, a dynamic batch), and the gates see the ops the others rewrite."""
    from executorch.exir.passes.normalize_transpose_pass import NormalizeTransposePass
    from executorch.exir.passes.replace_broken_ops_with_function_ops_pass import ReplaceBrokenOpsWithFunctionalOpsPass
    from edge.converters.executorch import lower
    from edge.converters.executorch.speedups import _edge_pass_can_act

    class Mixed(torch.nn.Module):   # float + int64: RemoveMixedTypeOperators casts
        def forward(self, x):
            return torch.relu(x) + torch.arange(4)

    class Plain(torch.nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2.0 + x

    class BySize(torch.nn.Module):   # a SymInt (the dynamic batch) where mul takes a tensor: SymToTensorPass
        def forward(self, x):
            return torch.relu(x) * x.shape[0]

    batch = torch.export.Dim("batch", min=2, max=8)
    cases = [(Mixed(), torch.export.export(Mixed(), (torch.randn(2, 4),)), {"RemoveMixedTypeOperators"}),
             (BySize(), torch.export.export(BySize(), (torch.randn(2, 4),), dynamic_shapes=({0: batch},)),
              {"SymToTensorPass"})]
    for module, program, must_run in cases:
        details: dict = {}
        lower(program, etrecord=False, details=details)
        assert not must_run & set(details["edge_passes_skipped"]), details
    details = {}
    lower(torch.export.export(Plain(), (torch.randn(2, 4),)), etrecord=False, details=details)
    assert set(details["edge_passes_skipped"]) == {"NormalizeTransposePass", "ReplaceBrokenOpsWithFunctionalOpsPass",
                                                   "SymToTensorPass", "RemoveMixedTypeOperators"}

    g = torch.fx.Graph()   # aten.t and a view op: what the two remaining gates look for
    x = g.placeholder("x")
    g.output(g.call_function(torch.ops.aten.view.default, (g.call_function(torch.ops.aten.t.default, (x,)), [-1])))
    gm = torch.fx.GraphModule(torch.nn.Module(), g)
    assert _edge_pass_can_act(NormalizeTransposePass(), gm)
    assert _edge_pass_can_act(ReplaceBrokenOpsWithFunctionalOpsPass(), gm)


def test_lowering_restores_what_it_patches():
    """The pass gates and the type-hint cache are ExecuTorch attributes swapped only while lowering."""
    import typing

    from executorch.backends.xnnpack._passes import XNNPACKPassManager
    from executorch.exir._serialize import _dataclass
    from executorch.exir.program import _program
    from edge.converters.executorch import lower

    before = (XNNPACKPassManager.transform, _program._get_aten_to_edge_passes, _dataclass.get_type_hints)
    model, args = small()
    lower(torch.export.export(model, args), etrecord=False)
    assert (XNNPACKPassManager.transform, _program._get_aten_to_edge_passes, _dataclass.get_type_hints) == before
    assert _dataclass.get_type_hints is typing.get_type_hints


def test_const_prop_gate_sees_ops_that_read_only_graph_constants():
    """ConstPropPass folds an op whose inputs are all constants of the graph (get_attr) or none."""
    from executorch.exir.passes.const_prop_pass import ConstPropPass
    from edge.converters.executorch.speedups import _xnnpack_pass_can_act

    def graph(const_input: bool) -> torch.fx.GraphModule:
        root = torch.nn.Module()
        root.register_buffer("c", torch.ones(4))
        g = torch.fx.Graph()
        x = g.placeholder("x")
        src = g.get_attr("c") if const_input else x
        g.output(g.call_function(torch.ops.aten.mul.Tensor, (g.call_function(torch.ops.aten.relu.default, (src,)), x)))
        return torch.fx.GraphModule(root, g)

    assert _xnnpack_pass_can_act(ConstPropPass, graph(True))       # relu(c) folds
    assert not _xnnpack_pass_can_act(ConstPropPass, graph(False))  # every op reads the input


def test_whole_graph_partition_is_what_the_group_partitioner_proposes():
    """Every op delegable: one partition, the same nodes ExecuTorch's group partitioner ends with;
    one op XNNPACK refuses: no shortcut (the group partitioner splits the graph)."""
    from executorch.exir import to_edge
    from executorch.exir.backend.canonical_partitioners.pattern_op_partitioner import (
        generate_grouped_partitions_from_list_of_nodes)
    from edge.converters.executorch.partition import _whole_graph_partition, _xnnpack_partitioner

    class Refused(torch.nn.Module):   # cumsum has no XNNPACK kernel
        def forward(self, x):
            return torch.cumsum(torch.relu(x) + 1.0, dim=1) * 2.0

    model, args = small()
    for module, inputs, whole in ((model, args, True), (Refused(), (torch.randn(2, 4),), False)):
        ep = to_edge(torch.export.export(module, inputs)).exported_program()
        groups = _xnnpack_partitioner().get_matched_nodes_from_configs(ep)
        fast = _whole_graph_partition(ep.graph_module, groups)
        slow = generate_grouped_partitions_from_list_of_nodes(ep.graph_module, groups)
        assert (fast is not None) == whole
        if whole:
            assert len(slow) == 1 and set(fast) == set(slow[0].nodes)
        else:
            assert len(slow) >= 2


def test_convolutions_rewritten_as_core_convolution_keep_the_numbers():
    """conv1d/conv2d -> aten.convolution before lowering: same outputs, and nothing is left for ExecuTorch's
    second decomposition of the whole program."""
    from executorch.exir.program._program import _default_decomposition_table
    from edge.converters.executorch.speedups import _core_convolutions

    nn = torch.nn

    class Convs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 8, 3, stride=2, padding=1)
            self.b = nn.Conv2d(8, 8, (3, 1), padding=(2, 0), dilation=(2, 1), groups=4, bias=False)
            self.c = nn.Conv1d(8, 4, 3, padding=1)

        def forward(self, x):
            y = self.b(torch.relu(self.a(x)))
            return self.c(y.flatten(2))

    torch.manual_seed(0)
    x = torch.randn(1, 4, 9, 9)
    ep = torch.export.export(Convs().eval(), (x,))
    want = ep.module()(x)
    assert _core_convolutions(ep) == 3
    assert torch.equal(ep.module()(x), want)
    table = _default_decomposition_table()
    left = [n.target for n in ep.run_decompositions({}).graph.nodes if n.op == "call_function" and n.target in table]
    assert not left, left


def test_partitioner_drops_its_op_check_only_when_every_kept_op_passes(tmp_path):
    """ExecuTorch then decomposes once instead of three times; a linear XNNPACK refuses keeps the check."""
    from edge.converters.executorch.partition import _xnnpack_partitioner

    class DynamicWeight(torch.nn.Module):   # a linear whose weight is an input: XNNPACK's check refuses it
        def forward(self, x, w):
            return torch.nn.functional.linear(x, w) + 1.0

    model, args = small()
    cases = ((model, args, True), (DynamicWeight(), (torch.randn(2, 4), torch.randn(3, 4)), False))
    for module, inputs, lean in cases:
        ep = torch.export.export(module, inputs).run_decompositions({})
        ops, check = _xnnpack_partitioner().ops_to_not_decompose(ep)
        assert torch.ops.aten.linear.default in ops and (check is None) == lean
    art = edge.convert(DynamicWeight(), example_inputs=cases[1][1], target="executorch", out=tmp_path / "dyn")
    assert art.manifest.status == "verified" and art.manifest.parity["passed"] is True


def test_import_does_not_load_executorch():
    code = ("import sys, edge, edge.converters.executorch, edge.runtimes.executorch; "
            "print('executorch' in sys.modules, 'torchao' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.slow
def test_threads_option_is_put_back_on_close(digits):
    """ExecuTorch's threadpool is per process: a session's ``threads`` lasts while it is open, then the size the
    process had returns (no session leaves its setting behind for the next)."""
    from executorch.extension.pybindings import portable_lib
    before = portable_lib._threadpool_get_thread_count()
    want = 1 if before != 1 else 2
    with edge.load(digits["fp32"].path, threads=want) as session:
        assert portable_lib._threadpool_get_thread_count() == want
        session.run(np.zeros(session.artifact.manifest.inputs[0].concrete_shape(1), np.float32))
    assert portable_lib._threadpool_get_thread_count() == before


def test_lowering_speedups_match_this_executorch():
    """The speed-ups patch private ExecuTorch symbols: each must still exist in the installed release (an
    upgrade that moves one fails here, not in a user's lowering)."""
    from edge.converters.executorch.speedups import PATCHED, TESTED, speedups_unavailable
    assert speedups_unavailable() is None, speedups_unavailable()
    assert PATCHED and TESTED


def test_lowering_runs_stock_executorch_when_speedups_do_not_apply(monkeypatch):
    """On an ExecuTorch release they were not tested on, lowering takes ExecuTorch's own path and says so."""
    import torch
    from edge.converters.executorch import lower
    from edge.converters.executorch import speedups
    monkeypatch.setattr(speedups, "TESTED", ("0.0",))
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
    program = torch.export.export(model, (torch.randn(1, 8),))
    details: dict = {}
    lower(program, etrecord=False, details=details)
    assert details["speedups"].startswith("off: ExecuTorch") and "not a release they were tested on" in \
        details["speedups"]
    assert details["xnnpack_passes_skipped"] == [] and details["edge_passes_skipped"] == []


class _ConvSoftmax(torch.nn.Module):
    """Softmax over the width of a 1x1 convolution's output, as MobileViTV2's linear attention takes it."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = torch.nn.Conv2d(8, 9, 1), torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        scores = torch.softmax(y.narrow(1, 0, 1), dim=-1)          # [1, 1, 4, 16] over the last dim
        return self.out(torch.relu(y.narrow(1, 1, 8)) * scores) + torch.softmax(y, dim=-1).narrow(1, 1, 8)


@pytest.mark.slow
def test_softmax_after_a_convolution_reads_nchw(tmp_path):
    """ExecuTorch's XNNPACK lowering keeps a convolution's output channels-last through softmax, whose kernel
    then normalises over the channels (max error 0.98 on this model when lowered as ExecuTorch ships).
    edge's lowering makes softmax an NCHW op: fully delegated, and the same numbers as PyTorch."""
    from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import ChannelsLastTaggedReshapePass
    nchw = ChannelsLastTaggedReshapePass.memory_sensitive_ops_nchw
    torch.manual_seed(0)
    art = edge.convert(_ConvSoftmax().eval(), example_inputs=(torch.randn(1, 8, 4, 16),), target="executorch",
                       out=tmp_path / "cs")
    assert art.manifest.status == "verified" and art.manifest.parity["outputs"]["output"]["cosine"] > 0.99999
    assert art.manifest.details["delegation"]["delegate_calls"] == 1
    assert "softmax_layout_fix" not in art.manifest.details
    assert ChannelsLastTaggedReshapePass.memory_sensitive_ops_nchw is nchw      # put back after lowering
