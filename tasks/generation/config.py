"""Generation stage configuration (the model pool). Extended by the generation work."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = 4
