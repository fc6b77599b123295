"""The one component that talks HTTP to the exchange (SPEC §6): its typed operations —
market data, orders, algo orders, account, listenKeys — each one `_call` through the pipeline
of ``pipeline.py`` (limiter → breaker → python-binance → headers → classify → audit → retry).

The gateway builds none of its collaborators: the composition root (``app/factory.py``) builds
the python-binance client, time sync, symbol cache, breakers and retry policy, points their
listeners at the gateway's ``on_*`` methods, and passes them in. Lifecycle: ``await
gateway.start()`` syncs time and loads exchangeInfo (those two calls precede the limiter, which
is configured from exchangeInfo ``rateLimits``); the factory then hands the gateway its limiter
(``use_limiter``) and every call is limited from there on. Whoever built a collaborator closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, TypeVar

from app.domain import MarginType, OrderType, Side
from app.errors import InvalidRequest, OrderNotFound
from app.exchange import endpoints as ep
from app.exchange.classify import placement_may_retry
from app.exchange.limits import buckets_from_rate_limits, successors
from app.exchange.models import (
    AlgoState,
    Balance,
    CancelCounts,
    MarginChange,
    OrderState,
    Position,
)
from app.exchange.pipeline import CallPipeline
from app.exchange.symbol_cache import InfoRefresh
from app.exchange.symbols import format_price, format_qty
from app.observability.audit import AuditEvent
from app.resilience.limiter import Priority

T = TypeVar("T")

class Gateway(CallPipeline):
    """Typed exchange operations; see the module docstring for the pipeline."""

    # ------------------------------------------------------------------ market data
    async def server_time_ms(self) -> int:
        raw = await self._call(ep.SERVER_TIME, self._client.futures_time)
        return int(raw["serverTime"])

    async def exchange_info(self) -> Mapping[str, Any]:
        """The raw exchangeInfo answer; ``self._symbols`` holds it parsed and cached."""
        info: Mapping[str, Any] = await self._call(ep.EXCHANGE_INFO,
                                                   self._client.futures_exchange_info)
        return info

    def on_exchange_info(self, refresh: InfoRefresh) -> None:
        """Before the symbol cache serves new rules: rebuild the limiter's buckets if the
        ``rateLimits`` changed them (counts carry: ``WeightLimiter.reconfigure``); audit. A
        ``ValueError`` (unusable limits) fails the load: old rules and buckets stay."""
        rebuilt = False
        if self._limiter is not None:
            buckets = buckets_from_rate_limits(refresh.rate_limits)
            if rebuilt := set(buckets) != set(self._buckets):
                self._limiter.reconfigure(buckets, successors(self._buckets, buckets))
                self.use_limiter(self._limiter, buckets)
        limits = [f"{r.rate_limit_type} {r.limit}/{r.interval_num} {r.interval}"
                  for r in refresh.rate_limits]
        self._log.info(AuditEvent.EXCHANGE_INFO_REFRESHED, cause=refresh.cause,
                       symbols=refresh.symbols, added=refresh.added, removed=refresh.removed,
                       rate_limits=limits, rate_limits_changed=refresh.rate_limits_changed,
                       limiter_rebuilt=rebuilt)

    def on_exchange_info_failed(self, cause: str, error: Exception, retry_in_s: float) -> None:
        """A load of exchangeInfo failed: the rules in place stay in use."""
        self._log.warning(AuditEvent.EXCHANGE_INFO_REFRESH_FAILED, cause=cause,
                          error_class=type(error).__name__, error=str(error),
                          retry_in_s=round(retry_in_s, 3), age_s=self._symbols.age_s)

    async def mark_price(self, symbol: str) -> Decimal:
        raw = await self._call(ep.MARK_PRICE, lambda: self._client.futures_mark_price(
            symbol=symbol))
        return Decimal(str(raw["markPrice"]))

    # ------------------------------------------------------------------ orders
    async def place_order(self, symbol: str, side: Side, quantity: Decimal, client_id: str, *,
                          reduce_only: bool = False, order_type: OrderType = OrderType.MARKET,
                          price: Decimal | None = None, time_in_force: str | None = None,
                          priority: Priority | None = None,
                          deadline: float | None = None) -> OrderState:
        """Place a regular order (MARKET by default) with ``newOrderRespType=RESULT``; not
        sent (``TimeoutError``) if the limiter admits it at or after ``deadline``.

        Raises ``UnknownOutcome`` when the answer is lost: the order may exist; look it up
        with ``get_order(symbol, client_id)`` before sending it again.
        """
        params: dict[str, Any] = {
            "symbol": symbol, "side": side.value, "type": order_type.value,
            "quantity": format_qty(quantity), "newClientOrderId": client_id,
            "newOrderRespType": "RESULT",
        }
        if reduce_only:
            params["reduceOnly"] = "true"
        if price is not None:
            params["price"] = format_price(price)
            params["timeInForce"] = time_in_force or "GTC"
        raw = await self._call(ep.PLACE_ORDER,
                               lambda: self._client.futures_create_order(**params),
                               priority=priority, retry_if=placement_may_retry,
                               deadline=deadline)
        return OrderState.from_wire(raw)

    async def get_order(self, symbol: str, client_id: str, *,
                        priority: Priority | None = None) -> OrderState | None:
        """The order with this client id, or None if the exchange does not (yet) know it."""
        try:
            raw = await self._call(ep.GET_ORDER, lambda: self._client.futures_get_order(
                symbol=symbol, origClientOrderId=client_id), priority=priority)
        except OrderNotFound:
            return None
        return OrderState.from_wire(raw)

    async def cancel_order(self, symbol: str, client_id: str) -> OrderState | None:
        """Cancel an open order; None if it is unknown or no longer open (-2011)."""
        try:
            raw = await self._call(ep.CANCEL_ORDER, lambda: self._client.futures_cancel_order(
                symbol=symbol, origClientOrderId=client_id))
        except OrderNotFound:
            return None
        state = OrderState.from_wire(raw)
        self._log.info(AuditEvent.ORDER_CANCELLED, symbol=symbol, client_order_id=client_id)
        return state

    async def open_orders(self, symbol: str | None = None) -> list[OrderState]:
        """The open orders of ``symbol``, or of the whole account (weight 40) without one."""
        params = {} if symbol is None else {"symbol": symbol}
        raw = await self._call(ep.OPEN_ORDERS, lambda: self._client.futures_get_open_orders(
            **params), has_symbol=symbol is not None)
        return [OrderState.from_wire(r) for r in raw]

    async def place_algo_order(self, symbol: str, side: Side, order_type: OrderType,
                               trigger_price: Decimal, client_algo_id: str, *,
                               quantity: Decimal | None = None,
                               priority: Priority | None = None,
                               deadline: float | None = None) -> AlgoState:
        """A conditional order on the Algo Order API (closePosition unless ``quantity``); not
        sent after ``deadline``, as `place_order`.

        Raises ``UnknownOutcome`` when the answer is lost: look it up with
        ``get_algo_order(client_algo_id)`` before sending it again.
        """
        if order_type not in (OrderType.STOP_MARKET, OrderType.TAKE_PROFIT_MARKET):
            raise InvalidRequest(f"{order_type} is not a conditional order type",
                                 endpoint=ep.PLACE_ALGO.label)
        params: dict[str, Any] = {
            "algoType": "CONDITIONAL", "symbol": symbol, "side": side.value,
            "type": order_type.value, "triggerPrice": format_price(trigger_price),
            "workingType": "MARK_PRICE", "priceProtect": "true", "clientAlgoId": client_algo_id,
        }
        if quantity is None:
            params["closePosition"] = "true"
        else:
            params["quantity"] = format_qty(quantity)
            params["reduceOnly"] = "true"
        raw = await self._call(ep.PLACE_ALGO,
                               lambda: self._client.futures_create_algo_order(**params),
                               priority=priority, retry_if=placement_may_retry,
                               deadline=deadline)
        return AlgoState.from_wire(raw)

    async def get_algo_order(self, client_algo_id: str, *,
                             priority: Priority | None = None) -> AlgoState | None:
        try:
            raw = await self._call(ep.GET_ALGO, lambda: self._client.futures_get_algo_order(
                clientAlgoId=client_algo_id), priority=priority)
        except OrderNotFound:
            return None
        return AlgoState.from_wire(raw)

    async def cancel_algo_order(self, client_algo_id: str) -> bool:
        """Cancel an open algo order; False if it is unknown or no longer open. Audited at
        debug: the executor reports the decision (``order_cancelled`` with its reason)."""
        try:
            await self._call(ep.CANCEL_ALGO, lambda: self._client.futures_cancel_algo_order(
                clientAlgoId=client_algo_id))
        except OrderNotFound:
            return False
        self._log.debug(AuditEvent.ORDER_CANCELLED, client_order_id=client_algo_id, algo=True)
        return True

    async def open_algo_orders(self, symbol: str | None = None) -> list[AlgoState]:
        """The open algo orders of ``symbol``, or of the whole account (weight 40)."""
        params = {} if symbol is None else {"symbol": symbol}
        raw = await self._call(ep.OPEN_ALGOS, lambda: self._client.futures_get_open_algo_orders(
            **params), has_symbol=symbol is not None)
        return [AlgoState.from_wire(r) for r in raw]

    async def cancel_all_orders(self, symbol: str) -> CancelCounts:
        """Cancel every regular and algo order of ``symbol``; counts what was open."""
        regular, algos = await asyncio.gather(self.open_orders(symbol),
                                              self.open_algo_orders(symbol))
        if regular:
            await self._call(ep.CANCEL_ALL_ORDERS,
                             lambda: self._client.futures_cancel_all_open_orders(symbol=symbol))
        if algos:
            await self._call(ep.CANCEL_ALL_ALGOS,
                             lambda: self._client.futures_cancel_all_algo_open_orders(
                                 symbol=symbol))
        counts = CancelCounts(regular=len(regular), algo=len(algos))
        self._log.info(AuditEvent.ORDER_CANCELLED, symbol=symbol, all=True,
                       regular=counts.regular, algo=counts.algo)
        return counts

    # ------------------------------------------------------------------ account
    async def set_leverage(self, symbol: str, leverage: int) -> int:
        raw = await self._call(ep.SET_LEVERAGE, lambda: self._client.futures_change_leverage(
            symbol=symbol, leverage=leverage))
        value = int(raw["leverage"])
        self._log.info(AuditEvent.LEVERAGE_SET, symbol=symbol, leverage=value)
        return value

    async def hedge_mode(self) -> bool:
        """Whether the account is in hedge (dual-side) position mode: a signed call, so it
        also proves the API key (SPEC §5.10 start-up checks)."""
        answer = await self._call(ep.POSITION_MODE, self._client.futures_get_position_mode,
                                  has_symbol=False)
        return bool(answer.get("dualSidePosition"))

    async def set_margin_type(self, symbol: str, margin_type: MarginType) -> MarginChange:
        """Set the margin type; -4046 ("No need to change") is success, ``changed=False``."""
        try:
            await self._call(ep.SET_MARGIN_TYPE, lambda: self._client.futures_change_margin_type(
                symbol=symbol, marginType=margin_type.value))
            change = MarginChange(margin_type, changed=True)
        except InvalidRequest as error:
            if error.code != -4046:
                raise
            change = MarginChange(margin_type, changed=False)
        self._log.info(AuditEvent.MARGIN_TYPE_SET, symbol=symbol,
                       margin_type=margin_type.value, changed=change.changed)
        return change

    async def get_position(self, symbol: str, *, priority: Priority | None = None
                           ) -> Position | None:
        """The open position of ``symbol``, or None when flat."""
        rows = await self._call(ep.POSITION_RISK, lambda: self._client.futures_position_information(
            symbol=symbol), priority=priority)
        position = next((Position.from_wire(r) for r in rows if r.get("symbol") == symbol
                         and Decimal(str(r.get("positionAmt") or "0")) != 0), None)
        self._log.debug(AuditEvent.POSITION_QUERY, symbol=symbol,
                       amount=str(position.amount) if position else "0")
        return position

    async def positions(self, *, priority: Priority = Priority.LOW) -> list[Position]:
        """Every open (non-zero) position of the account, for reconciliation (weight 5)."""
        rows = await self._call(ep.POSITION_RISK, self._client.futures_position_information,
                                has_symbol=False, priority=priority)
        return [p for p in map(Position.from_wire, rows) if p.amount != 0]

    async def get_account_balance(self, asset: str = "USDT") -> Balance:
        rows = await self._call(ep.BALANCE, self._client.futures_account_balance)
        for row in rows:
            if row.get("asset") == asset:
                balance = Balance.from_wire(row)
                self._log.debug(AuditEvent.BALANCE_QUERY, asset=asset,
                               available=str(balance.available))
                return balance
        raise InvalidRequest(f"no {asset} balance in the account", endpoint=ep.BALANCE.label)

    # ------------------------------------------------------------------ user-data stream keys
    # The listenKey is a credential: it is passed to python-binance and returned, never logged.
    async def new_listen_key(self) -> str:
        """``POST listenKey``: the account's active key (extended), or a new one."""
        key = await self._call(ep.NEW_LISTEN_KEY, self._client.futures_stream_get_listen_key)
        return str(key)

    async def keepalive_listen_key(self, key: str) -> None:
        """``PUT listenKey``: extend ``key`` by 60 min. Raises ``InvalidRequest`` with
        ``code == -1125`` when the key no longer exists (get a new one)."""
        await self._call(ep.KEEPALIVE_LISTEN_KEY,
                         lambda: self._client.futures_stream_keepalive(listenKey=key))

    async def close_listen_key(self, key: str) -> None:
        """``DELETE listenKey``: ends the stream of every process sharing the account."""
        await self._call(ep.CLOSE_LISTEN_KEY,
                         lambda: self._client.futures_stream_close(listenKey=key))
