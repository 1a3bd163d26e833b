"""Errors a user can cause offline; each carries one line fit for stderr.

FaultwatchError
├── DataError        a recording that cannot be read or windowed
└── ArtifactError    a model file that is missing, damaged, tampered with or unfit
"""

from __future__ import annotations


class FaultwatchError(Exception):
    """Base of every error faultwatch reports as one line and a non-zero exit."""


class DataError(FaultwatchError):
    """A recording is missing, malformed or does not fit the model."""


class ArtifactError(FaultwatchError):
    """A model artifact cannot be trusted or used."""
