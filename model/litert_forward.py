"""A compiled serving form run by LiteRT (``ai-edge-litert``): the forward pass without importing TensorFlow.

The standalone interpreter loads a 7 MB flatbuffer and runs its first batch in about 0.01 s, where importing
TensorFlow and loading the Keras model takes seconds: every worker child and every ``audioset score`` pays that
start-up once, so it is what small files and scale-out wait for.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Any

import numpy as np

from model.artifact_errors import ArtifactError
from model.native_logs import native_stderr_silenced


def litert_available() -> bool:
    """LiteRT is importable (a dependency; a stripped-down install may lack it)."""
    return importlib.util.find_spec("ai_edge_litert") is not None


class LiteRTForward:
    """Runs a TFLite flatbuffer; resizes its batch dimension only when the batch size changes.

    Only LiteRT's builtin operators are registered (no custom or Flex operators, no delegates beyond its default
    XNNPACK). An interpreter is not thread-safe: one instance per process, called from one thread at a time.
    """

    def __init__(
        self, flatbuffer: bytes, frames: int, classes: int, threads: int | None = None, where: str = ""
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            with warnings.catch_warnings(), native_stderr_silenced():  # the XNNPACK notice on fd 2
                warnings.simplefilter("ignore")
                self._interpreter: Any = Interpreter(
                    model_content=flatbuffer, num_threads=max(1, threads or os.cpu_count() or 1)
                )
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{where}: LiteRT cannot load it ({exc})") from None
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        takes = [list(d["shape_signature"]) for d in inputs]
        gives = [list(d["shape_signature"]) for d in outputs]
        if takes != [[-1, frames, 128]] or gives != [[-1, classes]]:
            raise ArtifactError(
                f"{where}: the compiled model takes {takes} and gives {gives}; the manifest declares "
                f"[[-1, {frames}, 128]] and [[-1, {classes}]]"
            )
        self._input = inputs[0]["index"]
        self._output = outputs[0]["index"]
        self._frames = frames
        self._batch = -1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input, [batch.shape[0], self._frames, 128])
            with native_stderr_silenced():  # the first allocation applies XNNPACK, which says so on fd 2
                self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(batch, dtype=np.float32))
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output), dtype=np.float32)
