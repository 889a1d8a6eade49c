"""Assemble/publish configuration. Extended by the publishing work."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PublishConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    test_size: int = 2000
