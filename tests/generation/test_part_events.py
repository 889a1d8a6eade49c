"""The in-process channel that tells the generation stage a shard's parts are written."""
from __future__ import annotations

import threading

from tasks.generation import part_events


def test_word_reaches_the_open_channel_from_another_thread_and_nowhere_else():
    events = part_events.open_channel("run-a")
    try:
        assert part_events.open_channel("run-a") is events  # the same run, the same queue
        sender = threading.Thread(target=part_events.notify, args=("run-a", "engine-1", "s-00003"))
        sender.start()
        sender.join()
        assert events.get(timeout=5) == ("part", "engine-1", "s-00003")
        assert not part_events.notify("run-b", "engine-1", "s-00003")  # another run's key: nothing sent
        assert not part_events.notify(None, "engine-1", "s-00003")
        assert events.empty()
    finally:
        part_events.close_channel("run-a")
    # a task in another process finds no channel: its word is dropped, not an error
    assert not part_events.notify("run-a", "engine-1", "s-00004")
