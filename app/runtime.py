"""The interpreter's process-wide settings the daemon makes for its latency (SPEC §13).

- `tune_interpreter()`, first thing at start: the GIL's switch interval. The journal's threads
  hand each result back through the GIL, which a busy event loop holds for up to the switch
  interval (CPython's default: 5 ms). 50 µs beat 200 µs in each of three A/B pairs (put_intent
  p50 −0.4 ms, ``docs/benchmarks.md``).
- `freeze_startup_heap()`, once start-up is over (before intake opens): collect, then move
  every object alive to the collector's permanent generation (``gc.freeze``). What start-up
  built (modules, classes, the exchange's rules: ~83,000 tracked objects) lives as long as the
  process, and a full collection scanned it every time: ~64 ms with the event loop stopped,
  once every half minute or so at 50 signals/s. Frozen, it is never scanned again; the
  collections that remain scan only what was made since. `thaw_heap()` on the way down hands
  it back to the collector (a test process starts many daemons: what one of them froze must not
  outlive it).
"""

from __future__ import annotations

import gc
import sys

__all__ = ["SWITCH_INTERVAL_S", "freeze_startup_heap", "thaw_heap", "tune_interpreter"]

SWITCH_INTERVAL_S = 0.00005


def tune_interpreter() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def freeze_startup_heap() -> None:
    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    gc.unfreeze()
