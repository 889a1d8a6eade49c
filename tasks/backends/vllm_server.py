"""A vLLM OpenAI-compatible server that the flow launches, feeds and stops.

Inputs: the engine's Python (a separate vLLM environment: vLLM and Prefect cannot share
one), the model folder, served names, engine arguments. Outputs: result records via the
OpenAI-protocol client (tasks.backends.openai_http, launched mode: full concurrency at once, and a
transport failure asks the engine whether it still runs); a log file per launch.

Lifecycle: `__enter__` picks a free port, starts
`python -m vllm.entrypoints.openai.api_server` in its own process group (so stopping it
also stops the engine-core children), and polls `/health` until it answers or the
start-up timeout passes; `__exit__` sends SIGTERM to the group, then SIGKILL after the
grace period. The pid is written beside the log while the server runs. A server that
exits or stops answering while requests are in flight raises
EngineDiedError, which the orchestrator retries.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterable, Iterator

from tasks.backends.base import BatchRequest, BatchResult
from tasks.backends.faults import RequestPolicy
from tasks.backends.openai_http import OpenAIHTTPBackend
from tasks.errors import EngineDiedError, InputError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_args(model: str, served_names: list[str], tensor_parallel_size: int = 1, dtype: str = "auto",
                max_model_len: int | None = None, chat_template: str | None = None,
                enforce_eager: bool = True, extra_args: Iterable[str] = ()) -> list[str]:
    """vLLM engine arguments shared by the server and the batch runner."""
    args = ["--model", model, "--served-model-name", *served_names, "--dtype", dtype,
            "--tensor-parallel-size", str(tensor_parallel_size)]
    if max_model_len:
        args += ["--max-model-len", str(max_model_len)]
    if chat_template:
        args += ["--chat-template", chat_template]
    if enforce_eager:
        args.append("--enforce-eager")
    return args + list(extra_args)


def engine_env(extra: dict[str, str]) -> dict[str, str]:
    # The engine has its own environment: paths pointing into the flow's must not leak in.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("HF_HUB_OFFLINE", "1")  # weights come from disk; never reach for a hub
    env.update(extra)
    return env


def check_engine(python: str, model: str) -> None:
    """Fail fast, with the field names, on a missing engine environment or model folder."""
    if not Path(python).exists():
        raise InputError(f"engine.python {python} does not exist; run scripts/setup_local.sh or set engine.python")
    # "org/name" may be a hub id; an absolute or dotted path must exist.
    if (os.path.isabs(model) or model.startswith((".", "~"))) and not Path(model).exists():
        raise InputError(f"model {model} not found; run scripts/setup_local.sh or fix the pool entry's model")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after the grace period."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Children can outlive a parent that was killed from outside; the group reaches them.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


class VLLMServerBackend:
    def __init__(self, name: str, python: str, model: str, served_names: list[str], log_dir: str,
                 tensor_parallel_size: int = 1, dtype: str = "auto", max_model_len: int | None = 4096,
                 chat_template: str | None = None, enforce_eager: bool = True, extra_args: Iterable[str] = (),
                 env: dict[str, str] | None = None, startup_timeout_s: float = 600, stop_timeout_s: float = 20,
                 concurrency: int = 256, request_timeout_s: float = 900, policy: RequestPolicy | None = None):
        self.name = name
        self.python, self.model, self.served_names = python, model, list(served_names)
        self.log_dir = Path(log_dir)
        self.args = engine_args(model, self.served_names, tensor_parallel_size, dtype, max_model_len,
                                chat_template, enforce_eager, extra_args)
        self.env = env or {}
        self.startup_timeout_s, self.stop_timeout_s = startup_timeout_s, stop_timeout_s
        self.concurrency, self.request_timeout_s = concurrency, request_timeout_s
        self.policy = policy or RequestPolicy(timeout_s=request_timeout_s)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path: Path | None = None
        self.pid_path: Path | None = None
        self.startup_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """Running and answering /health (a server shutting down still runs for seconds)."""
        if not self.alive():
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=3) as resp:
                return resp.status == 200
        except OSError:
            return False

    def __enter__(self) -> "VLLMServerBackend":
        check_engine(self.python, self.model)
        self.port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"vllm-{self.name}-{self.port}.log"
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", *self.args,
               "--host", "127.0.0.1", "--port", str(self.port)]
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=engine_env(self.env), start_new_session=True)
        # Operators (and the crash test) find the server's pid beside its log.
        self.pid_path = self.log_path.with_suffix(".pid")
        self.pid_path.write_text(str(self.proc.pid))
        try:
            self._wait_healthy(started)
        except BaseException:
            self.__exit__()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _wait_healthy(self, started: float) -> None:
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() - started < self.startup_timeout_s:
            if not self.alive():
                raise EngineDiedError(f"vLLM server {self.name} exited during start-up "
                                      f"(code {self.proc.returncode}); log {self.log_path}:\n{tail(self.log_path)}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)
        raise EngineDiedError(f"vLLM server {self.name} not healthy after {self.startup_timeout_s:.0f}s "
                              f"(engine.startup_timeout_s); log {self.log_path}:\n{tail(self.log_path)}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_group(self.proc, self.stop_timeout_s)
            self.proc = None
            self.pid_path.unlink(missing_ok=True)

    def run(self, requests: Iterable[BatchRequest]) -> Iterator[BatchResult]:
        if not self.alive():
            raise EngineDiedError(f"vLLM server {self.name} is not running; log {self.log_path}:\n{tail(self.log_path)}")
        client = OpenAIHTTPBackend(self.name, self.base_url, model=self.served_names[0],
                                   max_concurrency=self.concurrency, policy=self.policy, launched=True,
                                   alive=self.healthy, limit_key=f"launched|{self.base_url}")
        yield from client.run(requests)
        if not self.alive():
            raise EngineDiedError(f"vLLM server {self.name} exited; log {self.log_path}:\n{tail(self.log_path)}")
