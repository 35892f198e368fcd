"""Stage 1, extraction: Binance Spot market data into Postgres schema `binance`.

A rate-limit-aware client (`client`), response parsers (`parse`), typed records (`models`), kline
periods (`intervals`), errors (`errors`), the extraction (`extract`) and the Airflow adapter
(`tasks`). The Binance-compatible server the tests and the offline demo use is not pipeline code:
it lives in stack/exchange.

Import from the submodules; this package imports nothing, so loading one part (say, the records)
does not load the HTTP client.
"""
