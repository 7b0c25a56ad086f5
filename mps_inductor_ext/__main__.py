"""Command line: ``python -m mps_inductor_ext {demo,export,explain,doctor,profile,tune}``."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import traceback

EXPLAIN_USAGE = ("python -m mps_inductor_ext explain [--json OUT] [--html OUT] SCRIPT [ARGS ...] "
                 "[--json OUT] [--html OUT]")


def _split_explain(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates our trailing ``--json X`` / ``--html X`` pairs from the script's own arguments.

    The usage puts them after the script's arguments, so they are peeled off the end; a script
    that itself takes a final --json can still be run by giving ours before SCRIPT.
    """
    ours: list[str] = []
    rest = list(argv)
    while len(rest) >= 2 and rest[-2] in ("--json", "--html"):
        ours = rest[-2:] + ours
        rest = rest[:-2]
    return rest, ours


def _run_explain(args: argparse.Namespace, trailing: list[str]) -> int:
    """Runs an unmodified script as __main__ with every compilation recorded, then reports."""
    from .diagnostics import Collector

    script_args, ours = _split_explain(trailing)
    extra = argparse.ArgumentParser(prog="explain", add_help=False)
    extra.add_argument("--json")
    extra.add_argument("--html")
    tail = extra.parse_args(ours)
    json_out, html_out = tail.json or args.json, tail.html or args.html
    script = args.script
    if not os.path.isfile(script):
        print(f"explain: no such script: {script}", file=sys.stderr)
        return 2
    for out in (json_out, html_out):
        if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            print(f"explain: cannot write {out}: its directory does not exist", file=sys.stderr)
            return 2
    saved_argv, saved_path0 = sys.argv, sys.path[0]
    sys.argv = [script, *script_args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    status = 0
    collector = Collector(backend="as chosen by the script (torch.compile's backend argument)",
                          target=os.path.abspath(script))
    try:
        with collector:
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the script's failure is reported, then the report still prints
        traceback.print_exc()
        status = 1
    finally:
        sys.argv, sys.path[0] = saved_argv, saved_path0
    report = collector.report()
    print(report, end="")
    if json_out:
        with open(json_out, "w", encoding="utf-8") as f:
            f.write(report.to_json())
        print(f"JSON report: {json_out}")
    if html_out:
        print(f"HTML report: {report.to_html(html_out)}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mps_inductor_ext")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="check a Metal kernel, then compile a tiny Llama with backend=mpsk vs eager")
    demo.add_argument("--backend", choices=["auto", "mps", "cpu"], default="auto")
    export = sub.add_parser(
        "export", help="package the demo's tiny Llama with torch.export + AOTInductor, Metal kernels kept, and "
                       "check the loaded package against eager")
    export.add_argument("package", help="where to write the package (a .pt2 path)")
    export.add_argument("--backend", choices=["auto", "mps", "cpu"], default="auto")
    explain = sub.add_parser(
        "explain", usage=EXPLAIN_USAGE,
        help="run a script and report its graph breaks, recompilations, fusions and MPS hazards",
        description="Runs SCRIPT with ARGS as __main__, records every torch.compile compilation, and prints "
                    "the report. --json / --html may come before SCRIPT or as the last arguments.")
    explain.add_argument("--json", help="also write the report as JSON (see diagnostics/schema.json)")
    explain.add_argument("--html", help="also write the report as one self-contained HTML page")
    explain.add_argument("script")
    explain.add_argument("script_args", nargs=argparse.REMAINDER)
    doctor = sub.add_parser(
        "doctor", help="check every mpsk op's Metal kernel against PyTorch; non-zero exit on any failure")
    doctor.add_argument("--backend", choices=["auto", "mps", "cpu"], default="auto",
                        help="shader backend (auto: mps on a Mac, else the emulator)")
    doctor.add_argument("--op", action="append", dest="ops", metavar="OP",
                        help="check only this op (repeatable; default: every op under torch.ops.mpsk)")
    doctor.add_argument("--inject-fault", metavar="OP",
                        help="self-test of the doctor: perturb OP's output before comparing, so it must fail")
    from .profiling import cli as profile_cli

    profile = sub.add_parser(
        "profile", help="MODELED cost of each mpsk kernel: bytes counted on the emulator against the ideal, "
                        "roofline times on named Apple chips")
    profile_cli.add_arguments(profile)
    tune = sub.add_parser(
        "tune", help="time each op's kernel against the native op per dtype and shape bucket on this device and "
                     "record the winner in the tuning cache")
    from . import tune as tune_mod

    tune_mod.add_arguments(tune)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from . import demo as demo_mod

        return demo_mod.run(args.backend)
    if args.command == "export":
        from . import demo as demo_mod

        try:
            return demo_mod.export(args.package, args.backend)
        except (TypeError, ValueError) as e:
            print(f"export: {e}", file=sys.stderr)
            return 2
    if args.command == "explain":
        return _run_explain(args, args.script_args)
    if args.command == "doctor":
        from .diagnostics import doctor as doctor_mod

        try:
            return doctor_mod.run(args.backend, args.ops, args.inject_fault)
        except (ValueError, RuntimeError) as e:
            print(f"doctor: {e}", file=sys.stderr)
            return 2
    if args.command in ("profile", "tune"):
        try:
            return profile_cli.run(args) if args.command == "profile" else tune_mod.run(args)
        except (ValueError, KeyError, RuntimeError) as e:
            print(f"{args.command}: {e}", file=sys.stderr)
            return 2
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
