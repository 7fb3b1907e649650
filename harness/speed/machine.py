"""The machine the speed runs ran on, written beside them: ratios hold for one kind of CPU only.

Two machines of the same cloud kind gave opposite verdicts on one question: on a 2-core AVX2
EPYC, MAX float32 decoded tiny.en at 0.88x CTranslate2 float32's speed; on a 2-core AVX-512
Xeon with a 480 MB L3 (the whole model in cache), 1.29x (one report each, 2026-12-05). A report
that does not say which machine it ran on cannot be compared with another.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path
from typing import Any

from harness.max_whisper.engine import host_cpu

CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
# the widest vector units first: the first one the CPU has names its class
SIMD = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("asimd", "NEON"))


def describe() -> dict[str, Any]:
    """CPU model, CPUs this process may use, vector extensions, caches, memory and the date."""
    fields = _cpuinfo_fields(host_cpu())
    flags = set(fields.get("flags", fields.get("Features", "")).split())
    return {
        "cpu": fields.get("model name", platform.processor() or platform.machine()),
        "cpus": len(os.sched_getaffinity(0)),
        "simd": [name for flag, name in SIMD if flag in flags],
        "caches": _caches(),
        "memory_gib": _memory_gib(),
        "date": datetime.date.today().isoformat(),
    }


def idle_cpu_share(seconds: float = 1.0) -> float:
    """The share of one core this process burns while its own thread sleeps ``seconds``.

    Every engine is timed beside it. Once a process has run a MAX graph, MAX 26.7 keeps a thread
    (started inside ``execute``) that wakes ~4,500 times a second: ~16% of a core while idle, for
    the life of the process. On the 2-core AVX-512 Xeon it slowed PyTorch's tiny.en encoder from
    181-192 ms to 222-241 in the same process, and from 213-223 to 260-277 in another process
    while an idle MAX process was alive (2026-12-05, ``test_speed.py`` keeps the check).
    """
    start = time.process_time()
    time.sleep(seconds)
    return (time.process_time() - start) / seconds


def _cpuinfo_fields(text: str) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _caches() -> dict[str, str]:
    """Unified and data caches of the first CPU by level, as the kernel gives their size."""
    sizes = {}
    for index in sorted(CACHES.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind in ("Unified", "Data"):
            sizes[f"L{level}"] = _size(size)
    return sizes


def _size(text: str) -> str:
    """sysfs writes '2048K' or '491520K': in MiB where it is whole MiB."""
    if not (text.endswith("K") and text[:-1].isdigit()):
        return text
    kib = int(text[:-1])
    return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"


def _memory_gib() -> int | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return round(pages * page_size / 2**30)
