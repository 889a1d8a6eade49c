"""The `ultrafeedback` command line.

    ultrafeedback run [--config FILE] [--out DIR] [--stages sample,generate,rate,assemble] [--set k=v ...]
    ultrafeedback status --out DIR [--json]
    ultrafeedback backfill --out DIR [--stages rate,assemble] [--shards ID,ID ...]
    ultrafeedback plan --config FILE [--set k=v ...] [--json]

Inputs: a YAML run config (default: the shipped demo config) and overrides. Outputs: the
run's shards and manifest under the output root; `status` prints each stage's shards and
their states; `backfill` reruns only the unfinished shards of a run and re-assembles (exit
code 1 when some are still unfinished). On a terminal, `run` and `backfill` show a progress
bar per stage. Errors in the config or the sources are printed as one clear message with
exit code 2, before any work starts; no traceback for expected errors.

Prefect: `run` and `backfill` use the server PREFECT_API_URL names, else a temporary one the
command starts first and stops last, also when the command is killed (flows/api_server.py).
Task threads and the garbage collector are set as flows/runtime.py says.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from flows.runtime import set_task_threads, tune_gc

# Prefect reads these at import time: no telemetry, and room for a slow first start.
for _k, _v in {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
    os.environ.setdefault(_k, _v)
set_task_threads()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ultrafeedback", description="Build UltraFeedback-style AI-feedback datasets.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run stages of the pipeline")
    run.add_argument("--config", help="run config YAML (default: the shipped demo config)")
    run.add_argument("--out", help="output root, overrides the config's `output`")
    run.add_argument("--stages", default="sample,generate,rate,assemble",
                     help="comma-separated stages to run (default: all four)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value, e.g. --set sources.0.quota=20 (repeatable)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")
    st = sub.add_parser("status", help="show each stage's shards and their states")
    st.add_argument("--out", required=True, help="output root of the run")
    st.add_argument("--json", action="store_true", help="print JSON")
    bf = sub.add_parser("backfill", help="rerun only the failed or unfinished shards of a run, then re-assemble")
    bf.add_argument("--out", required=True, help="output root of the run (its recorded config is used)")
    bf.add_argument("--stages", help="comma-separated stages to look at (default: every stage the run planned)")
    bf.add_argument("--shards", help="comma-separated shard ids to limit the backfill to (default: all unfinished)")
    bf.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")
    pl = sub.add_parser("plan", help="validate a config and show what a run will do and cost, without running it")
    pl.add_argument("--config", required=True, help="run config YAML")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (repeatable)")
    pl.add_argument("--json", action="store_true", help="print JSON")
    return p


def cmd_plan(args, server=None) -> int:
    from flows.plan import format_plan, load_plan_config, make_plan

    plan = make_plan(load_plan_config(args.config, args.overrides), origin=args.config)
    print(json.dumps(plan.as_dict(), indent=1, default=str) if args.json else format_plan(plan))
    return 2 if plan.errors else 0


def _show_progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _csv(value: str | None) -> list[str] | None:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


def _result(state):
    """A flow's result, also when it ended Failed with shards left (its result is the summary);
    an error that stopped the flow is raised."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result


def cmd_run(args, server=None) -> int:
    from flows.config import checked_stages, load_config
    from flows.faults import requested_faults

    stages = checked_stages([s.strip() for s in args.stages.split(",") if s.strip()], "--stages")
    requested_faults()  # a malformed UF_FAIL_SHARDS fails now, not once the server is up
    cfg = load_config(args.config, args.overrides, output=args.out)
    from flows.progress import cli_display
    from flows.ultrafeedback import ultrafeedback

    with _ready(server), cli_display(_show_progress(args)):
        summary = _result(ultrafeedback(config=cfg, stages=stages, return_state=True))
    print(json.dumps(summary, indent=1, default=str))
    failed = {st: info["shards"]["failed"] for st, info in summary["stages"].items()
              if st in stages and (info.get("shards") or {}).get("failed")}
    if failed:
        # The finished shards are kept; a backfill reruns only what failed.
        print(f"ultrafeedback: shards failed {failed}; finish the run with: "
              f"ultrafeedback backfill --out {cfg.output}", file=sys.stderr)
        return 1
    return 0


