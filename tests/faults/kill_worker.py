"""Runs the `ultrafeedback` CLI, optionally stopping inside a shard write so a test can
SIGKILL the process exactly there.

Run: python -m tests.faults.kill_worker run --config ... --out ...   (the CLI's arguments)

With UF_TEST_PAUSE="MODE:STAGE:N" and UF_TEST_PAUSE_FLAG=<file>, the N-th shard written
under STAGE (a stage folder such as `rate` or `generate_parts/m`, matched as a path part)
stops at MODE and creates the flag file, then sleeps until killed:
- `tmp`: half of the Parquet bytes are in the temporary file (flushed to the OS);
- `marker`: the shard is renamed into place but its done marker is not written yet.
Nothing else changes: without the variables this is `ultrafeedback` itself.
"""
from __future__ import annotations

import io
import os
import sys
import threading
import time
import types

_lock = threading.Lock()
_seen = {"n": 0}


def _pause(flag: str) -> None:
    with open(flag, "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(600)  # the test kills the process; never reached otherwise
    os._exit(3)


def _hit(path: str, stage: str, n: int) -> bool:
    if f"/{stage}/" not in path.replace(os.sep, "/"):
        return False
    with _lock:
        _seen["n"] += 1
        return _seen["n"] == n


def install(spec: str, flag: str) -> None:
    import pyarrow.parquet as pq

    import storage.shards as shards

    mode, stage, n = spec.split(":")
    n = int(n)
    if mode == "tmp":
        def write_table(table, where, **kw):
            if _hit(getattr(where, "path", ""), stage, n):
                buf = io.BytesIO()
                pq.write_table(table, buf, **kw)
                data = buf.getvalue()
                where.write(data[: len(data) // 2])
                where.flush()
                _pause(flag)
            return pq.write_table(table, where, **kw)

        shards.pq = types.SimpleNamespace(write_table=write_table, read_table=pq.read_table)
    elif mode == "marker":
        original = shards.ShardStore.write_json

        def write_json(self, path, obj):
            if path.endswith(".done.json") and _hit(path, stage, n):
                _pause(flag)
            return original(self, path, obj)

        shards.ShardStore.write_json = write_json
    else:
        raise SystemExit(f"UF_TEST_PAUSE: unknown mode {mode!r}")


if __name__ == "__main__":
    if os.environ.get("UF_TEST_PAUSE"):
        install(os.environ["UF_TEST_PAUSE"], os.environ["UF_TEST_PAUSE_FLAG"])
    from flows.cli import main

    sys.exit(main(sys.argv[1:]))
