"""Loading an artifact's compiled form for a precision, in the runtime that runs it: the forward pass, and the
per-frame evidence recordings need, without TensorFlow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.artifact import Manifest
from model.compiled_forms import FORM_RUNTIMES, read_form

#: One forward pass giving clip probabilities and per-frame probabilities ``(clips, frames, classes)``.
FramesForward = Callable[[np.ndarray], tuple[Any, Any]]


def form_runs_here(precision: str, forms: dict[str, dict[str, Any]]) -> bool:
    """The artifact has a compiled form for ``precision`` and its runtime is installed."""
    if precision not in forms:
        return False
    if FORM_RUNTIMES[precision] == "OpenVINO":
        from model.openvino_forward import openvino_available

        return openvino_available()
    from model.litert_forward import litert_available

    return litert_available()


def compiled_forward(
    artifact: str | Path, manifest: Manifest, precision: str, threads: int | None
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], FramesForward] | None]:
    """The form serving ``precision`` (which :func:`form_runs_here`), and how to build its per-frame evidence on
    first use: the int8 form's frames twin, in LiteRT, whichever form serves the clips (None without a twin)."""
    form = manifest.compiled[precision]
    blob, where = read_form(artifact, form), str(Path(artifact) / str(form["file"]))
    frames, classes = manifest.frames, len(manifest.classes)
    forward: Callable[[np.ndarray], np.ndarray]
    if FORM_RUNTIMES[precision] == "OpenVINO":
        from model.openvino_forward import OpenVINOForward

        forward = OpenVINOForward(blob, frames, classes, threads, where)
    else:
        from model.litert_forward import LiteRTForward

        forward = LiteRTForward(blob, frames, classes, threads, where)
    twin = form.get("frames") or (manifest.compiled.get("int8") or {}).get("frames")
    if twin is None or not form_runs_here("int8", manifest.compiled):
        return forward, None

    def evidence() -> FramesForward:
        from model.litert_forward import LiteRTForward

        at = str(Path(artifact) / str(twin["file"]))
        return LiteRTForward(read_form(artifact, twin), frames, classes, threads, at, evidence=True).with_frames

    return forward, evidence
