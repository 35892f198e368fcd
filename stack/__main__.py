"""The local stack's command line, as the Makefile runs it.

Usage: python -m stack {up,down,status,env,clean,demo} [options]

  up      write .env from .env.example if missing, start supervisord and every service under it,
          wait for each health check
          [--offline: the bundled Binance-compatible server as binance_api and binance_archive]
  down    stop every service and supervisord, keeping all data
  status  one line per service, the rows per stage, the health figures measured now (read-only)
  env     print the settings from .env, expanded (for scripts)
  clean   stop everything and delete the runtime folder (.run/)
  demo    `up`, then the pipeline: cdc_setup, the DAGs unpaused, data in every stage [--offline]
  nodetool ARGS  Cassandra's nodetool against the (first) node (e.g. tablestats binance_test)
  exec SERVICE   replace this process with a service (supervisord's command for each program)
  watchdog       restart stuck Airflow services and ones supervisord gave up on (a program too)

Installs (venvs, jars, Debian packages) are the Makefile's job; this only runs services.
"""

from __future__ import annotations

import argparse
import sys

from stack import localstack as ls
from stack import topology
from stack.supervisor import SupervisorError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each health check")
    up.add_argument("--offline", action="store_true",
                    help="point binance_api and binance_archive at the bundled server (remembered, as by demo)")
    up.add_argument("--profile", choices=("single", "cluster"),
                    help="single node (the default) or the cluster profile (remembered until changed)")
    sub.add_parser("down")
    sub.add_parser("status")
    sub.add_parser("env")
    sub.add_parser("clean")
    demo = sub.add_parser("demo")
    demo.add_argument("--offline", action="store_true", help="feed it from the bundled Binance-compatible server")
    demo.add_argument("--timeout", type=float, default=480, help="seconds to wait for data in every stage")
    demo.add_argument("--profile", choices=("single", "cluster"), help="as for up")
    run = sub.add_parser("exec")
    run.add_argument("service")
    sub.add_parser("watchdog")
    tool = sub.add_parser("nodetool")
    tool.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            if args.offline:
                ls.set_binance_mode(True)
            ls.up(args.timeout, args.profile)
        elif args.command == "down":
            ls.down()
        elif args.command == "status":
            from stack.status import report

            report(ls.load_env())
        elif args.command == "env":
            for key, value in ls.load_env().items():
                print(f"{key}={value}")
        elif args.command == "clean":
            ls.clean()
        elif args.command == "nodetool":
            s = ls.load_env()
            # the first node's JMX port (the cluster profile's nodes have one each)
            print(ls.nodetool(topology.node_settings(s, topology.of(s, "cassandra")[0]), *args.args), end="")
        elif args.command == "exec":
            ls.exec_service(args.service)
        elif args.command == "watchdog":
            from stack.watchdog import run

            run()
        elif args.command == "demo":
            from stack.demo import demo as run_demo

            run_demo(args.offline, args.timeout, args.profile)
    except (ls.StackError, SupervisorError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
