"""Create the work pools and global concurrency limits of the operations spec; idempotent.

    python -m deployments.bootstrap [--spec deployments/ops.yaml] [--check]

Inputs: the spec and the Prefect API of the environment (`PREFECT_API_URL`). Output: each
pool and limit created, updated to match the spec, or left unchanged, one line each;
`--check` only reports the differences and exits 1 when there are some. Pools and limits
not in the spec are never touched, and a limit's slots in use are left alone.
"""
from __future__ import annotations

import argparse
import sys
from copy import deepcopy

from prefect import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
    WorkPoolUpdate,
)
from prefect.exceptions import ObjectNotFound

from deployments.spec import LimitSpec, OpsSpec, PoolSpec, load_spec


def job_template(pool: PoolSpec) -> dict:
    """The process worker's default template with the pool's env as the default env."""
    from prefect.workers.process import ProcessWorker

    template = deepcopy(ProcessWorker.get_default_base_job_template())
    if pool.env:
        template["variables"]["properties"]["env"]["default"] = dict(pool.env)
    return template


def ensure_pool(client, name: str, pool: PoolSpec, check: bool = False) -> str:
    template = job_template(pool)
    try:
        current = client.read_work_pool(name)
    except ObjectNotFound:
        if not check:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool.type, description=pool.description,
                                                   base_job_template=template,
                                                   concurrency_limit=pool.concurrency_limit))
        return "missing" if check else "created"
    if current.type != pool.type:
        raise SystemExit(f"work pool {name!r} exists with type {current.type!r}, the spec says {pool.type!r}; "
                         "delete it or rename it in the spec")
    same = (current.description or "") == pool.description and current.concurrency_limit == pool.concurrency_limit \
        and current.base_job_template == template
    if same:
        return "unchanged"
    if not check:
        client.update_work_pool(name, WorkPoolUpdate(description=pool.description, base_job_template=template,
                                                     concurrency_limit=pool.concurrency_limit))
    return "differs" if check else "updated"


def ensure_limit(client, name: str, spec: LimitSpec, check: bool = False) -> str:
    try:
        current = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        if not check:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                name=name, limit=spec.limit, slot_decay_per_second=spec.slot_decay_per_second, active=True))
        return "missing" if check else "created"
    if current.limit == spec.limit and current.active and \
            abs((current.slot_decay_per_second or 0.0) - spec.slot_decay_per_second) < 1e-9:
        return "unchanged"
    if not check:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(
            limit=spec.limit, slot_decay_per_second=spec.slot_decay_per_second, active=True))
    return "differs" if check else "updated"


def bootstrap(spec: OpsSpec, check: bool = False) -> dict[str, str]:
    """{"work-pool NAME" | "limit NAME": created | updated | unchanged (| missing | differs)}."""
    actions = {}
    with get_client(sync_client=True) as client:
        for name, pool in spec.work_pools.items():
            actions[f"work-pool {name}"] = ensure_pool(client, name, pool, check)
        for name, limit in spec.concurrency_limits.items():
            actions[f"limit {name}"] = ensure_limit(client, name, limit, check)
    return actions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deployments.bootstrap", description=__doc__.split("\n")[0])
    p.add_argument("--spec", help="operations spec (default: deployments/ops.yaml)")
    p.add_argument("--check", action="store_true", help="only report differences; exit 1 if there are any")
    args = p.parse_args(argv)
    from flows.config import ConfigError

    try:
        actions = bootstrap(load_spec(args.spec), check=args.check)
    except ConfigError as exc:
        print(f"bootstrap: error: {exc}", file=sys.stderr)
        return 2
    for what, action in actions.items():
        print(f"{action:9s} {what}")
    return 1 if args.check and any(a != "unchanged" for a in actions.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
