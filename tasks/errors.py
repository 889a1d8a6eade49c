"""Typed errors. Transient ones are retried by the orchestrator (Prefect task retries);
everything else fails fast with a message that names the file, row or setting."""
from __future__ import annotations


class UltraFeedbackError(Exception):
    """Base class for errors this project raises on purpose."""


class InputError(UltraFeedbackError, ValueError):
    """Bad source data or configuration; retrying cannot help."""


class TransientError(UltraFeedbackError):
    """A failure that a retry of the shard may cure (engine died, 5xx, timeouts)."""


class EngineDiedError(TransientError):
    """A model server or batch run stopped while requests were in flight."""


class RateLimitedError(TransientError):
    """The endpoint kept answering 429 past what the in-process limiter absorbs."""


class BatchInFlight(UltraFeedbackError):
    """Requests of a shard sit in provider batches that have not ended yet.

    Not a failure and not retried in-process: the batch ids are recorded durably, the shard
    stays pending, and a later run (or backfill, or schedule) collects the answers."""

    def __init__(self, message: str, batches: list[dict] | None = None):
        super().__init__(message)
        self.batches = batches or []


class EndpointFatalError(InputError):
    """An endpoint refused the key (401/403) or does not know the model (404): no retry helps."""


class CircuitOpenError(UltraFeedbackError):
    """An endpoint had no success for too many tries or too long: stop sending, leave the
    shard for a backfill instead of retrying it at once."""
