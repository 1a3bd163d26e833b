"""Errors of the worker; each carries one line fit for stderr.

    FaultwatchError (model.errors)
    └── WorkerError
        ├── SettingsError    a setting is missing or invalid (exit 2)
        ├── BrokerError      the broker cannot be reached, or a topic is missing (exit 1)
        ├── ModelError       the model path serves nothing, or two models serve alike (exit 1)
        └── BatchError       a batch could not be finished (`retriable`: back off and retry)
            ├── PublishError an output was not acknowledged: the batch is not committed
            └── CommitError  the offsets were not committed: the batch will be re-delivered

A bad record is never an error here: it is data for the dead-letter topic.
"""

from __future__ import annotations

from model.errors import FaultwatchError


class WorkerError(FaultwatchError):
    """Base of the errors the worker reports as one line and a non-zero exit."""


class SettingsError(WorkerError):
    """A FAULTWATCH_* variable or a `run` flag has a value the worker cannot use."""


class BrokerError(WorkerError):
    """Kafka is unreachable, refuses us, or lacks a topic the worker needs."""


class ModelError(WorkerError):
    """FAULTWATCH_MODEL_PATH holds no model, or models whose machine patterns are ambiguous."""


class BatchError(WorkerError):
    """A batch could not be finished; `retriable` says whether trying again may succeed."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class PublishError(BatchError):
    """The broker did not acknowledge every event, score or dead letter of a batch."""


class CommitError(BatchError):
    """The group coordinator did not take the batch's offsets."""
