"""Stage timings and progress of compiles, through ``logging.getLogger("symad")``.

Every finished specialization logs its stage timings at ``DEBUG``. A compile still
running after :data:`PROGRESS_AFTER` seconds logs ``INFO`` progress lines (stage, graph
size, elapsed time) every :data:`PROGRESS_EVERY` seconds from a watchdog thread, so a
user who enabled logging (``logging.basicConfig(level=logging.INFO)``) sees that a big
compile is alive and where it is.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("symad")

PROGRESS_AFTER = 2.0
PROGRESS_EVERY = 2.0

_current = threading.local()


class _Watch:
    """Context manager: report progress of one compile while it runs."""

    def __init__(self, name: str):
        self.name = name
        self.stage = "trace"
        self.detail = ""
        self._done = threading.Event()
        self._t0 = time.perf_counter()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        wait = PROGRESS_AFTER
        while not self._done.wait(wait):
            log.info("symad: compiling %s: %s%s, %.1f s so far", self.name, self.stage,
                     f" ({self.detail})" if self.detail else "",
                     time.perf_counter() - self._t0)
            wait = PROGRESS_EVERY

    def __enter__(self) -> _Watch:
        self._outer = getattr(_current, "watch", None)
        _current.watch = self
        if log.isEnabledFor(logging.INFO):
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="symad-progress")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        _current.watch = self._outer
        elapsed = time.perf_counter() - self._t0
        if self._thread is not None and elapsed > PROGRESS_AFTER:
            log.info("symad: compiled %s in %.1f s", self.name, elapsed)


def watch(name: str) -> _Watch:
    return _Watch(name)


def stage(name: str, detail: str = "") -> None:
    """Name the stage the current thread's compile is in (for progress lines)."""
    w = getattr(_current, "watch", None)
    if w is not None:
        w.stage, w.detail = name, detail


def timings(name: str, stats: dict) -> None:
    if log.isEnabledFor(logging.DEBUG):
        sec = stats.get("seconds", {})
        parts = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sec.items())
        log.debug("symad: %s: %s%s; nodes %s", name, parts,
                  " (cached)" if stats.get("cached") else "", stats.get("nodes"))
