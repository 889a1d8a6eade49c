"""The GPU schedule's data: `Job`s in, `Placement`s and a `Plan` out (see schedule.py).

Inputs: nothing (plain dataclasses). Outputs: the types both planners (tasks.generation.
schedule's static one, schedule_elastic's) take and return, and `Plan.render` / `to_dict`
for the printout and the manifest.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


class ScheduleError(ValueError):
    """A pool that cannot be placed on the configured GPUs; the message names the field."""


@dataclass(frozen=True)
class Job:
    engine_id: str
    tp: int  # GPUs one replica spans; 0 = takes no GPU (API endpoint, scripted)
    work_s: float  # estimated generation time of all its requests on ONE replica
    load_s: float = 0.0  # estimated time to bring one replica up
    field: str = "generation.models"  # the config entry, for error messages
    max_replicas: int | None = None  # None: as many as the GPUs allow


@dataclass(frozen=True)
class Placement:
    engine_id: str
    node: int | None  # None when the engine takes no GPU
    gpus: tuple[int, ...]  # global GPU ids (node * gpus_per_node + local id)
    replicas: int  # data-parallel replicas in this placement (one server)
    start_s: float
    end_s: float
    share: float  # fraction of the engine's work this placement does


@dataclass
class Plan:
    gpus: int
    gpus_per_node: int
    placements: list[Placement] = field(default_factory=list)
    ideal_s: float = 0.0  # total GPU-seconds (one load per engine) / GPUs

    @property
    def makespan_s(self) -> float:
        return max((p.end_s for p in self.placements), default=0.0)

    def replicas(self, engine_id: str) -> int:
        return sum(p.replicas for p in self.placements if p.engine_id == engine_id)

    def order(self) -> list[str]:
        """Engine ids by planned start (the order engine tasks are submitted in)."""
        seen: dict[str, None] = {}
        for p in sorted(self.placements, key=lambda p: (p.start_s, p.engine_id)):
            seen.setdefault(p.engine_id, None)
        return list(seen)

    def of(self, engine_id: str) -> list[Placement]:
        return [p for p in self.placements if p.engine_id == engine_id]

    def to_dict(self) -> dict:
        return {"gpus": self.gpus, "gpus_per_node": self.gpus_per_node,
                "makespan_s": round(self.makespan_s, 1), "ideal_s": round(self.ideal_s, 1),
                "placements": [{**asdict(p), "gpus": list(p.gpus), "start_s": round(p.start_s, 1),
                                "end_s": round(p.end_s, 1), "share": round(p.share, 4)}
                               for p in sorted(self.placements, key=lambda p: (p.start_s, p.engine_id))]}

    def render(self) -> str:
        lines = [f"generation schedule: {self.gpus} GPU(s), {self.gpus_per_node} per node; estimated makespan "
                 f"{self.makespan_s:.0f}s (ideal {self.ideal_s:.0f}s)",
                 f"{'engine':<28} {'node':>4} {'gpus':<16} {'dp':>3} {'start_s':>8} {'end_s':>8}"]
        for p in sorted(self.placements, key=lambda p: (p.start_s, p.engine_id)):
            gpus = _ranges(p.gpus) if p.gpus else "-"
            node = "-" if p.node is None else str(p.node)
            lines.append(f"{p.engine_id:<28} {node:>4} {gpus:<16} {p.replicas:>3} {p.start_s:>8.0f} {p.end_s:>8.0f}")
        return "\n".join(lines)


def _ranges(ids: tuple[int, ...]) -> str:
    out, start = [], None
    for i, g in enumerate(ids):
        if start is None:
            start = g
        if i + 1 == len(ids) or ids[i + 1] != g + 1:
            out.append(str(start) if start == g else f"{start}-{g}")
            start = None
    return ",".join(out)
