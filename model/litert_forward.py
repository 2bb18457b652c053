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
    ``evidence``: the form's twin that also gives per-frame probabilities (:meth:`with_frames`).
    """

    def __init__(
        self,
        flatbuffer: bytes,
        frames: int,
        classes: int,
        threads: int | None = None,
        where: str = "",
        *,
        evidence: bool = False,
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
        # The converter orders outputs as it likes: each is known by its rank.
        expected = [[-1, classes], [-1, frames, classes]] if evidence else [[-1, classes]]
        if takes != [[-1, frames, 128]] or sorted(gives, key=len) != expected:
            raise ArtifactError(
                f"{where}: the compiled model takes {takes} and gives {gives}; the manifest declares "
                f"[[-1, {frames}, 128]] and {expected}"
            )
        self._input = inputs[0]["index"]
        by_rank = {len(shape): d["index"] for shape, d in zip(gives, outputs, strict=True)}
        self._output = by_rank[2]
        self._frames_output: int | None = by_rank.get(3)
        self._frames = frames
        self._batch = -1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Clip probabilities ``(clips, classes)``."""
        self._invoke(batch)
        return np.array(self._interpreter.get_tensor(self._output), dtype=np.float32)

    def with_frames(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clip probabilities and per-frame probabilities ``(clips, frames, classes)``, from one pass."""
        if self._frames_output is None:
            raise TypeError("this form has no per-frame output: load its frames twin with evidence=True")
        self._invoke(batch)
        clip = np.array(self._interpreter.get_tensor(self._output), dtype=np.float32)
        return clip, np.array(self._interpreter.get_tensor(self._frames_output), dtype=np.float32)

    def _invoke(self, batch: np.ndarray) -> None:
        if batch.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input, [batch.shape[0], self._frames, 128])
            with native_stderr_silenced():  # the first allocation applies XNNPACK, which says so on fd 2
                self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(batch, dtype=np.float32))
        self._interpreter.invoke()
