"""Word from inside a running engine task that one shard's parts are written.

Inputs: a run-local key (`open_channel`), then `notify(key, engine_id, shard_id)` from an
engine task each time it has written every part it owes one instruction shard. Output: a
`queue.Queue` of `("part", engine_id, shard_id)` events that the generation stage reads to
merge that shard at once, without waiting for the engine task to end (an engine task ends
only when all its shards are written, so with every model in every shard no merge could
start before the last engine ended).

In-process, as the GPU ledger (tasks/generation/gpu_ledger.py): the engine tasks run in
threads of the flow's process under the default task runner. A task that runs in another
process (a Dask or Ray worker) finds no channel under the key, `notify` does nothing, and
its shards are merged when it ends, as before. A lost event costs only time: the stage
also merges every shard whose engines have ended.
"""
from __future__ import annotations

import queue
import threading

_LOCK = threading.Lock()
_CHANNELS: dict[str, queue.Queue] = {}


def open_channel(key: str) -> queue.Queue:
    """The run's event queue under `key` (the same one if it is already open)."""
    with _LOCK:
        return _CHANNELS.setdefault(key, queue.Queue())


def close_channel(key: str) -> None:
    with _LOCK:
        _CHANNELS.pop(key, None)


def notify(key: str | None, engine_id: str, shard_id: str) -> bool:
    """Tell the run under `key` that `engine_id` has written its parts of `shard_id`; False
    when no channel of that key is open in this process (nothing is sent)."""
    if key is None:
        return False
    with _LOCK:
        channel = _CHANNELS.get(key)
    if channel is None:
        return False
    channel.put(("part", engine_id, shard_id))
    return True
