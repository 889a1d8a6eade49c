"""Config of a provider Batch API round (`mode: batch`) for pool entries and judge endpoints.

Inputs: the `batch` section of `generation.models[]` or `rating.endpoints[]`. Outputs: a
validated `BatchSettings` (file limits, polling, resubmits) that the batch lifecycle
(tasks/backends/batch_lifecycle.py) runs on.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BatchSettings(BaseModel):
    """How requests go through a provider's Batch API (`mode: batch`); limits are per provider."""

    model_config = ConfigDict(extra="forbid")

    max_lines: int | None = Field(None, ge=1, description="Requests per batch file; default: the provider's limit "
                                  "(OpenAI/Azure 50,000, Anthropic 100,000)")
    max_bytes: int | None = Field(None, ge=1024, description="Bytes per batch file; default: the provider's limit "
                                  "(OpenAI/Azure 200 MB, Anthropic 256 MB)")
    completion_window: str = Field("24h", description="OpenAI completion_window of each batch")
    poll_interval_s: float = Field(30.0, gt=0, description="Seconds between two polls while waiting in-process")
    max_wait_s: float = Field(0.0, ge=0, description="Longest in-process wait for batches to end; then the shard is "
                              "left in flight (not failed) and a later run collects it. 0: submit and return")
    resubmits: int = Field(2, ge=0, le=10, description="New batches for the requests a batch left unanswered "
                           "(expired, cancelled, failed lines), per run")
