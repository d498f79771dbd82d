import subprocess
import sys
import textwrap
import time

import pytest

from smallmind import SmallMindError
from smallmind import scope as scope_module
from smallmind.profiler.recorder import Recorder, recording, scope_cost_ns
from smallmind.scope import scope


def test_scope_without_recorder_is_one_shared_noop():
    assert not scope_module.recording()
    assert scope("a") is scope("b")
    with scope("a") as value:
        assert value is None


def test_recorder_aggregates_by_full_path():
    rec = Recorder()
    with recording(rec):
        for _ in range(3):
            with scope("decode"):
                with scope("step"):
                    with scope("norm"):
                        pass
                    with scope("norm"):
                        pass
                with scope("sampling"):
                    pass
    calls = {n.path: n.calls for n in rec.nodes()}
    assert calls == {"decode": 3, "decode/step": 3, "decode/step/norm": 6, "decode/sampling": 3}


def test_recorder_total_is_children_plus_self():
    rec = Recorder()
    with recording(rec):
        with scope("outer"):
            with scope("inner"):
                time.sleep(0.002)
            time.sleep(0.001)
    outer = rec.root.children["outer"]
    inner = outer.children["inner"]
    assert outer.child_ns == inner.total_ns
    assert outer.self_ns == outer.total_ns - inner.total_ns
    assert inner.total_ns >= 2_000_000 and outer.self_ns >= 1_000_000


def test_recorder_min_max_bracket_each_call():
    rec = Recorder()
    with recording(rec):
        for seconds in (0.001, 0.003):
            with scope("sleep"):
                time.sleep(seconds)
    node = rec.root.children["sleep"]
    assert node.calls == 2 and node.min_ns + node.max_ns == node.total_ns
    assert 1_000_000 <= node.min_ns <= node.max_ns and node.max_ns >= 3_000_000


def test_recording_restores_the_previous_recorder():
    outer, inner = Recorder(), Recorder()
    with recording(outer):
        with recording(inner):
            with scope("x"):
                pass
        assert scope_module._recorder is outer
    assert not scope_module.recording()
    assert "x" in inner.root.children and not outer.root.children


def test_exception_inside_scope_propagates_and_closes_the_scope():
    rec = Recorder()
    with recording(rec):
        with pytest.raises(KeyError):
            with scope("a"):
                with scope("b"):
                    raise KeyError("boom")
        with scope("c"):
            pass
    assert rec.current is rec.root
    assert sorted(rec.root.children) == ["a", "c"]


def test_operation_time_skips_containers_but_counts_a_leaf_optimizer():
    rec = Recorder()
    with recording(rec):
        with scope("forward"):
            with scope("matmul.qkv"):
                with scope("softmax"):
                    pass
        with scope("optimizer"):
            pass
    root = rec.root
    qkv = root.children["forward"].children["matmul.qkv"]
    optimizer = root.children["optimizer"]
    assert root.children["forward"].is_container and not optimizer.is_container
    assert rec.operation_ns() == qkv.total_ns + optimizer.total_ns


def test_scope_cost_reports_recording_dearer_than_the_noop():
    # real clocks: recording costs ~60 ns over the no-op's ~100, so one probe that a busy machine
    # (a collector pause, another test's threads) hits can invert them; one of five must not
    def ordered(cost):
        return 0 < cost["off_ns"] < cost["on_ns"] and 0 < cost["inside_ns"] < cost["on_ns"]

    costs = [scope_cost_ns(iterations=20_000) for _ in range(5)]
    assert any(ordered(cost) for cost in costs), costs


def _nested_run():
    for _ in range(3):
        with scope("decode"):
            with scope("norm"):
                pass
            with scope("norm"):
                pass
        with scope("sampling"):
            pass


def test_python_event_log_builds_the_same_tree_as_the_native_one(monkeypatch):
    from smallmind.profiler import recorder as recorder_module

    native = Recorder()
    with recording(native):
        _nested_run()
    monkeypatch.setattr(recorder_module, "EventLog", None)
    python = Recorder()
    with recording(python):
        _nested_run()
    assert type(python.log).__name__ == "_PyEventLog"
    assert {n.path: n.calls for n in python.nodes()} == {n.path: n.calls for n in native.nodes()} == {
        "decode": 3, "decode/norm": 6, "sampling": 3}


def test_a_full_scope_log_is_reported_not_silently_truncated():
    rec = Recorder(capacity=4)
    with recording(rec):
        for _ in range(3):
            with scope("x"):
                pass
    with pytest.raises(SmallMindError, match="overflowed"):
        rec.nodes()


def test_scopes_work_without_the_native_scope_log():
    code = textwrap.dedent("""
        import sys
        sys.modules["smallmind._scopelog"] = None  # as if the extension were not built
        from smallmind.scope import scope
        from smallmind.profiler.recorder import Recorder, recording
        with scope("off"):
            pass
        with recording(Recorder()) as rec:
            with scope("decode"):
                with scope("norm"):
                    pass
        print(sorted((n.path, n.calls) for n in rec.nodes()), type(rec.log).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[('decode', 1), ('decode/norm', 1)] _PyEventLog"


def test_native_event_log_refuses_bad_sizes_and_ids():
    native = pytest.importorskip("smallmind._scopelog")
    for capacity in (0, -5, 1 << 40):
        with pytest.raises(ValueError, match="capacity"):
            native.EventLog(capacity)
    log = native.EventLog(2)
    for bad in (-1, 1 << 31):
        with pytest.raises(ValueError, match="scope id"):
            log.handle(bad)
    with pytest.raises(TypeError):
        native.set_table(["not", "a", "dict"])
    with log.handle(7):
        pass
    ids, times = log.drain()
    assert len(ids) == 8 and len(times) == 16 and log.size == 0 and not log.overflowed
