"""A compiled serving form run by OpenVINO's CPU plugin in bfloat16: the fastest path measured on CPUs with AMX.

On a 2-core Intel Xeon with AMX the shipped model's float16 form ran 1.4-1.6x as many clips per second as the int8
form in LiteRT, at the same eval_half mAP (``docs/performance.md``). Only OpenVINO's built-in operators are used:
no extension is ever loaded. OpenVINO reads a model from a file, so the checked bytes are written to a private
temporary file first and read back from there: what runs is what was hashed.
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


class OpenVINOForward:
    """Runs a TFLite flatbuffer with OpenVINO, computing in bfloat16 where the CPU has it (else float32).

    One compiled model for any batch size (a dynamic batch dimension: about 4 % slower than one fixed size, and
    no recompiling for a file's last, shorter batch). One instance per process, called from one thread at a time.
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
                config: dict[str, Any] = {
                    "INFERENCE_PRECISION_HINT": "bf16",
                    "INFERENCE_NUM_THREADS": max(1, threads or os.cpu_count() or 1),
                    "PERFORMANCE_HINT": "LATENCY",
                }
                compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise ArtifactError(f"{where}: OpenVINO cannot load it ({str(exc).strip().splitlines()[-1]})") from None
        self._request = compiled.create_infer_request()
        #: What OpenVINO computes in on this CPU: ``bfloat16``, or ``float32`` where the CPU has no bfloat16.
        self.computes_in = "bfloat16" if "bf16" in str(compiled.get_property("INFERENCE_PRECISION_HINT")) else "float32"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Clip probabilities ``(clips, classes)``."""
        result = self._request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return np.array(result[0], dtype=np.float32)


def _dims(port: Any) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
