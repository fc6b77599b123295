"""The indexes over one kind of order (regular or algo), so that no request costs more as the
history grows.

A ``Book`` holds every entry ever accepted by id, by client id (in acceptance order) and per
symbol (the history, in id order), and the OPEN entries apart, per symbol in acceptance order,
with a count of the client ids they use. ``SimState`` keeps one book per kind and calls
``update`` after every status change (``set_order_status``, ``record_fill``,
``set_algo_status``), the only places a status changes; the queries here then cost what the
open entries or the answer cost, not what the history does.

``find``, ``list_open`` and ``cancel_all`` serve a request the same way for both kinds
(``/fapi/v1/order`` and its lists, ``/fapi/v1/algoOrder`` and its lists).
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from app.sim import errors
from app.sim.config import SymbolSpec
from app.sim.rules import Params, int_param

if TYPE_CHECKING:
    from app.sim.state import SimState

CANCEL_ALL_DONE = "The operation of cancel all open order is done."


class Entry(Protocol):
    """What a book needs of an order: its ids, symbol, visibility and whether it is open."""

    @property
    def id(self) -> int: ...

    @property
    def client_id(self) -> str: ...

    @property
    def spec(self) -> SymbolSpec: ...

    @property
    def visible_at(self) -> float: ...

    @property
    def is_open(self) -> bool: ...


E = TypeVar("E", bound=Entry)


class Book(Generic[E]):
    """Entries of one kind, indexed. Ids must ascend in acceptance order (both id sequences
    do), which keeps the per-symbol histories sorted by id."""

    def __init__(self) -> None:
        self._by_id: dict[int, E] = {}
        self._by_client: dict[str, list[E]] = {}
        self._history: dict[str, list[E]] = {}
        self._open: dict[str, dict[int, E]] = {}
        self._open_clients: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._by_id)

    def __repr__(self) -> str:
        return f"<Book {len(self._by_id)} entries, {sum(map(len, self._open.values()))} open>"

    def add(self, entry: E) -> None:
        """Index a newly accepted ``entry`` (open or not)."""
        self._by_id[entry.id] = entry
        self._by_client.setdefault(entry.client_id, []).append(entry)
        self._history.setdefault(entry.spec.symbol, []).append(entry)
        self.update(entry)

    def update(self, entry: E) -> None:
        """Bring the open index in line with ``entry.is_open`` after a status change."""
        open_here = self._open.setdefault(entry.spec.symbol, {})
        listed = entry.id in open_here
        if entry.is_open and not listed:
            open_here[entry.id] = entry
            self._open_clients[entry.client_id] += 1
        elif listed and not entry.is_open:
            del open_here[entry.id]
            self._open_clients[entry.client_id] -= 1
            if not self._open_clients[entry.client_id]:
                del self._open_clients[entry.client_id]

    def get(self, entry_id: int) -> E | None:
        return self._by_id.get(entry_id)

    def open(self, spec: SymbolSpec | None = None) -> list[E]:
        """The open entries of ``spec`` (of every symbol when None), in acceptance order; a
        new list, so the caller may change their status while walking it."""
        if spec is not None:
            return list(self._open.get(spec.symbol, {}).values())
        return sorted((e for here in self._open.values() for e in here.values()),
                      key=lambda e: e.id)

    def open_count(self, spec: SymbolSpec) -> int:
        return len(self._open.get(spec.symbol, ()))

    def client_id_open(self, client_id: str) -> bool:
        """Whether an open entry uses ``client_id``."""
        return client_id in self._open_clients

    def latest(self, client_id: str, now: float, spec: SymbolSpec | None = None) -> E | None:
        """The latest entry with ``client_id`` visible at ``now`` (of ``spec`` when given)."""
        for entry in reversed(self._by_client.get(client_id, ())):
            if (spec is None or entry.spec is spec) and entry.visible_at <= now:
                return entry
        return None

    def recent(self, spec: SymbolSpec, limit: int) -> list[E]:
        """The last ``limit`` entries of ``spec``, oldest first."""
        rows = self._history.get(spec.symbol, [])
        return rows[max(0, len(rows) - limit):]

    def history(self, spec: SymbolSpec, from_id: int, limit: int) -> list[E]:
        """Entries of ``spec`` with id ≥ ``from_id``, the first ``limit`` of them (a negative
        ``limit`` drops that many from the end, as a slice would)."""
        rows = self._history.get(spec.symbol, [])
        start = bisect.bisect_left(rows, from_id, key=lambda e: e.id)
        stop = start + limit if limit >= 0 else max(0, len(rows) + limit)
        return rows[start:stop]


def find(st: SimState, book: Book[E], params: Params, id_param: str, client_param: str,
         spec: SymbolSpec | None = None) -> E | None:
    """The entry named by ``id_param`` or (the latest with) ``client_param``, visible now and
    of ``spec`` when given; None if there is none. Raises -1102 if neither parameter is
    sent."""
    entry_id = int_param(params, id_param, required=False)
    client_id = params.get(client_param)
    if entry_id is None and not client_id:
        raise errors.bad(-1102, f"Param '{id_param}' or '{client_param}' must be sent, but "
                                "both were empty/null!")
    now = st.now()
    if entry_id is None:
        assert client_id
        return book.latest(client_id, now, spec)
    entry = book.get(entry_id)
    if entry is None or (spec is not None and entry.spec is not spec) or entry.visible_at > now:
        return None
    return entry


def list_open(st: SimState, book: Book[E], params: Params) -> list[E]:
    """The open entries of the symbol ``params`` names (of every symbol without one) that
    queries see now, in acceptance order."""
    spec = st.spec(params, required=False)
    now = st.now()
    return [e for e in book.open(spec) if e.visible_at <= now]


def cancel_all(st: SimState, book: Book[E], params: Params,
               cancel: Callable[[E, float], None]) -> dict[str, object]:
    """Cancel (``cancel(entry, now)``) every open entry of the symbol ``params`` names, oldest
    first; Binance's answer."""
    spec = st.require_spec(params)
    now = st.now()
    for entry in book.open(spec):
        cancel(entry, now)
    return {"code": 200, "msg": CANCEL_ALL_DONE}
