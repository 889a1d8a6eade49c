"""Rating stage configuration (judge endpoints). Extended by the rating work."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RatingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
