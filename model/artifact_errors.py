"""What can be wrong with a model artifact: one exception class per kind of refusal."""

from __future__ import annotations


class ArtifactError(Exception):
    """A model artifact is missing, malformed or does not match its manifest."""


class ArtifactIntegrityError(ArtifactError):
    """The weights file's sha256 differs from the manifest: refuse to load."""


class UnsafeArtifactError(ArtifactError):
    """The artifact reaches outside itself: a symlinked file, an archive member with a path, or
    weights stored in (or linked to) other files."""
