"""The exchange as the executor sees it: the gateway's typed operations (a Protocol seam)."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from app.domain import MarginType, OrderType, Side
from app.exchange.models import AlgoState, CancelCounts, MarginChange, OrderState, Position
from app.resilience.limiter import Priority


class ExchangePort(Protocol):
    async def mark_price(self, symbol: str) -> Decimal: ...

    async def place_order(self, symbol: str, side: Side, quantity: Decimal, client_id: str, *,
                          reduce_only: bool = False, order_type: OrderType = OrderType.MARKET,
                          price: Decimal | None = None, time_in_force: str | None = None,
                          priority: Priority | None = None,
                          deadline: float | None = None) -> OrderState: ...

    async def get_order(self, symbol: str, client_id: str, *,
                        priority: Priority | None = None) -> OrderState | None: ...

    async def place_algo_order(self, symbol: str, side: Side, order_type: OrderType,
                               trigger_price: Decimal, client_algo_id: str, *,
                               quantity: Decimal | None = None,
                               priority: Priority | None = None,
                               deadline: float | None = None) -> AlgoState: ...

    async def get_algo_order(self, client_algo_id: str, *,
                             priority: Priority | None = None) -> AlgoState | None: ...

    async def cancel_algo_order(self, client_algo_id: str) -> bool: ...

    async def open_algo_orders(self, symbol: str) -> list[AlgoState]: ...

    async def cancel_all_orders(self, symbol: str) -> CancelCounts: ...

    async def set_leverage(self, symbol: str, leverage: int) -> int: ...

    async def set_margin_type(self, symbol: str, margin_type: MarginType) -> MarginChange: ...

    async def get_position(self, symbol: str, *, priority: Priority | None = None
                           ) -> Position | None: ...
