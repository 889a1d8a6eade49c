"""Process settings of a run: the task-thread default and the garbage-collector tuning."""
from __future__ import annotations

import gc
import os

import flows.runtime as runtime


def test_task_threads_default_and_an_explicit_setting_wins(monkeypatch):
    assert [runtime.default_task_threads(c) for c in (1, 2, 8, 9, 16, 64, 256)] == [4, 4, 4, 4, 8, 16, 16]
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    runtime.set_task_threads()
    assert os.environ[runtime.THREADS_ENV] == str(runtime.default_task_threads())
    monkeypatch.setenv(runtime.THREADS_ENV, "2")
    runtime.set_task_threads()
    assert os.environ[runtime.THREADS_ENV] == "2"


def test_tune_gc_freezes_once_and_raises_the_threshold(monkeypatch):
    before = gc.get_threshold()
    monkeypatch.setattr(runtime, "_tuned", False)
    try:
        runtime.tune_gc()
        frozen = gc.get_freeze_count()
        assert frozen > 0 and gc.get_threshold() == runtime.GC_THRESHOLD
        runtime.tune_gc()  # a second call freezes nothing more (frozen objects may be freed meanwhile)
        assert gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
