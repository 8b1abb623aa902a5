"""glimmer-check: run deploy.toml's regression checks (FPS, latency, accuracy) on this machine.

    glimmer-check [--config deploy.toml] [--only NAME] [--update-baseline] [--margin F]
                  [--json out.json]

Prints one table (check, metric, baseline, measured, margin, status). Exit codes: 0 when every
check passes or is skipped (its baseline belongs to another device), 1 when any bound fails, 2
when any check cannot run (missing model or data, an unreadable set): an error is never a pass.
``--update-baseline`` writes the measured values, loosened by ``--margin``, back into the file for
this device (baseline.py) and exits 0 unless a check could not run.
"""

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from glimmer.runtime.core.console import add_verbose_flag, run_cli
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_write_text
from glimmer.runtime.core.outputs import preflight
from glimmer.runtime.tools.config import load_config
from glimmer.runtime.tools.regression import CheckResult, parse_checks, run_check

EXIT_FAIL, EXIT_ERROR = 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="glimmer-check", description=__doc__.strip().splitlines()[0]
    )
    p.add_argument(
        "--config",
        type=Path,
        default=Path("deploy.toml"),
        metavar="TOML",
        help="the deployment profile holding [checks.NAME] tables (default: ./deploy.toml)",
    )
    p.add_argument(
        "--only", action="append", metavar="NAME", help="run this check only (repeatable)"
    )
    p.add_argument(
        "--update-baseline",
        action="store_true",
        help="write the measured values into the file as the new bounds for this device",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=0.1,
        metavar="F",
        help="slack of --update-baseline in the safe direction (default 0.1 = 10%%)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="write every result as JSON")
    add_verbose_flag(p)
    return p


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _margin(row) -> str:
    if row.margin is None:
        return "-"
    if row.bound_key == "max_drop" or row.baseline == 0:
        return f"{row.margin:+.4f}"
    return f"{row.margin * 100:+.1f}%"


def format_table(results: List[CheckResult]) -> str:
    rows = [("check", "metric", "baseline", "measured", "margin", "status")]
    notes = []
    for result in results:
        for row in result.rows:
            op = (
                ""
                if row.bound_key is None
                else (">= " if row.bound_key.startswith("min") else "<= ")
            )
            rows.append(
                (
                    row.check,
                    row.metric,
                    op + _fmt(row.baseline),
                    _fmt(row.measured),
                    _margin(row),
                    row.status,
                )
            )
            if row.note:
                notes.append(f"  {row.check}: {row.status}: {row.note}")
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for result in results:
        for role, how in result.details.get("int8_execution", {}).items():
            notes.append(
                f"  {result.check.name}: {'' if role == 'model' else role + ' '}INT8 {how}"
            )
        per_class = result.details.get("accuracy", {}).get("per_class")
        if per_class:
            parts = ", ".join(
                f"{n} F1 {v['f1']:.3f} (n={v['support']})" for n, v in per_class.items()
            )
            notes.append(f"  {result.check.name}: per class: {parts}")
        definition = result.details.get("accuracy", {}).get("map_definition")
        if definition:
            notes.append(f"  {result.check.name}: mAP is {definition}")
    return "\n".join(lines + ([""] + notes if notes else []))


def _select(checks, only: Optional[List[str]], origin: str):
    if not only:
        return checks
    names = [c.name for c in checks]
    for name in only:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise GlimmerError(
                f"--only {name}: no [checks.{name}] in {origin}{hint}; checks: {', '.join(names)}"
            )
    return [c for c in checks if c.name in only]


def _as_json(results: List[CheckResult], device: str) -> Dict[str, Any]:
    return {
        "tool": "glimmer-check",
        "device": device,
        "checks": [
            {
                "name": r.check.name,
                "kind": r.check.kind,
                "status": r.status,
                "model": str(r.check.model),
                "data": r.check.data,
                "measured": r.measured,
                "details": r.details,
                "rows": [
                    {
                        "metric": row.metric,
                        "bound": row.bound_key,
                        "baseline": row.baseline,
                        "measured": row.measured,
                        "margin": row.margin,
                        "status": row.status,
                        "note": row.note,
                    }
                    for row in r.rows
                ],
            }
            for r in results
        ],
    }


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.margin < 1.0:
        raise GlimmerError(f"--margin must be in [0, 1), got {args.margin}")
    preflight([("--json", args.json)], [("--config", args.config)])
    if args.update_baseline:
        from glimmer.runtime.tools.baseline import require_tomlkit

        require_tomlkit()  # before minutes of measuring, not after
    config = load_config(args.config)  # validates the rest of the profile too
    origin = str(args.config)
    checks = _select(
        parse_checks(config.checks, origin, args.config.resolve().parent), args.only, origin
    )
    # Every output checked before minutes of measuring: not one of the checks' models, and
    # --update-baseline can write beside the real deploy.toml (through a symlink).
    preflight(
        [("--json", args.json)],
        [(f"[checks.{c.name}] model", c.model) for c in checks]
        + [(f"[checks.{c.name}] reference", c.reference) for c in checks],
    )
    if args.update_baseline:
        from glimmer.runtime.tools.baseline import check_writable

        check_writable(args.config)
    from glimmer.runtime.tools.bench import this_device

    device = this_device()
    print(f"device: {device}")
    sys.stdout.flush()
    results = [
        run_check(c, device, log=lambda line: print(line, file=sys.stderr, flush=True))
        for c in checks
    ]
    print(format_table(results))
    if args.json:
        try:
            atomic_write_text(
                args.json, json.dumps(_as_json(results, device), indent=2, default=str) + "\n"
            )
        except OSError as exc:
            raise GlimmerError(f"--json {args.json}: cannot write: {exc.strerror or exc}") from None
        print(f"results written to {args.json}")
    errors = any(r.status == "ERROR" for r in results)
    if args.update_baseline:
        from glimmer.runtime.tools.baseline import update_baseline

        changes = update_baseline(args.config, results, args.margin, device)
        for name, values in changes.items():
            shown = ", ".join(f"{k} = {v}" for k, v in values.items())
            print(f"baseline {name}: {shown} (device {device!r}, margin {args.margin:g})")
        if not changes:
            print("baseline: nothing measured, file left unchanged")
        return EXIT_ERROR if errors else 0
    if errors:
        return EXIT_ERROR
    return EXIT_FAIL if any(r.status == "FAIL" for r in results) else 0


def entry() -> None:
    sys.exit(run_cli("glimmer-check", main))


if __name__ == "__main__":
    entry()
