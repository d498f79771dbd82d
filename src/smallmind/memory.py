"""Memory a size asked for would take, checked before it is allocated.

A batch size, a context length or a layer count from a flag, an API call or a crafted
config can ask for more memory than the machine has. NumPy then raises MemoryError (or
the kernel overcommits and the OOM killer ends the process later); `require` refuses
such a size up front with a SmallMindError that names what asked for it.
"""

import ctypes
import os

from .errors import SmallMindError


def available_bytes() -> int | None:
    """Memory this process can still take (Linux: MemAvailable, capped by a cgroup limit), or None."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            pass
    limit = _cgroup_room()
    if limit is not None:
        found.append(limit)
    return min(found) if found else None


def _cgroup_room() -> int | None:
    # cgroup v2: memory.max minus memory.current of this process's group ("max" = no limit)
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            rel = next(line.split(":", 2)[2].strip() for line in f if line.startswith("0::"))
        base = f"/sys/fs/cgroup{rel}".rstrip("/")
        with open(f"{base}/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(f"{base}/memory.current", encoding="ascii") as f:
            return max(0, int(limit) - int(f.read().strip()))
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def require(nbytes: int, what: str, hint: str = "") -> None:
    """Refuse (SmallMindError) when `what` would need more than the memory available."""
    room = available_bytes()
    if room is not None and nbytes > room:
        raise SmallMindError(f"{what} would need {format_bytes(nbytes)} of memory but only "
                             f"{format_bytes(room)} is available" + (f"; {hint}" if hint else ""))


def format_bytes(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_pages(path: str = THP_SETTING) -> str | None:
    """Linux's transparent huge page mode ("always", "madvise" or "never": the bracketed word
    of `path`), or None where there is no such setting (another OS, or an old kernel)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def huge_pages_for_large_arrays() -> bool:
    """Whether NumPy's large arrays get huge pages here: THP "always", or "madvise" with NumPy's
    advice left on (it advises buffers of 4 MiB and more unless NUMPY_MADVISE_HUGEPAGE=0)."""
    mode = transparent_huge_pages()
    return mode == "always" or (mode == "madvise" and os.environ.get("NUMPY_MADVISE_HUGEPAGE", "1") != "0")


# glibc's mallopt parameter for the size from which an allocation gets its own mapping
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def map_large_allocations() -> bool:
    """Serve every allocation of 128 KiB or more from its own mapping, for the rest of the process
    (glibc's mallopt; elsewhere nothing happens and False is returned).

    glibc starts that way but raises the threshold each time such a block is freed (up to 32 MiB),
    after which large arrays come from the heap: a freed temporary stays resident below live data,
    and NumPy's zeros (calloc) clear, so touch, every page of a reused block. Loading a model frees
    many large temporaries, and most of a session's workspace is never touched, so with the moving
    threshold a model's resident memory grows by tens of MB (issue 7's memory budget)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
