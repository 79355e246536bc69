"""The bench matrix's model intake: any source ``edge convert`` takes, at the resolution a cell asks for.

Every model goes through the SDK's intake (:func:`edge.api.prepare`, which runs
:func:`edge.sources.resolve`). The one thing the matrix adds is a change of input resolution: a zoo model
at another size is rebuilt by its factory with ``img_size`` and given its resolved weights, with any
position table whose patch grid changed resampled bicubically (timm's way); a user model gets the
resolution written into its 4-D input shape.

Example:
    >>> prep = prepared("vit_tiny_digits", 16)      # the zoo model at 16 px, ready to capture
    >>> prep = prepared("my.py:build", 224, input_shapes=[(1, 3, 256, 256)])
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from edge.errors import UsageError


class ResolutionError(UsageError):
    """The model cannot be built at the requested input resolution."""


def is_zoo(model: str) -> bool:
    from edge.zoo import list_models
    return model in list_models()


def native_resolution(model: str) -> int | None:
    """The zoo model's default square input size, or None (not a zoo model, or not an image input)."""
    if not is_zoo(model):
        return None
    from edge.zoo import get_entry
    shape = get_entry(model).input_shapes[0]
    return int(shape[-1]) if len(shape) == 4 and shape[-1] == shape[-2] else None


def shapes_at(shapes: Sequence[Sequence[int]] | None, resolution: int | None) -> list[tuple[int, ...]] | None:
    """``shapes`` with the first 4-D input's H and W set to ``resolution`` ([1, 3, r, r] when none is given)."""
    if resolution is None:
        return [tuple(s) for s in shapes] if shapes else None
    if not shapes:
        return [(1, 3, resolution, resolution)]
    out = [tuple(s) for s in shapes]
    if len(out[0]) != 4:
        raise ResolutionError(f"--resolutions applies to an image input [N, C, H, W]; the first input is "
                              f"{list(out[0])}; bench it without --resolutions")
    out[0] = (*out[0][:2], resolution, resolution)
    return out


def resample_grid(t: Any, new_shape: tuple[int, ...]) -> Any:
    """Resample a [1, prefix + g*g, D] position table to [1, prefix + G*G, D] (bicubic, as timm does).

    Returns None when the shapes are not of that form, so the caller can report why it cannot adapt.
    """
    import torch
    import torch.nn.functional as F
    if t.ndim != 3 or len(new_shape) != 3 or t.shape[0] != 1 or t.shape[2] != new_shape[2]:
        return None
    for prefix in (0, 1, 2):
        g, G = math.isqrt(t.shape[1] - prefix), math.isqrt(new_shape[1] - prefix)
        if g * g == t.shape[1] - prefix and G * G == new_shape[1] - prefix and g > 0:
            grid = t[:, prefix:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(G, G), mode="bicubic", align_corners=False)
            return torch.cat([t[:, :prefix], grid.permute(0, 2, 3, 1).reshape(1, G * G, -1)], dim=1)
    return None


def zoo_at(model: str, resolution: int, *, weights: str | None = None):
    """The :class:`edge.sources.ModelSpec` of zoo ``model`` (resolved by ``edge.sources.resolve``) rebuilt for
    ``resolution`` x ``resolution`` inputs; the test set is resized so accuracy is still measured."""
    import torch

    from edge.sources import ModelSpec, example_from_shapes, resolve
    from edge.zoo import create_model
    native = native_resolution(model)
    base = resolve(model, weights=weights)
    if native is None:
        raise ResolutionError(f"{model} does not take a square image input, so --resolutions cannot apply; "
                              f"bench it without --resolutions")
    entry = base.entry
    try:
        module, _ = create_model(model, pretrained=False, img_size=resolution)
    except TypeError as e:
        raise ResolutionError(f"{model} cannot change its input resolution: its factory does not take "
                              f"img_size ({e}); bench it at its native {native}px") from None
    source = {**base.source, "img_size": resolution}
    sd, target, resampled = base.module.state_dict(), module.state_dict(), []
    for key, value in list(sd.items()):
        if key in target and tuple(target[key].shape) != tuple(value.shape):
            new = resample_grid(value, tuple(target[key].shape))
            if new is None:
                raise ResolutionError(
                    f"{model}'s weights do not fit {resolution}px: {key} has shape {list(value.shape)}, the "
                    f"{resolution}px model needs {list(target[key].shape)} and it is not a position table "
                    f"that can be resampled; bench it at its native {native}px")
            sd[key] = new
            resampled.append(key)
    module.load_state_dict(sd)
    source["resampled"] = resampled
    shape = (entry.input_shapes[0][0], entry.input_shapes[0][1], resolution, resolution)
    test_set = None
    if entry.test_set is not None:
        def test_set(_orig=entry.test_set, _r=resolution):
            import numpy as np
            import torch.nn.functional as F
            x, y = _orig()
            x = F.interpolate(torch.from_numpy(np.asarray(x)), size=(_r, _r), mode="bilinear", align_corners=False)
            return x.numpy(), y
    pre = dict(entry.preprocessing)
    if pre:
        pre["size"] = [resolution, resolution]
    entry = dataclasses.replace(entry, input_shapes=[shape], test_set=test_set, preprocessing=pre)
    example = (torch.as_tensor(test_set()[0][: shape[0]]),) if test_set is not None else example_from_shapes([shape])
    return ModelSpec(module=module.eval(), example_inputs=example, source=source, info=entry.info(), entry=entry)


def prepared(model: str, resolution: int | None, *, weights: str | None = None,
             input_shapes: Sequence[Sequence[int]] | None = None, optimize: bool = True):
    """:func:`edge.api.prepare` of ``model`` at ``resolution`` (None: as the source gives it)."""
    from edge.api import prepare
    if is_zoo(model) and resolution is not None and resolution != native_resolution(model):
        if input_shapes:
            raise UsageError("--input-shape applies to file.py:factory, package.module:factory and .pt2 models; "
                             f"{model} is a zoo model: use --resolutions")
        return prepare(zoo_at(model, resolution, weights=weights), optimize=optimize)
    if str(model).endswith(".pt2") and resolution is not None:
        raise ResolutionError(f"{model} is a saved program with fixed input shapes; bench it without --resolutions")
    shapes = None if is_zoo(model) else shapes_at(input_shapes, resolution)
    return prepare(model, input_shapes=shapes, weights=weights, optimize=optimize)
