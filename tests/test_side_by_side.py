"""benchmarks/side_by_side.py's settle(): a comparison's worker answers only once its own threads
have stopped using the CPU, so that the other side's next turn starts on idle cores; and
call_times(), the kernel benchmarks' timer."""

import threading
import time

from side_by_side import call_times, settle


def spinner(seconds: float, done: threading.Event, stop: threading.Event | None = None) -> threading.Thread:
    # a thread that burns a core for `seconds` (or until `stop`), as a library's pool does after its work
    def run():
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and not (stop and stop.is_set()):
            pass
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_settle_waits_for_a_spinning_thread():
    done = threading.Event()
    thread = spinner(0.15, done)
    settle()
    assert done.is_set(), "settle() returned while another thread of the process was still spinning"
    thread.join()


def test_settle_returns_soon_on_a_quiet_process():
    waited = settle()
    assert waited < 0.5   # a few 10 ms windows at most, not the one-second limit


def test_settle_gives_up_at_its_limit():
    done, stop = threading.Event(), threading.Event()
    thread = spinner(30.0, done, stop)
    try:
        waited = settle(limit=0.2)
        assert 0.2 <= waited < 1.0
        assert not done.is_set()
    finally:
        stop.set()
        thread.join()


def test_call_times_times_each_call_after_an_untimed_first():
    calls = []

    def work():
        calls.append(time.perf_counter())
        time.sleep(0.002 if len(calls) > 1 else 0.05)   # the first call is slow and not counted

    times = call_times(work, 4)
    assert len(calls) == 5 and len(times) == 4
    assert all(0.0015 < t < 0.045 for t in times), times
