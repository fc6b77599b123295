"""Positions and the USDT wallet: leverage, margin type, available balance, margin checks, and
settling a fill into the position and the wallet.

One-way mode only: a position is a signed amount per symbol. ``Account.settle``,
``set_leverage`` and ``set_margin_type`` are the only places that change a position or the
wallet.
"""

from __future__ import annotations

from decimal import Decimal

from app.sim import errors
from app.sim.config import SymbolSpec
from app.sim.events import REASON_MARGIN_TYPE_CHANGE
from app.sim.models import ZERO, Position, max_notional
from app.sim.rules import Params, require
from app.sim.state import SimState


def reduces(pos: Position, side: str) -> bool:
    """Whether an order on ``side`` would shrink the one-way position ``pos``."""
    return (pos.amount > 0 and side == "SELL") or (pos.amount < 0 and side == "BUY")


class Account:
    """The account's positions and wallet, over the shared ``SimState``."""

    def __init__(self, state: SimState) -> None:
        self._state = state

    def available_balance(self) -> Decimal:
        """Wallet + unrealized PnL − initial margin of positions and open orders (USDT)."""
        st = self._state
        free = st.wallet
        for pos in st.positions.values():
            mark = st.marks[pos.spec.symbol]
            free += pos.unrealized(mark) - pos.initial_margin(mark)
        for order in st.orders.open():
            if not order.reduce_only:
                lev = st.positions[order.spec.symbol].leverage
                free -= (order.qty - order.executed_qty) * order.price / lev
        return free

    def check_margin(self, spec: SymbolSpec, side: str, qty: Decimal, price: Decimal) -> None:
        """Raise -2019 if growing the position by this order needs more margin than is free."""
        pos = self._state.positions[spec.symbol]
        signed = qty if side == "BUY" else -qty
        after = pos.amount + signed
        added = max(ZERO, abs(after) - abs(pos.amount))
        if added and added * price / pos.leverage > self.available_balance():
            raise errors.margin_insufficient()

    def settle(self, spec: SymbolSpec, side: str, qty: Decimal, price: Decimal, *,
               maker: bool, now: float) -> tuple[Decimal, Decimal]:
        """Apply a fill of ``qty`` at ``price`` to the position (amount, entry price) and the
        wallet (realized PnL less the fee). Returns ``(realized PnL, fee)`` in USDT."""
        pos = self._state.positions[spec.symbol]
        signed = qty if side == "BUY" else -qty
        realized = ZERO
        if pos.amount and (pos.amount > 0) != (signed > 0):
            closed = min(abs(signed), abs(pos.amount))
            direction = 1 if pos.amount > 0 else -1
            realized = closed * (price - pos.entry_price) * direction
        after = pos.amount + signed
        if after == 0:
            pos.entry_price = ZERO
        elif pos.amount == 0 or (pos.amount > 0) != (after > 0):
            pos.entry_price = price
        elif abs(after) > abs(pos.amount):
            pos.entry_price = (abs(pos.amount) * pos.entry_price + qty * price) / abs(after)
        pos.amount = after
        pos.updated = now
        pos.realized += realized
        account = self._state.config.account
        fee = qty * price * (account.maker_fee if maker else account.taker_fee)
        self._state.wallet += realized - fee
        return realized, fee

    def set_leverage(self, params: Params) -> dict[str, object]:
        """``POST /fapi/v1/leverage``: 1–125 (else -4028)."""
        spec = self._state.require_spec(params)
        raw = require(params, "leverage")
        if not raw.isdigit() or not 1 <= int(raw) <= 125:
            raise errors.invalid_leverage(raw)
        pos = self._state.positions[spec.symbol]
        pos.leverage = int(raw)
        return {"leverage": pos.leverage, "maxNotionalValue": max_notional(pos.leverage),
                "symbol": spec.symbol}

    def set_margin_type(self, params: Params) -> dict[str, object]:
        """``POST /fapi/v1/marginType``: -4046 if unchanged, -4047/-4048 with open orders or a
        position."""
        spec = self._state.require_spec(params)
        margin_type = require(params, "marginType").upper()
        if margin_type not in ("ISOLATED", "CROSSED"):
            raise errors.invalid_margin_type()
        pos = self._state.positions[spec.symbol]
        if margin_type == pos.margin_type:
            raise errors.no_need_to_change_margin_type()
        if self._state.has_open_orders(spec):
            raise errors.margin_type_open_orders()
        if pos.amount:
            raise errors.margin_type_position()
        pos.margin_type = margin_type
        self._state.publish_account(REASON_MARGIN_TYPE_CHANGE, [pos], self._state.now())
        return {"code": 200, "msg": "success"}

    def position_mode(self) -> dict[str, object]:
        """``GET /fapi/v1/positionSide/dual``."""
        return {"dualSidePosition": self._state.dual_side}

    def set_position_mode(self, params: Params) -> dict[str, object]:
        """``POST /fapi/v1/positionSide/dual``: -4059 if unchanged, -4067 with open orders,
        -4068 with a position. The simulator keeps the mode only to report it: its orders
        behave as in one-way mode either way."""
        wanted = require(params, "dualSidePosition").lower()
        if wanted not in ("true", "false"):
            raise errors.bad(-1130, "Data sent for parameter 'dualSidePosition' is not valid.")
        dual = wanted == "true"
        state = self._state
        if dual == state.dual_side:
            raise errors.bad(-4059, "No need to change position side.")
        if any(state.has_open_orders(spec) for spec in state.symbols.values()):
            raise errors.bad(-4067, "Position side cannot be changed if there exists open "
                                    "orders.")
        if any(p.amount for p in state.positions.values()):
            raise errors.bad(-4068, "Position side cannot be changed if there exists position.")
        state.dual_side = dual
        return {"code": 200, "msg": "success"}
