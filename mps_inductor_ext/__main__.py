"""Command line: `python -m mps_inductor_ext demo`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mps_inductor_ext")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a Metal kernel on this machine's backend and check it")
    demo.add_argument("--backend", choices=["auto", "mps", "cpu"], default="auto")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo as demo_mod

        return demo_mod.run(args.backend)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
