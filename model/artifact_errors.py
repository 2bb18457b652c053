"""What can be wrong with a model artifact: one exception class per kind of refusal."""

from __future__ import annotations

from pathlib import Path


class ArtifactError(Exception):
    """A model artifact is missing, malformed or does not match its manifest."""


class ArtifactIntegrityError(ArtifactError):
    """The weights file's sha256 differs from the manifest: refuse to load."""


class UnsafeArtifactError(ArtifactError):
    """The artifact reaches outside itself: a symlinked file, an archive member with a path, or
    weights stored in (or linked to) other files."""


def refuse_symlink(path: Path, artifact: str | Path) -> None:
    """Every file of an artifact lives in its folder: a symlink could point it at any file on the host."""
    if path.is_symlink():
        raise UnsafeArtifactError(f"{path} is a symlink; an artifact's files must live in its folder ({artifact})")
