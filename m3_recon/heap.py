"""The garbage collector during bulk work: a large heap that outlives the work, 10^5-10^6 objects made by it.

CPython's collector runs a pass every 700 new container objects and now and then walks the whole heap. A day's
posting (10^6 MI transactions) or the sandbox serving them keeps that many objects alive at a time, so the passes
came often and each full one walked everything the process held (Dagster's objects, a scaled world's 2 x 10^6):
a fifth of either side's CPU. ``bulk_work`` leaves what the process holds on entry out of every pass
(``gc.freeze``) and runs the passes every ``YOUNG_OBJECTS`` new objects; both are undone on exit. Nested (the
sandbox in-process while a test posts), the inner exit unfreezes everything: the collector only walks it again.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

YOUNG_OBJECTS = 100_000  # new container objects between two passes (CPython's default: 700)


@contextmanager
def bulk_work() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
