"""execd: an asyncio-native execution daemon for Binance USDⓈ-M futures."""

__version__ = "0.1.0"