def cmd_backfill(args, server=None) -> int:
    from flows.config import checked_stages
    from flows.faults import requested_faults

    stages = _csv(args.stages)
    stages = checked_stages(stages, "--stages") if stages else None
    requested_faults()
    from flows.backfill import backfill
    from flows.progress import cli_display

    with _ready(server), cli_display(_show_progress(args)):
        result = _result(backfill(output=args.out, stages=stages, shards=_csv(args.shards), return_state=True))
    print(json.dumps(result, indent=1, default=str))
    left = result["still_unfinished"]
    if left:
        print(f"ultrafeedback: {sum(len(v) for v in left.values())} shards still unfinished: {left}", file=sys.stderr)
        return 1
    return 0


def status_data(out: str) -> dict:
    from storage.shards import ShardStore

    store = ShardStore(out)
    stages = {}
    for stage in store.stages():
        shards = store.shard_states(stage)
        counts: dict[str, int] = {}
        for st in shards.values():
            counts[st["state"]] = counts.get(st["state"], 0) + 1
        stages[stage] = {"counts": counts, "rows": sum(s.get("rows", 0) for s in shards.values()), "shards": shards}
    return {"output": out, "stages": stages, "batches_in_flight": _batches_in_flight(out)}


def _batches_in_flight(out: str) -> list[dict]:
    """Open provider batches recorded beside the rate journals of a local output root."""
    from pathlib import Path

    from tasks.backends.batch_state import in_flight

    root = Path(out[len("file://"):] if out.startswith("file://") else out)
    if "://" in out and not out.startswith("file://"):
        return []  # remote roots keep journals in a local cache folder; `rating.journal_dir` names it
    return in_flight(sorted((root / "journal" / "rate").glob("*.batches.jsonl")))


def cmd_status(args, server=None) -> int:
    data = status_data(args.out)
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    if not data["stages"]:
        print(f"{args.out}: no stages yet")
    for stage, info in data["stages"].items():
        counts = ", ".join(f"{n} {k}" for k, n in sorted(info["counts"].items()))
        print(f"{stage:10s} {counts}; {info['rows']} rows")
        for shard_id, st in info["shards"].items():
            if st["state"] != "done":
                print(f"  {shard_id}: {st['state']}" + (f" ({st['error']})" if st.get("error") else ""))
    flight = data.get("batches_in_flight") or []
    if flight:
        print(f"provider batches in flight: {len(flight)} (a later run collects them)")
        for b in flight:
            print(f"  {b['shard']}: {b['batch_id'] or '(being submitted)'} {b['status']}, {b['requests']} requests, "
                  f"{b['completed'] or 0} completed, {b['failed'] or 0} failed, age {b['age_s']} s")
    return 0


@contextlib.contextmanager
def _ready(server):
    """Wait for the temporary Prefect server (started before the imports) right before a flow,
    and point Prefect at it even if Prefect read its settings before the server existed."""
    tune_gc()  # after the imports, before the flow
    if server is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.wait_ready()}):
        yield


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from flows.api_server import ServerStartError, temporary_server

    # `run` and `backfill` need a Prefect API: PREFECT_API_URL's, else one for this command,
    # started now so that it comes up while Prefect is imported and the config is checked.
    server_cm = temporary_server() if args.command in ("run", "backfill") else contextlib.nullcontext()
    with server_cm as server:
        from flows.config import ConfigError
        from tasks.errors import UltraFeedbackError

        try:
            return {"run": cmd_run, "status": cmd_status, "backfill": cmd_backfill,
                    "plan": cmd_plan}[args.command](args, server)
        except (ConfigError, UltraFeedbackError, ValueError, ServerStartError) as exc:
            print(f"ultrafeedback: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
