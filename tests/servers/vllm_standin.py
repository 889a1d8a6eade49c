"""Stands in for `python -m vllm.entrypoints.openai.api_server` where no vLLM can run.

Inputs: the command line the flow gives a launched vLLM server (`-m
vllm.entrypoints.openai.api_server --model M --served-model-name N... --port P ...`; the
engine arguments it does not need are ignored) and environment variables:
STANDIN_LATENCY_S (seconds per answer, default 0), STANDIN_LAUNCH_LOG (a file: one JSON
line per launch with its pid, port, served names, --data-parallel-size and the
CUDA_VISIBLE_DEVICES it was given), and, to kill one server mid-run, STANDIN_DIE_ONCE (a
file path), STANDIN_DIE_MODEL and STANDIN_DIE_AFTER: the first launch of that model (the
one that creates the file) SIGKILLs itself once it has answered that many requests (default
5), with the requests in flight unanswered. Output: the OpenAI-protocol test server
(tests/servers/openai_server.py, with /health) on that port until SIGTERM.

`standin_python(folder)` writes an executable that runs this file, to put in a pool
entry's `engine.python`: the flow then launches, health-checks and stops it exactly as it
does a vLLM server.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.servers` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.servers.openai_server import JudgeServer  # noqa: E402


def standin_python(folder: Path) -> str:
    path = Path(folder) / "standin-python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def main(argv: list[str]) -> None:
    if argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]:
        argv = argv[2:]
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="")
    ap.add_argument("--served-model-name", nargs="+", default=[])
    ap.add_argument("--data-parallel-size", type=int, default=1)
    args, _ = ap.parse_known_args(argv)
    srv = JudgeServer(args.port, latency_s=float(os.environ.get("STANDIN_LATENCY_S", "0")),
                      models=tuple(args.served_model_name) or ("judge",))
    signal.signal(signal.SIGTERM, lambda *_: srv.stopping.set())
    log = os.environ.get("STANDIN_LAUNCH_LOG")
    if log:
        record = {"pid": os.getpid(), "port": args.port, "model": args.model, "served": args.served_model_name,
                  "dp": args.data_parallel_size, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "t": time.time()}
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
    srv.start()
    if _chosen_to_die(args.model):
        threading.Thread(target=_die_after, args=(srv, int(os.environ.get("STANDIN_DIE_AFTER", "5"))),
                         daemon=True).start()
    srv.stopping.wait(600)  # bounded: a stand-in nobody stops goes away by itself
    srv.stop()


def _chosen_to_die(model: str) -> bool:
    """True for the first launch of STANDIN_DIE_MODEL: it alone creates the STANDIN_DIE_ONCE file."""
    path = os.environ.get("STANDIN_DIE_ONCE")
    if not path or model != os.environ.get("STANDIN_DIE_MODEL"):
        return False
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _die_after(srv: JudgeServer, answers: int) -> None:
    while srv.state.by_status.get("200", 0) < answers:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)  # as an engine crash: no clean shutdown, requests in flight lost


if __name__ == "__main__":
    main(sys.argv[1:])
