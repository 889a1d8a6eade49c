"""Seeded draws of models, principles and system prompts for one instruction.

Inputs: the run seed, a prompt_id, the principle-table row of its source, the pool's
model names and k. Output: k `Draw`s (completion_index, model, principle, system_prompt).

Every draw comes from a generator seeded with (run seed, prompt_id) only, so the same
instruction gets the same models and prompts whatever the shard size, the shard order,
or which other instructions are in the run. Pool names are sorted first, so reordering
the pool in the config does not change the draws either.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from tasks.generation.principles import effective_table, system_prompts


@dataclass(frozen=True)
class Draw:
    completion_index: int
    model: str
    principle: str
    system_prompt: str


def rng_for(seed: int, prompt_id: str, purpose: str = "generation") -> random.Random:
    digest = hashlib.sha256(f"{seed}\x1f{purpose}\x1f{prompt_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def draw_models(rng: random.Random, pool: list[str], k: int, allow_repeats: bool = False,
                policy: str | None = None) -> list[str]:
    """k distinct models, or with repeats beyond the pool size when allowed.

    With a `policy` entry (the on-policy slot) it is one of every instruction's k models:
    the other k-1 are drawn from the rest of the pool, and the policy's slot among the k is
    drawn too, so it is not always completion 0 (and so not always Text 1 for the judge)."""
    if policy is not None:
        others = draw_models(rng, [m for m in pool if m != policy], k - 1, allow_repeats) if k > 1 else []
        slot = rng.randrange(k)
        return others[:slot] + [policy] + others[slot:]
    names = sorted(pool)
    if k <= len(names):
        return rng.sample(names, k)
    if not allow_repeats:
        raise ValueError(f"generation.k={k} exceeds the pool of {len(names)} models (set generation.allow_repeats)")
    # Every model once, then the remainder with replacement: as diverse as the pool allows.
    return rng.sample(names, len(names)) + rng.choices(names, k=k - len(names))


def draw_principle(rng: random.Random, shares: dict[str, float]) -> str:
    principles = sorted(shares)
    return rng.choices(principles, weights=[shares[p] for p in principles], k=1)[0]


def draw_for_instruction(
    seed: int,
    prompt_id: str,
    row: str,
    pool: list[str],
    k: int,
    allow_repeats: bool = False,
    table: dict[str, dict[str, float]] | None = None,
    policy: str | None = None,
) -> list[Draw]:
    """The k completions one instruction will get (the policy entry always among them)."""
    full = effective_table(table)
    if row not in full:
        raise ValueError(f"no principle distribution for source row {row!r}; known: {sorted(full)}")
    rng = rng_for(seed, prompt_id)
    models = draw_models(rng, pool, k, allow_repeats, policy)
    prompts = system_prompts()
    draws = []
    for index, model in enumerate(models):
        principle = draw_principle(rng, full[row])
        draws.append(Draw(index, model, principle, rng.choice(prompts[principle])))
    return draws
