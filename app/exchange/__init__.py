"""The exchange boundary: Binance wire vocabulary, symbol rules, the gateway (SPEC §6)."""
