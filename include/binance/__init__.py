"""Binance Spot market-data access: a rate-limit-aware client (`client`), response parsers
(`parse`), typed records (`models`), errors (`errors`), the extraction (`extract`) and a
Binance-compatible server for tests and the offline demo (`server`).

Import from the submodules; this package imports nothing, so loading one part (say, the records)
does not load the HTTP client.
"""
