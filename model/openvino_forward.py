"""A compiled serving form run by OpenVINO's CPU plugin in bfloat16: the fastest path measured on CPUs with AMX.

On a 2-core Intel Xeon with AMX the shipped model's float16 form scored 1.3-1.4x as many clips per second end to end
as the int8 form in LiteRT and 5.2x float32, at float32's eval_half mAP (``docs/performance.md``). Only OpenVINO's
built-in operators are used: no extension is ever loaded. OpenVINO reads a model from a file, so the checked bytes
are written to a private temporary file first and read back from there: what runs is what was hashed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from model.artifact_errors import ArtifactError


def openvino_available() -> bool:
    """OpenVINO is importable (a dependency; a stripped-down install may lack it)."""
    return importlib.util.find_spec("openvino") is not None


#: Clips per inference request: a call is cut into parts of this size, all queued at once, which the streams take
#: as each comes free. 64-512 measured alike.
PART_CLIPS = 256
#: Clips a :class:`~model.inference.Predictor` hands over per call (at least its batch size): only the parts' memory
#: is live inside OpenVINO, and each call ends at a barrier where a stream may wait for the other's last part.
CALL_CLIPS = 8192


class OpenVINOForward:
    """Runs a TFLite flatbuffer with OpenVINO, computing in bfloat16 where the CPU has it (else float32).

    One compiled model for any batch size (a dynamic batch dimension), run as one single-threaded stream per thread.
    A call queues all its parts at once, each written straight into its rows of the result, so no part waits for
    Python: an earlier design handed each part over from a Python callback, and whenever JSON encoding held the GIL
    a stream sat idle until it was let go. uint8 embeddings go in as they are and are dequantised inside the graph
    (``(x - 128) / 128``, exact in bfloat16 too), on the streams rather than on the caller's thread; float
    embeddings get a float32-input twin of the same model, compiled on first use. One instance per process, called
    from one thread at a time.
    """

    #: A :class:`~model.inference.Predictor` hands uint8 batches over as they are (see above).
    takes_uint8 = True
    call_clips = CALL_CLIPS

    def __init__(
        self, flatbuffer: bytes, frames: int, classes: int, threads: int | None = None, where: str = ""
    ) -> None:
        import openvino as ov

        self._ov = ov
        self._core = ov.Core()
        self._where = where
        self._classes = classes
        self._streams = max(1, threads or os.cpu_count() or 1)
        with _load_errors(where):
            with tempfile.TemporaryDirectory(prefix="audioset-form-") as tmp:
                path = Path(tmp) / "form.tflite"
                path.write_bytes(flatbuffer)
                model = self._core.read_model(str(path))
            takes, gives = [_dims(port) for port in model.inputs], [_dims(port) for port in model.outputs]
            if [shape[1:] for shape in takes] != [[frames, 128]] or [shape[1:] for shape in gives] != [[classes]]:
                raise ArtifactError(
                    f"{where}: the compiled model takes {takes} and gives {gives}; the manifest declares "
                    f"[[-1, {frames}, 128]] and [[-1, {classes}]]"
                )
            model.reshape([-1, frames, 128])
            self._float_model = model.clone()
            compiled = self._compile(_dequantising(model))
        #: Per input kind (uint8 codes or not): its compiled model and the requests made of it so far.
        self._served: dict[bool, tuple[Any, list[Any]]] = {True: (compiled, [])}
        #: What OpenVINO computes in on this CPU: ``bfloat16``, or ``float32`` where the CPU has no bfloat16.
        bf16 = compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        self.computes_in = "bfloat16" if bf16 else "float32"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Clip probabilities ``(clips, classes)`` for uint8 codes or float embeddings."""
        codes = batch.dtype == np.uint8
        x = np.ascontiguousarray(batch, dtype=None if codes else np.float32)
        out = np.empty((len(x), self._classes), dtype=np.float32)
        starts = range(0, len(x), PART_CLIPS)
        requests = self._requests_for(codes, len(starts))
        for request, start in zip(requests, starts, strict=False):
            request.set_input_tensor(self._ov.Tensor(x[start : start + PART_CLIPS], shared_memory=True))
            request.set_output_tensor(self._ov.Tensor(out[start : start + PART_CLIPS], shared_memory=True))
            request.start_async()
        failure: RuntimeError | None = None
        for request in requests[: len(starts)]:  # every part is awaited, even after one fails: none writes later
            try:
                request.wait()
            except RuntimeError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return out

    def _requests_for(self, codes: bool, parts: int) -> list[Any]:
        """Inference requests enough for ``parts`` (kept between calls; a request holds no more than a part)."""
        if codes not in self._served:
            with _load_errors(self._where):
                self._served[codes] = (self._compile(self._float_model), [])
        compiled, pool = self._served[codes]
        while len(pool) < parts:
            pool.append(compiled.create_infer_request())
        return pool

    def _compile(self, model: Any) -> Any:
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16",
            "INFERENCE_NUM_THREADS": self._streams,
            "PERFORMANCE_HINT": "THROUGHPUT",
            "NUM_STREAMS": self._streams,
        }
        return self._core.compile_model(model, "CPU", config)


@contextlib.contextmanager
def _load_errors(where: str) -> Iterator[None]:
    """OpenVINO's RuntimeError while reading or compiling a form becomes an :class:`ArtifactError` naming it."""
    try:
        yield
    except RuntimeError as exc:
        raise ArtifactError(f"{where}: OpenVINO cannot load it ({str(exc).strip().splitlines()[-1]})") from None


def _dequantising(model: Any) -> Any:
    """The model taking uint8 codes, dequantised as its first step the way :func:`model.inference.dequantize` does."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    steps.input().tensor().set_element_type(ov.Type.u8)
    steps.input().preprocess().convert_element_type(ov.Type.f32).mean(128.0).scale(128.0)
    return steps.build()


def _dims(port: Any) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
