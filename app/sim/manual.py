"""Account changes nobody's API client made: a trade placed in Binance's web UI and a
liquidation (SPEC §10 admin additions). They go through the same state methods as any order,
so the user-data stream reports them like any other change.
"""

from __future__ import annotations

from decimal import Decimal

from app.sim import errors
from app.sim.exchange import Exchange
from app.sim.models import ZERO, Order


def web_trade(ex: Exchange, symbol: str, side: str, qty: str) -> dict[str, object]:
    """A MARKET order as if placed in the web UI (client id ``web_…``); every rule of
    ``POST /fapi/v1/order`` applies and raises its ``ApiError``."""
    return ex.orders.place({"symbol": symbol, "side": side, "type": "MARKET", "quantity": qty,
                            "newOrderRespType": "RESULT"})


def liquidate(ex: Exchange, symbol: str) -> dict[str, object]:
    """Close the position of ``symbol`` at the mark with a MARKET order whose client id is
    ``autoclose-…``, as Binance's liquidation engine does. -2022 when there is no position."""
    st = ex.state
    spec = st.require_spec({"symbol": symbol})
    pos = st.positions[spec.symbol]
    if pos.amount == 0:
        raise errors.reduce_only_rejected()
    now = st.now()
    order = Order(
        spec=spec, order_id=st.next_order_id(), client_id=st.auto_client_id("autoclose-"),
        side="SELL" if pos.amount > 0 else "BUY", type="MARKET", qty=abs(pos.amount),
        price=ZERO, time_in_force="IOC", reduce_only=True, close_position=False,
        created=now, updated=now)
    st.add_order(order)
    mark: Decimal = st.marks[spec.symbol]
    ex.orders.fill(order, mark)
    return order.to_json()
