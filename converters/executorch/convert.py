"""The ExecuTorch converter: the recipe per precision, lowering, the host check, the files it writes."""
from __future__ import annotations

import time
import warnings
from typing import Any

from edge.converters.base import KEEP_FLOAT, ConversionJob, ConversionResult, Converter, Option, Recipe
from edge.converters.executorch.bundle import BPTE, bundle
from edge.converters.executorch.lowering import delegation_summary, lower
from edge.converters.executorch.partition import scan_bodies
from edge.converters.executorch.quantize import RECIPES
from edge.errors import ConversionError, EdgeWarning

PTE, ETRECORD = "model.pte", "etrecord.bin"


class ExecuTorchConverter(Converter):
    name = "executorch"
    format = "pte"
    runtime = "executorch"
    extra = "executorch"
    requires = ("executorch", "torchao")
    precisions = ("fp32", "fp16", "int8", "int8-dynamic", "8da4w")
    needs_calibration = ("int8",)
    # calib_batches: how many calibration batches static int8 observes. XNNPACK's activation observer
    # (HistogramObserver) costs a torch.histc per activation per batch: 64 batches of a 4-block ViT took
    # most of a minute, while 16 keep digits accuracy within a point of fp32.
    options = {"bundle": Option(False, (False, True), "bundle example inputs and expected outputs"),
               "etrecord": Option(True, (True, False), "write etrecord.bin (maps profiles to ops)"),
               "calib_batches": Option(16, (4, 8, 16, 32, 64), "int8: calibration batches observed"),
               "keep_float": KEEP_FLOAT}   # module names left unannotated by the quantizer (fp32)
    forms = {"attention": "xnnpack", "layernorm": "decomposed", "rnn": "scan", "mingru_chunk": 4,
             "mingru_products": "kept"}

    def convert(self, job: ConversionJob) -> ConversionResult:
        self.require()
        details: dict[str, Any] = {"backend": "XnnpackBackend", "partitioner": "XnnpackPartitioner"}
        t = time.perf_counter()   # the first import costs ~5 s per process: not part of lowering this model
        import executorch.backends.xnnpack.partition.xnnpack_partitioner  # noqa: F401
        import executorch.exir  # noqa: F401
        details["import_seconds"] = round(time.perf_counter() - t, 2)
        t0, c0 = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = job.require_program(self.name)   # the pipeline's, after this precision's recipe
            details["source"] = job.recipe.get("source", "the run's captured program")
            passes_on = job.passes is not None   # None: edge's optimize passes were off
            if passes_on:   # the program-level forms belong to the optimize passes: off with optimize=False
                from edge.passes.graph import to_xnnpack_forms
                program = to_xnnpack_forms(program, details)   # a new program: the run's shared one is not changed
            else:
                details["program_rewrites"] = "off (optimize=False)"
            details["prepare_seconds"] = round(time.perf_counter() - t0, 2)
            details["prepare_cpu_seconds"] = round(time.process_time() - c0, 2)
            t1, c1 = time.perf_counter(), time.process_time()
            want_etrecord = bool(job.options.get("etrecord", True))
            if want_etrecord and scan_bodies(program.graph_module):
                want_etrecord = False   # ExecuTorch 1.5.1's ETRecord serializer has no torch.scan: not worth building
                details["etrecord"] = ("not written: ExecuTorch's ETRecord serializer cannot write torch.scan (the "
                                       "GRU/LSTM loop); the ETDump profile names delegate calls, not source ops")
            refused: dict[str, str] = {}   # node -> why XNNPACK's config did not take it
            edge_mgr = lower(program, etrecord=want_etrecord, details=details, refused=refused)
            details["delegation"] = delegation_summary(edge_mgr.exported_program().graph_module,
                                                       passes_on=passes_on, refused=refused)
            et_program = edge_mgr.to_executorch()
        # wall time, and this process's CPU time (the wall figure grows when other jobs share the cores)
        details["lowering_seconds"] = round(time.perf_counter() - t1, 2)
        details["lowering_cpu_seconds"] = round(time.process_time() - c1, 2)
        details["convert_seconds"] = round(time.perf_counter() - t0, 2)
        details["convert_cpu_seconds"] = round(time.process_time() - c0, 2)
        if "warning" in details["delegation"]:   # outside the block above, which silences backend chatter
            warnings.warn(f"executorch: {details['delegation']['warning']}", EdgeWarning, stacklevel=2)

        pte = job.out_dir / PTE
        pte.write_bytes(et_program.buffer)
        host_out = self._host_check(pte, job, details)
        files = [PTE]
        if job.options.get("bundle"):
            bundle(et_program, job, host_out, job.out_dir / BPTE, details)
            pte.unlink()   # the bundled program holds the same program: one copy only
            files = [BPTE]
        if want_etrecord:
            et_program.get_etrecord().save(str(job.out_dir / ETRECORD))
            files.append(ETRECORD)
        details["program_bytes"] = len(et_program.buffer)
        return ConversionResult(files=files, details=details, format="bpte" if job.options.get("bundle") else None)

    def wants_expected_outputs(self, job: ConversionJob) -> bool:
        return bool(job.options.get("bundle"))   # a bundled float program carries eager's outputs

    def recipe(self, job: ConversionJob) -> Recipe | None:
        """fp32 lowers the shared program; fp16, int8, int8-dynamic and 8da4w have their recipes
        (:mod:`edge.converters.executorch.quantize`), which the pipeline captures."""
        make = RECIPES.get(job.precision)
        return None if make is None else make(job)

    def _host_check(self, pte, job: ConversionJob, details: dict[str, Any]):
        """Run the program once on this host: proves XNNPACK runs it (fp16 needs hardware support)."""
        import torch
        from executorch.runtime import Runtime
        try:
            method = Runtime.get().load_program(str(pte)).load_method("forward")
            out = method.execute([t.contiguous() for t in job.example_inputs])
        except Exception as e:
            pte.unlink(missing_ok=True)
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            if job.precision == "fp16":
                raise ConversionError(
                    f"XNNPACK cannot run the fp16 program on this host ({reason}); XNNPACK's fp16 kernels need "
                    f"ARMv8.2 FP16 arithmetic or x86 AVX512-FP16/F16C support. Convert with --precision fp32 "
                    f"(or int8) here, or build fp16 on a machine whose CPU runs it") from e
            raise ConversionError(f"the lowered ExecuTorch program does not run on this host: {reason}") from e
        return [o.detach().clone() if isinstance(o, torch.Tensor) else o for o in out]
