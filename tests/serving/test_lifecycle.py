"""Poller: keeps polling after a failing poll, stops, and restarts."""
import threading
import time

from serving.lifecycle import Poller


def test_poller_survives_a_failing_poll_and_restarts():
    calls = []
    second = threading.Event()

    def poll():
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("bad version")
        second.set()

    poller = Poller(poll, "test-poller")
    poller.start(0.01)
    assert second.wait(5), "the poll after a failure never ran"
    poller.stop()
    stopped_at = len(calls)
    assert stopped_at >= 2
    time.sleep(0.05)
    assert len(calls) == stopped_at  # no poll after stop
    second.clear()
    poller.start(0.01)  # restart after stop polls again
    assert second.wait(5)
    poller.stop()
    assert len(calls) > stopped_at
