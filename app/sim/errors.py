"""Binance error answers, as the simulator sends them.

Codes, messages and HTTP statuses follow Binance's USDⓈ-M error-code page (see
``research/binance-futures-api.md``). Every handler raises :class:`ApiError`; the server turns it
into ``{"code": ..., "msg": ...}`` with the status and any extra headers.
"""

from __future__ import annotations

from collections.abc import Mapping


class ApiError(Exception):
    """An error answer: HTTP status, Binance code and message, optional extra headers."""

    def __init__(
        self,
        status: int,
        code: int,
        msg: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {"code": self.code, "msg": self.msg}


def bad(code: int, msg: str) -> ApiError:
    """A 400 answer, the status of nearly every request error."""
    return ApiError(400, code, msg)


# Security (SPEC §10, research §1).
def api_key_format_invalid() -> ApiError:
    return ApiError(401, -2014, "API-key format invalid.")


def api_key_rejected() -> ApiError:
    return ApiError(401, -2015, "Invalid API-key, IP, or permissions for action.")


def invalid_signature() -> ApiError:
    return bad(-1022, "Signature for this request is not valid.")


def timestamp_outside_window() -> ApiError:
    return bad(-1021, "Timestamp for this request is outside of the recvWindow.")


def timestamp_ahead() -> ApiError:
    return bad(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")


def mandatory(param: str) -> ApiError:
    return bad(-1102, f"Mandatory parameter '{param}' was not sent, was empty/null, or malformed.")


def not_required(param: str) -> ApiError:
    return bad(-1106, f"Parameter '{param}' sent when not required.")


def recv_window_too_large() -> ApiError:
    return bad(-1131, "recvWindow must be less than 60000")


# Request shape.
def invalid_symbol() -> ApiError:
    return bad(-1121, "Invalid symbol.")


def invalid_order_type() -> ApiError:
    return bad(-1116, "Invalid orderType.")


def invalid_side() -> ApiError:
    return bad(-1117, "Invalid side.")


def invalid_time_in_force() -> ApiError:
    return bad(-1115, "Invalid timeInForce.")


def illegal_chars(param: str) -> ApiError:
    return bad(
        -1100, f"Illegal characters found in parameter '{param}'; legal range is '^[0-9]+$'."
    )


# Orders.
def precision_over() -> ApiError:
    return bad(-1111, "Precision is over the maximum defined for this asset.")


def price_not_tick() -> ApiError:
    return bad(-4014, "Price not increased by tick size.")


def qty_not_step() -> ApiError:
    return bad(-4023, "Qty not increased by step size.")


def qty_not_positive() -> ApiError:
    return bad(-4003, "Quantity less than or equal to zero.")


def qty_below_min() -> ApiError:
    return bad(-4004, "Quantity less than min quantity.")


def qty_above_max() -> ApiError:
    return bad(-4005, "Quantity greater than max quantity.")


def price_below_min() -> ApiError:
    return bad(-4013, "Price less than min price.")


def price_above_max() -> ApiError:
    return bad(-4002, "Price greater than max price.")


def limit_price_too_high(bound: str) -> ApiError:
    return bad(-4016, f"Limit price can't be higher than {bound}.")


def limit_price_too_low(bound: str) -> ApiError:
    return bad(-4024, f"Limit price can't be lower than {bound}.")


def min_notional(notional: str) -> ApiError:
    return bad(
        -4164,
        f"Order's notional must be no smaller than {notional} (unless you choose reduce only).",
    )


def margin_insufficient() -> ApiError:
    return bad(-2019, "Margin is insufficient.")


def would_immediately_trigger() -> ApiError:
    return bad(-2021, "Order would immediately trigger.")


def reduce_only_rejected() -> ApiError:
    return bad(-2022, "ReduceOnly Order is rejected.")


def client_id_invalid() -> ApiError:
    return bad(-4015, "Client order id is not valid.")


def client_id_duplicated() -> ApiError:
    return bad(-4116, "ClientOrderId is duplicated.")


def use_algo_api() -> ApiError:
    return bad(
        -4120,
        "Order type not supported for this endpoint. "
        "Please use the Algo Order API endpoints instead.",
    )


def close_position_exists() -> ApiError:
    return bad(
        -4130,
        "An open stop or take profit order with GTE and closePosition in the direction is "
        "existing.",
    )


def order_does_not_exist() -> ApiError:
    return bad(-2013, "Order does not exist.")


def unknown_order() -> ApiError:
    return bad(-2011, "Unknown order sent.")


def post_only_rejected() -> ApiError:
    return bad(
        -5022,
        "Due to the order could not be executed as maker, the Post Only order will be "
        "rejected. The order will not be recorded in the order history",
    )


def fok_rejected() -> ApiError:
    return bad(
        -5021,
        "Due to the order could not be filled immediately, the FOK order has been "
        "rejected. The order will not be recorded in the order history",
    )


def max_open_orders() -> ApiError:
    return bad(-2025, "Reach max open order limit.")


# Account settings.
def invalid_leverage(value: str) -> ApiError:
    return bad(-4028, f"Leverage {value} is not valid")


def no_need_to_change_margin_type() -> ApiError:
    return bad(-4046, "No need to change margin type.")


def margin_type_open_orders() -> ApiError:
    return bad(-4047, "Margin type cannot be changed if there exists open orders.")


def margin_type_position() -> ApiError:
    return bad(-4048, "Margin type cannot be changed if there exists position.")


def invalid_margin_type() -> ApiError:
    return bad(-4044, "The margin type is invalid.")
