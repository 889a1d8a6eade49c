"""Register the pipeline's deployments with their parameters taken from a run config.

    python -m deployments.deploy [--config RUN.yaml] [--out DIR] [--set key=value ...]
                                 [--spec deployments/ops.yaml] [--pool NAME] [--only NAME,...]

Inputs: the operations spec (which deployments, pools, schedules), a run config (default:
the spec's `config`) with the usual `--out` / `--set` overrides, and the Prefect API of the
environment. Outputs: deployments `ultrafeedback/<name>` (the run config as the `config`
parameter plus their `stages`) and `ultrafeedback-backfill/<name>` (the run's `output`),
created or updated in place; one line per deployment.

The config is validated before anything is registered. Deployments point at the installed
package (module entrypoints such as `flows.ultrafeedback.ultrafeedback`), so a worker
needs this project installed, and the output root must be reachable from the worker
(a shared folder or an fsspec URL). `--pool` sends every deployment to one pool (a
single machine); the work pools themselves come from `python -m deployments.bootstrap`.
"""
from __future__ import annotations

import argparse
import sys

from deployments.spec import DeploymentSpec, OpsSpec, load_spec


def parameters(d: DeploymentSpec, cfg) -> dict:
    if d.flow == "backfill":
        return {"output": cfg.output}
    return {"config": cfg.model_dump(mode="json"), "stages": d.run_stages()}


def _flow(name: str):
    if name == "backfill":
        from flows.backfill import backfill

        return backfill
    from flows.ultrafeedback import ultrafeedback

    return ultrafeedback


def deploy(spec: OpsSpec, cfg, pool: str | None = None, only: list[str] | None = None) -> dict[str, str]:
    """Create or update each deployment; {"flow/name": deployment id}."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    chosen = [d for d in spec.deployments if not only or d.name in only]
    missing = sorted(set(only or []) - {d.name for d in spec.deployments})
    if missing:
        raise ValueError(f"--only: no deployments named {missing} in the spec")
    out = {}
    for d in chosen:
        flow = _flow(d.flow)
        schedules = [CronSchedule(cron=d.cron, timezone=d.timezone)] if d.cron else None
        dep = RunnerDeployment.from_flow(
            flow, name=d.name, parameters=parameters(d, cfg), schedules=schedules, paused=d.paused,
            description=d.description or (flow.description or ""), tags=["ultrafeedback", *d.tags],
            work_pool_name=pool or d.work_pool, entrypoint_type=EntrypointType.MODULE_PATH,
            version=f"{cfg.name}:{cfg.seed}")
        out[f"{flow.name}/{d.name}"] = str(dep.apply())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deployments.deploy", description=__doc__.split("\n")[0])
    p.add_argument("--spec", help="operations spec (default: deployments/ops.yaml)")
    p.add_argument("--config", help="run config YAML (default: the spec's `config`)")
    p.add_argument("--out", help="output root, overrides the config's `output`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable), as in `ultrafeedback run`")
    p.add_argument("--pool", help="send every deployment to this work pool instead of the spec's")
    p.add_argument("--only", help="comma-separated deployment names to register (default: all)")
    args = p.parse_args(argv)
    from flows.config import ConfigError, load_config

    try:
        spec = load_spec(args.spec)
        cfg = load_config(args.config or spec.config, args.overrides, output=args.out)
        only = [s.strip() for s in (args.only or "").split(",") if s.strip()] or None
        ids = deploy(spec, cfg, pool=args.pool, only=only)
    except (ConfigError, ValueError) as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2
    for name, dep_id in ids.items():
        print(f"{name}  {dep_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
