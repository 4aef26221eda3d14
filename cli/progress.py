"""Progress bars, drawn only by the CLI: one factory over tqdm on stderr, handed to libraries as callbacks.

Libraries take `track(iterable, desc, total) -> iterable` (quantize, eval, bench) or `on_step(step, total)`
(diffusion sampling); `tracker` and `step_bar` make those from one bar style, and nothing when bars are off.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
Track = Callable[..., Iterable]  # track(iterable, desc, total=None) -> iterable


def bar(total: int | None, desc: str, unit: str = "it", leave: bool = False, enabled: bool = True):
    """A tqdm bar on stderr (disabled, drawing nothing, when `enabled` is false)."""
    from tqdm import tqdm  # imported only when a command draws progress

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, disable=not enabled)


def tracker(enabled: bool, unit: str = "it", leave: bool = False) -> Track:
    """A `track(iterable, desc, total)` callback: the iterable under a bar, or the iterable itself when disabled."""

    def track(it: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
        if not enabled:
            return it
        from tqdm import tqdm

        return tqdm(it, desc=desc, total=total, unit=unit, leave=leave, file=sys.stderr)

    return track


@contextmanager
def step_bar(total: int, desc: str, unit: str = "step", leave: bool = False,
             enabled: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """An `on_step(step, total)` callback that advances a bar by one per call (None when disabled); closed on exit."""
    if not enabled:
        yield None
        return
    b = bar(total, desc, unit=unit, leave=leave)
    try:
        yield lambda step, total: b.update(1)
    finally:
        b.close()
