"""relformer.utils.cpu: MeasuredRatios answers from the process, then the disk, then measures -- once per
key and thread count, also under concurrent askers; remeasure replaces the entry; a forked child gets a
lock of its own; a corrupt file reads as empty. paired_ratio: the conservative ratio of two timings."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch

from relformer.utils.cpu import MeasuredRatios, paired_ratio


@pytest.fixture
def store(monkeypatch, tmp_path):
    monkeypatch.setenv("RELFORMER_CACHE", str(tmp_path))
    return MeasuredRatios("test-ratios", schema=1)


def test_process_then_disk_then_measured(store):
    calls = []
    assert store.get("a", lambda: calls.append("a") or 2.5) == (2.5, "measured")
    assert store.get("a", lambda: pytest.fail("measured twice")) == (2.5, "process") and store.known("a") == 2.5
    store.forget()  # a new process
    assert store.known("a") is None
    assert store.get("a", lambda: pytest.fail("the disk holds it")) == (2.5, "disk")
    assert store.get("a", lambda: 4.0, remeasure=True) == (4.0, "measured")
    store.forget()
    assert store.get("a", lambda: pytest.fail("the disk holds it")) == (4.0, "disk")  # the new answer was written
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads != 1 else 2)  # another thread count: its own entry
        assert store.get("a", lambda: 7.0) == (7.0, "measured")
    finally:
        torch.set_num_threads(threads)
    assert store.get("a", lambda: pytest.fail("kept per thread count"))[0] == 4.0 and calls == ["a"]


def test_a_corrupt_or_invalid_file_is_measured_again(store):
    store.get("a", lambda: 2.0)
    path = store.disk.file(torch.get_num_threads())
    for content in ("not json", path.read_text().replace("2.0", "-1.0")):
        path.write_text(content)
        store.forget()
        assert store.get("a", lambda: 3.0) == (3.0, "measured")


def test_concurrent_askers_get_one_measurement(store):
    calls, results = [], []

    def slow():
        calls.append(1)
        time.sleep(0.2)
        return 1.5
    askers = [threading.Thread(target=lambda: results.append(store.get("k", slow)[0])) for _ in range(4)]
    for t in askers:
        t.start()
    for t in askers:
        t.join()
    assert calls == [1] and results == [1.5] * 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX")
def test_a_forked_child_measures_with_a_lock_of_its_own(store):
    store._lock.acquire()  # held by this thread when the fork happens: the child must not inherit it held
    try:
        pid = os.fork()
        if pid == 0:  # the child: a fresh lock, so asking does not deadlock
            signal.alarm(20)  # a deadlock would end the child (a failure), not hang the suite
            code = 0 if store.get("child", lambda: 9.0)[0] == 9.0 else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        store._lock.release()
    assert os.waitstatus_to_exitcode(status) == 0


def test_paired_ratio_is_conservative():
    assert paired_ratio(lambda: time.sleep(0.004), lambda: time.sleep(0.001), reps=3) > 1.5
    assert paired_ratio(lambda: None, lambda: time.sleep(0.002), reps=3) < 0.5
