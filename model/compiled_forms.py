"""Compiled serving forms: what an artifact may carry beside ``model.keras`` so scoring needs no TensorFlow.

A form is the artifact's serving graph (:mod:`model.serving_graph`) compiled once, when the artifact is written
(:mod:`model.form_builder`). Two today, both TFLite flatbuffers: ``int8`` (int8 weights, dynamic-range
quantisation) that LiteRT runs, with, for a model with per-frame evidence, its twin giving that evidence as a
second output (``frames``, which only recordings load); and ``bfloat16`` (float16 weights) that OpenVINO computes
in bfloat16 where the CPU has bfloat16 arithmetic. The manifest's ``compiled`` section pins
each form like the weights (file name, sha256, size), names what made it, and records its accuracy gate: the mAP
it scored beside float32 on the artifact's validation data. A form is an untrusted file: it is read whole
(bounded), hashed, and its operators checked before the interpreter sees a byte of it.

This module imports neither TensorFlow nor LiteRT.
"""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path
from typing import Any

from model.artifact_errors import ArtifactError, ArtifactIntegrityError, UnsafeArtifactError, refuse_symlink

#: Each form's file in the artifact folder, by the precision it serves: int8 weights run by LiteRT, and float16
#: weights that OpenVINO computes in bfloat16 (on AMX, the fastest path measured; :mod:`model.openvino_forward`).
FORM_FILES = {"int8": "model.int8.tflite", "bfloat16": "model.float16.tflite"}
#: What runs each form.
FORM_RUNTIMES = {"int8": "LiteRT", "bfloat16": "OpenVINO"}
#: Each form's twin with per-frame evidence as a second output (:mod:`model.frame_evidence`), under its
#: ``frames`` key: only recordings load it, so scoring clips never pays for the extra output.
FRAME_FORM_FILES = {"int8": "model.int8.frames.tflite"}
#: The largest compiled form read: the shipped int8 form is 7 MB; a network 100 times wider still fits.
MAX_FORM_BYTES = 1024**3
#: How far a form's validation mAP may fall below float32's for ``auto`` to serve it.
MAP_TOLERANCE = 0.001
#: TFLite operator codes that run code from outside LiteRT's builtin kernels: refused.
_CUSTOM, _DELEGATE = 32, 51
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def validated(value: Any, source: str) -> dict[str, dict[str, Any]]:
    """A manifest's ``compiled`` section, checked: known forms, their own file names, a sha256 and a size each."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ArtifactError(f"{source}: 'compiled' must map a precision to its form")
    for precision, entry in value.items():
        if precision not in FORM_FILES:
            raise ArtifactError(
                f"{source}: unknown compiled form {precision!r} (this release knows {sorted(FORM_FILES)})"
            )
        if not isinstance(entry, dict) or entry.get("file") != FORM_FILES[precision]:
            raise ArtifactError(f"{source}: compiled form {precision!r} must be the file {FORM_FILES[precision]!r}")
        _check_file(entry, precision, source)
        frames = entry.get("frames")
        if frames is not None:
            twin = FRAME_FORM_FILES.get(precision)
            if not isinstance(frames, dict) or frames.get("file") != twin:
                raise ArtifactError(f"{source}: the {precision!r} form's frames twin must be the file {twin!r}")
            _check_file(frames, f"{precision} frames", source)
    return {precision: dict(entry) for precision, entry in value.items()}


def _check_file(entry: dict[str, Any], name: str, source: str) -> None:
    try:
        size = int(entry.get("bytes", 0))
    except (TypeError, ValueError):
        size = 0
    if not _SHA256.match(str(entry.get("sha256", ""))) or not 0 < size <= MAX_FORM_BYTES:
        raise ArtifactError(f"{source}: compiled form {name!r} needs a sha256 and a size up to {MAX_FORM_BYTES}")


def gate_failed(entry: dict[str, Any]) -> bool:
    """The form was measured on validation data and lost more than :data:`MAP_TOLERANCE` of float32's mAP."""
    gate = entry.get("gate") or {}
    return gate.get("passed") is False


