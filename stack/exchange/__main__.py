"""Run the test exchange in the foreground (the local stack's offline Binance).

Usage:
    python -m stack.exchange --host 127.0.0.1 --port 8765 [--seed N] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from stack.exchange.api import BinanceTestServer


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m stack.exchange", description="Binance-compatible market-data server for tests and demos."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind; 0 picks a free one (default 8765)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated market (default 0)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = BinanceTestServer(args.host, args.port, seed=args.seed).start()
    print(f"Binance test server on {server.url} (seed {args.seed}); Ctrl-C to stop", flush=True)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    while not stopped.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
