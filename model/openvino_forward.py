"""A compiled serving form run by OpenVINO's CPU plugin in bfloat16: the fastest path measured on CPUs with AMX.

On a 2-core Intel Xeon with AMX the shipped model's float16 form scored 1.37x as many clips per second end to end as
the int8 form in LiteRT (1.5x forward only), at float32's eval_half mAP (``docs/performance.md``). Only OpenVINO's
built-in operators are used: no extension is ever loaded. OpenVINO reads a model from a file, so the checked bytes
are written to a private temporary file first and read back from there: what runs is what was hashed.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from model.artifact_errors import ArtifactError


def openvino_available() -> bool:
    """OpenVINO is importable (a dependency; a stripped-down install may lack it)."""
    return importlib.util.find_spec("openvino") is not None


#: Clips per inference request: a batch is cut into parts of this size, which the streams take as each comes free.
#: 64-256 measured alike; one request per batch left a stream idle whenever encoding took its core.
PART_CLIPS = 256


class OpenVINOForward:
    """Runs a TFLite flatbuffer with OpenVINO, computing in bfloat16 where the CPU has it (else float32).

    One compiled model for any batch size (a dynamic batch dimension: no recompiling for a file's last, shorter
    batch), run as one single-threaded stream per thread that takes the batch's parts as it comes free. Measured on
    a 2-core Xeon with AMX against one two-thread request per batch: forward 14,300-15,200 clips/s against 13,300,
    and ``audioset score`` end to end 12,300-13,100 against 10,700, where JSON encoding shares the cores and a
    thread waiting at a barrier for a busy core stalled the whole batch. One instance per process, called from one
    thread at a time.
    """

    def __init__(
        self, flatbuffer: bytes, frames: int, classes: int, threads: int | None = None, where: str = ""
    ) -> None:
        import openvino as ov

        core = ov.Core()
        try:
            with tempfile.TemporaryDirectory(prefix="audioset-form-") as tmp:
                path = Path(tmp) / "form.tflite"
                path.write_bytes(flatbuffer)
                model = core.read_model(str(path))
                takes, gives = [_dims(port) for port in model.inputs], [_dims(port) for port in model.outputs]
                if [shape[1:] for shape in takes] != [[frames, 128]] or [shape[1:] for shape in gives] != [[classes]]:
                    raise ArtifactError(
                        f"{where}: the compiled model takes {takes} and gives {gives}; the manifest declares "
                        f"[[-1, {frames}, 128]] and [[-1, {classes}]]"
                    )
                model.reshape([-1, frames, 128])
                streams = max(1, threads or os.cpu_count() or 1)
                config: dict[str, Any] = {
                    "INFERENCE_PRECISION_HINT": "bf16",
                    "INFERENCE_NUM_THREADS": streams,
                    "PERFORMANCE_HINT": "THROUGHPUT",
                    "NUM_STREAMS": streams,
                }
                compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise ArtifactError(f"{where}: OpenVINO cannot load it ({str(exc).strip().splitlines()[-1]})") from None
        self._queue = ov.AsyncInferQueue(compiled, streams)
        self._queue.set_callback(self._done)
        self._parts: list[np.ndarray | None] = []
        #: What OpenVINO computes in on this CPU: ``bfloat16``, or ``float32`` where the CPU has no bfloat16.
        bf16 = compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        self.computes_in = "bfloat16" if bf16 else "float32"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Clip probabilities ``(clips, classes)``."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        starts = range(0, max(1, len(x)), PART_CLIPS)
        self._parts = [None] * len(starts)
        for index, start in enumerate(starts):
            self._queue.start_async({0: x[start : start + PART_CLIPS]}, index)
        self._queue.wait_all()
        done = [part for part in self._parts if part is not None]
        if len(done) != len(self._parts):  # never a short result: a missing part would shift every later clip
            raise RuntimeError(f"OpenVINO gave {len(done)} of {len(self._parts)} parts of a batch")
        return np.concatenate(done)

    def _done(self, request: Any, index: int) -> None:
        """On OpenVINO's thread: copy a part's output before its request takes the next part."""
        self._parts[index] = np.array(request.get_output_tensor(0).data, dtype=np.float32)


def _dims(port: Any) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
