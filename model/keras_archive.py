"""What a ``.keras`` archive may hold before Keras opens it: known members, bounded sizes, weights in itself."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

from model.artifact_errors import ArtifactError, UnsafeArtifactError

# What Keras writes into a .keras archive; anything else (a path, an extra file) is refused.
ARCHIVE_MEMBERS = {"metadata.json", "config.json", "model.weights.h5"}

#: The most each archive member may hold once extracted. The shipped weights are 29 MB; ten times the widest
#: network trained here still fits. A member declaring more is refused before a byte of it is read.
MEMBER_LIMITS = {"metadata.json": 1024**2, "config.json": 64 * 1024**2, "model.weights.h5": 4 * 1024**3}
#: Keras stores members uncompressed and weights barely compress; a member expanding more is a zip bomb.
MAX_COMPRESSION_RATIO = 50


def _check_weights_h5(fileobj: IO[bytes], where: str) -> None:
    """Every dataset's bytes in the weights file itself: no external storage, virtual datasets or links.

    The visitors return a finding instead of raising: h5py turns an exception raised inside a visit
    into a SystemError.
    """
    import h5py

    def link_finding(name: str, link: object) -> str | None:
        if isinstance(link, h5py.ExternalLink | h5py.SoftLink):
            return f"'{name}' is a {type(link).__name__}"
        return None

    def data_finding(name: str, item: object) -> str | None:
        if isinstance(item, h5py.Dataset) and (item.is_virtual or item.external):
            return f"dataset '{name}' stores its data in other files"
        return None

    with h5py.File(fileobj, "r") as f:
        finding = f.visititems_links(link_finding) or f.visititems(data_finding)
    if finding:
        raise UnsafeArtifactError(f"{where}: {finding}; refusing to load")


def check_archive(path: Path, frames: int | None = None) -> None:
    """Refuse a ``.keras`` archive whose members are paths, unexpected files or larger than :data:`MEMBER_LIMITS`,
    whose weights reach other files, or whose input does not take ``frames`` (the manifest's).

    Members are streamed (the weights through a temporary file), so memory stays flat whatever an archive
    declares; every failure is an :class:`ArtifactError`.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            names = [m.filename for m in members]
            unexpected = sorted(set(names) - ARCHIVE_MEMBERS)
            if unexpected or len(names) != len(set(names)):
                raise UnsafeArtifactError(
                    f"{path}: unexpected archive members {unexpected or names}; a .keras archive holds "
                    f"only {sorted(ARCHIVE_MEMBERS)}"
                )
            for member in members:
                if member.file_size > MEMBER_LIMITS[member.filename]:
                    raise UnsafeArtifactError(
                        f"{path}: member {member.filename} declares {member.file_size} bytes, over the "
                        f"{MEMBER_LIMITS[member.filename]}-byte limit for it"
                    )
                if member.file_size > MAX_COMPRESSION_RATIO * member.compress_size + 1024**2:
                    raise UnsafeArtifactError(
                        f"{path}: member {member.filename} expands {member.compress_size} bytes to "
                        f"{member.file_size} (over {MAX_COMPRESSION_RATIO}:1), which no saved model does; "
                        "refusing a possible zip bomb"
                    )
            if frames is not None and "config.json" in names:
                with archive.open("config.json") as fh:
                    _check_input(json.loads(fh.read(MEMBER_LIMITS["config.json"] + 1)), frames, path)
            if "model.weights.h5" in names:
                with archive.open("model.weights.h5") as member_fh, tempfile.TemporaryFile() as copy:
                    shutil.copyfileobj(member_fh, copy, 1 << 20)  # the archive's CRC and size checks still run
                    copy.seek(0)
                    _check_weights_h5(copy, f"{path}:model.weights.h5")
    except ArtifactError:
        raise
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{path}: not a .keras archive ({exc})") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, zipfile.LargeZipFile) as exc:
        raise ArtifactError(f"{path}: cannot check the archive ({type(exc).__name__}: {exc})") from None


def _check_input(config: Any, frames: int, path: Path) -> None:
    """The model's input must take the manifest's frames x 128: a mismatch would fail every file it is given."""
    layers = config.get("config", {}).get("layers", []) if isinstance(config, dict) else []
    shapes = [
        layer["config"].get("batch_shape")
        for layer in layers
        if isinstance(layer, dict) and layer.get("class_name") == "InputLayer" and isinstance(layer.get("config"), dict)
    ]
    expected = [None, frames, 128]
    if shapes and any(list(shape or []) != expected for shape in shapes):
        raise ArtifactError(
            f"{path}: the model takes input {shapes[0]} but the manifest declares frames={frames} "
            f"(input {expected}); the manifest does not describe this model"
        )
