"""Today's realized PnL and the risk gate's daily loss roll over at 00:00 UTC with the fills
themselves, not only when someone reads the status (SPEC §5.10)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import structlog

from app.clock import FakeClock
from app.domain import Side
from app.exchange.stream_events import OrderUpdate
from app.execution.reports import AccountReports
from app.journal import Journal

D = Decimal
DAY = 86_400.0


def trade(trade_id: int, at: float, pnl: str, fee: str) -> OrderUpdate:
    ms = int(at * 1000)
    return OrderUpdate(event_time_ms=ms, symbol="BTCUSDT", client_id="xdC1", order_id=1,
                       side=Side.SELL, order_type="MARKET", execution_type="TRADE",
                       status="PARTIALLY_FILLED", quantity=D("1"), filled_qty=D("0.1"),
                       avg_price=D("60000"), last_qty=D("0.1"), last_price=D("60000"),
                       commission=D(fee), commission_asset="USDT", realized_pnl=D(pnl),
                       reduce_only=True, close_position=False, trade_time_ms=ms,
                       trade_id=trade_id)


async def test_the_first_fill_of_a_new_day_starts_the_day_afresh(tmp_path: Path) -> None:
    clock = FakeClock(start_time=20_000 * DAY + DAY - 10)      # 10 s before midnight
    results: list[tuple[Decimal, dict[str, Decimal]]] = []

    def told(pnl: Decimal, paid: Mapping[str, Decimal], *, at_start: bool) -> None:
        results.append((pnl, dict(paid)))

    async with Journal(tmp_path / "j.sqlite3") as journal:
        reports = AccountReports(journal, clock, structlog.get_logger(), "xd",
                                 on_day_result=told)
        await reports.load()
        reports.on_event(trade(1, clock.time(), "-30", "1"))
        await reports.aclose()
        clock.advance(20)                                         # past midnight, no status read
        reports.on_event(trade(2, clock.time(), "-5", "0.5"))
        await reports.aclose()
        assert results[-1] == (D("-5"), {"USDT": D("0.5")})
        assert reports.realized_pnl_today() == {"BTCUSDT": "-5"}
