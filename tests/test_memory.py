import numpy as np
import pytest

from smallmind import memory
from smallmind.errors import SmallMindError
from smallmind.models.gpt import init_params, preset
from smallmind.runtime.kv_cache import KVCache


def test_require_refuses_more_than_is_available_naming_what_asked(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 3 << 20)
    memory.require(3 << 20, "exactly what is free")
    with pytest.raises(SmallMindError, match=r"^a batch would need 3.0 MiB of memory but only 3.0 MiB is "
                                             r"available; use a smaller one$"):
        memory.require((3 << 20) + 1, "a batch", "use a smaller one")


def test_available_memory_is_at_most_the_machine_total():
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    assert 0 < memory.available_bytes() <= total


def test_format_bytes_picks_the_unit():
    assert [memory.format_bytes(n) for n in (512, 1536, 5 << 30, 3 << 50)] == ["512 B", "1.5 KiB", "5.0 GiB",
                                                                               "3.0 PiB"]


def test_models_and_kv_caches_that_cannot_fit_are_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)
    with pytest.raises(SmallMindError, match="a model of [0-9,]+ parameters would need"):
        init_params(preset("tiny"))
    with pytest.raises(SmallMindError, match="a KV cache of 4096 positions would need 16.0 MiB"):
        KVCache(2, 4, 4096, 64)


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


def test_a_freed_large_array_goes_back_to_the_system():
    if not memory.map_large_allocations():
        pytest.skip("needs glibc's mallopt")
    np.ones(16 << 20, np.uint8)   # freed at once: glibc's own rule would now serve 8 MiB from the heap
    before = rss_anon()
    freed = np.ones(8 << 20, np.uint8)
    kept = np.ones(1 << 20, np.uint8)   # lies above `freed` when both come from the heap
    del freed
    assert rss_anon() - before < (4 << 20)
    assert kept.sum() == 1 << 20


@pytest.mark.parametrize("text,mode", [("always [madvise] never\n", "madvise"), ("[always] madvise never\n", "always"),
                                       ("always madvise [never]\n", "never"), ("garbled\n", None)])
def test_transparent_huge_pages_reads_the_selected_mode(tmp_path, text, mode):
    setting = tmp_path / "enabled"
    setting.write_text(text)
    assert memory.transparent_huge_pages(str(setting)) == mode
    assert memory.transparent_huge_pages(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("mode,env,expect", [("always", "0", True), ("madvise", "1", True), ("madvise", "0", False),
                                             ("never", "1", False), (None, "1", False)])
def test_large_arrays_get_huge_pages_by_the_mode_and_numpys_advice(monkeypatch, mode, env, expect):
    monkeypatch.setattr(memory, "transparent_huge_pages", lambda: mode)
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", env)
    assert memory.huge_pages_for_large_arrays() is expect
