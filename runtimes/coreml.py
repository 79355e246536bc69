"""CoreML runtime: ``coremltools.models.MLModel(...).predict`` on macOS; elsewhere a PlatformError.

Core ML prediction exists only on macOS; on Linux an artifact is checked by its converter from the spec
(see converters/coreml.py) and cannot be run. Options: ``compute_units`` (all | cpu_and_ne | cpu_only;
default the one recorded at conversion; others change the numbers, see ``edge verify --runtime-option``).
"""
from __future__ import annotations

import contextlib
import io
import platform
from typing import Any

import numpy as np

from edge.errors import PlatformError
from edge.runtimes.base import Session

COMPUTE_UNITS = {"all": "ALL", "cpu_and_ne": "CPU_AND_NE", "cpu_only": "CPU_ONLY"}


def not_macos_reason() -> str | None:
    if platform.system() == "Darwin":
        return None
    return f"CoreML prediction needs macOS (this is {platform.system() or 'not macOS'})"


class CoreMLSession(Session):
    name = "coreml"
    OPTIONS = {"compute_units": str}
    extra = "coreml"
    requires = ("coremltools",)
    # the Neural Engine and the GPU compute in fp16: other units than the converted ones change the numbers
    NUMERIC_OPTIONS = {"compute_units": "all"}

    @classmethod
    def numeric_defaults(cls, manifest: Any) -> dict[str, str]:
        return {"compute_units": str((manifest.options if manifest else {}).get("compute_units", "all"))}

    def _load(self) -> None:
        reason = not_macos_reason()
        if reason:
            raise PlatformError(f"{reason}: {self.artifact.path} can be loaded for prediction only on a Mac; "
                                f"here its spec was checked at conversion (manifest status "
                                f"{self.artifact.manifest.status!r})")
        with contextlib.redirect_stderr(io.StringIO()):
            import coremltools as ct
        m = self.artifact.manifest
        units = self.options.get("compute_units") or m.options.get("compute_units", "all")
        if units not in COMPUTE_UNITS:
            from edge.errors import UnknownNameError
            raise UnknownNameError("CoreML compute_units", str(units), COMPUTE_UNITS)
        self.model = ct.models.MLModel(str(self.artifact.main_path), compute_units=getattr(ct.ComputeUnit, COMPUTE_UNITS[units]))
        self._image = m.details.get("image_input")
        self.load_details = {"compute_units": units, "coreml_target": m.options.get("coreml_target")}

    def _feed(self, arrays: list[np.ndarray]) -> dict[str, Any]:
        if not self._image:
            return {t.name: a for t, a in zip(self.inputs, arrays)}
        # An image artifact takes pixels: undo the recorded normalization (rounds to 8-bit pixels).
        from PIL import Image
        rec, pre = self._image, self.artifact.manifest.model.get("preprocessing", {})
        mean = np.asarray(pre["mean"], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(pre["std"], np.float32).reshape(1, -1, 1, 1)
        x = arrays[0]
        if x.shape[0] != 1:
            raise PlatformError("an image-input CoreML artifact takes one image per call; use batch 1")
        pixels = np.clip(np.rint((x * std + mean) / float(pre.get("scale", 1 / 255))), 0, 255).astype(np.uint8)[0]
        mode = "L" if rec["color_layout"] == "GRAYSCALE" else "RGB"
        img = Image.fromarray(pixels[0] if mode == "L" else pixels.transpose(1, 2, 0), mode)
        return {self.inputs[0].name: img}

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        out = self.model.predict(self._feed(arrays))
        return [np.asarray(out[t.name], dtype=np.float32) for t in self.outputs]

    def _close(self) -> None:
        self.model = None