def read_form(artifact: str | Path, entry: dict[str, Any]) -> bytes:
    """The form's bytes, once checked: its own regular file, within its declared size, matching its sha256,
    holding only builtin operators. Hashing the bytes that will be loaded leaves no gap between check and use."""
    path = Path(artifact) / str(entry["file"])
    refuse_symlink(path, artifact)
    try:
        with path.open("rb") as fh:
            blob = fh.read(MAX_FORM_BYTES + 1)
    except FileNotFoundError:
        raise ArtifactError(f"{artifact}: the manifest lists {path.name} but the file is missing") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(blob) != int(entry["bytes"]) or hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise ArtifactIntegrityError(
            f"{path}: {len(blob)} bytes whose sha256 does not match the manifest's; "
            "the file was modified or corrupted, refusing to load"
        )
    check_flatbuffer(blob, str(path))
    return blob


def check_flatbuffer(blob: bytes, where: str) -> None:
    """A TFLite model whose operators are all LiteRT builtins: no custom, Flex or delegate operators.

    Reads the ``operator_codes`` of the flatbuffer by hand (bounds-checked), so the check costs no import.
    """
    try:
        codes = _operator_codes(blob)
    except (struct.error, IndexError, ValueError) as exc:
        raise ArtifactError(f"{where}: not a TFLite flatbuffer ({exc})") from None
    for builtin, custom in codes:
        if custom or builtin in (_CUSTOM, _DELEGATE):
            kind = f"custom operator {custom!r}" if custom else "a delegate operator"
            raise UnsafeArtifactError(f"{where}: holds {kind}; only LiteRT's builtin operators are loaded")


def _operator_codes(blob: bytes) -> list[tuple[int, str | None]]:
    """``(builtin code, custom code)`` of each entry of the model's ``operator_codes`` (schema field 1)."""
    if blob[4:8] != b"TFL3":
        raise ValueError("no TFL3 identifier")
    root = _u32(blob, 0)
    vector = _field(blob, root, 1, follow=True)
    if vector is None:
        return []
    count = _u32(blob, vector)
    if count > 10_000:
        raise ValueError(f"{count} operator codes")
    codes = []
    for i in range(count):
        slot = vector + 4 + 4 * i
        table = slot + _u32(blob, slot)
        deprecated = _field(blob, table, 0)
        builtin = _field(blob, table, 3)
        custom = _field(blob, table, 1, follow=True)
        code = max(
            struct.unpack_from("<b", blob, deprecated)[0] if deprecated is not None else 0,
            struct.unpack_from("<i", blob, _checked(blob, builtin))[0] if builtin is not None else 0,
        )
        name = None
        if custom is not None:
            name = _slice(blob, custom + 4, _u32(blob, custom)).decode("utf-8", "replace")
        codes.append((code, name))
    return codes


def _u32(blob: bytes, at: int) -> int:
    if not 0 <= at <= len(blob) - 4:
        raise ValueError(f"offset {at} outside the file")
    return int(struct.unpack_from("<I", blob, at)[0])


def _slice(blob: bytes, at: int, length: int) -> bytes:
    if not 0 <= at <= at + length <= len(blob):
        raise ValueError(f"bytes {at}+{length} outside the file")
    return blob[at : at + length]


def _field(blob: bytes, table: int, index: int, follow: bool = False) -> int | None:
    """Where field ``index`` of the table at ``table`` lives, or None when the table leaves it out; ``follow``
    an offset field (a vector, string or table) to what it points at."""
    vtable = table - int(struct.unpack_from("<i", blob, _checked(blob, table))[0])
    size = int(struct.unpack_from("<H", blob, _checked(blob, vtable))[0])
    if 4 + 2 * index >= size:
        return None
    offset = int(struct.unpack_from("<H", blob, _checked(blob, vtable + 4 + 2 * index))[0])
    if offset == 0:
        return None
    at = _checked(blob, table + offset, 1)
    return at + _u32(blob, at) if follow else at


def _checked(blob: bytes, at: int, size: int = 4) -> int:
    if not 0 <= at <= len(blob) - size:
        raise ValueError(f"offset {at} outside the file")
    return at
