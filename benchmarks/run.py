"""Run the benchmark suite and write docs/benchmarks.md (and its charts).

    python benchmarks/run.py            # the full suite (about 10 minutes here)
    python benchmarks/run.py --quick    # a smoke run: small sizes, no file written
    python benchmarks/run.py --only verify propagation

Each benchmark module has ``run(quick: bool) -> Section``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import sys
import time
from pathlib import Path

# The project root instead of this folder: benchmark modules are imported as
# ``benchmarks.*``, and the folder itself must not shadow anything.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import CHARTS, DOCS, Section, machine  # noqa: E402

MODULES = ["verify", "propagation", "throughput", "memory", "http_load", "fanout", "confirmation"]


def _saved(name: str) -> Path:
    return CHARTS / f"{name}.json"


def _load(name: str) -> tuple[Section, str] | None:
    """A section from its last full run, with the machine line of that run."""
    path = _saved(name)
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    return Section(**stored["section"]), stored["machine"]


def _save(name: str, section: Section, machine_line: str) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    payload = {"section": dataclasses.asdict(section), "machine": f"{machine_line}; run {stamp}"}
    _saved(name).write_text(json.dumps(payload, indent=1, default=str))


def render(sections: list[tuple[Section, str]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Regenerate with `python benchmarks/run.py` (charts need the `bench` extra:",
        '`pip install -e ".[bench]"`). Every comparison is measured side by side in one',
        "run, and ratios are against a baseline from that same run: this machine is",
        "shared and noisy, so absolute times move between runs more than ratios do.",
        "`--only NAME` re-runs one section; the others keep their last results.",
        "",
    ]
    for section, machine_line in sections:
        lines += [f"## {section.title}", "", f"*{machine_line}.*", "", section.intro, ""]
        lines.append("| " + " | ".join(section.headers) + " |")
        lines.append("|" + "---|" * len(section.headers))
        for row in section.rows:
            lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
        lines.append("")
        for chart in section.charts:
            lines += [f"![{section.title}](benchmarks/{chart})", ""]
        for note in section.notes:
            lines += [note, ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--no-write", action="store_true", help="print, write no file")
    parser.add_argument("--only", nargs="+", choices=MODULES, help="run only these")
    args = parser.parse_args(argv)
    write = not args.no_write and not args.quick
    if write:
        CHARTS.mkdir(parents=True, exist_ok=True)
    machine_line = machine()
    for name in args.only or MODULES:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        module = importlib.import_module(f"benchmarks.{name}")
        section: Section = module.run(quick=args.quick, charts=write)
        for row in section.rows:
            print("   ", " | ".join(str(cell) for cell in row), flush=True)
        for note in section.notes:
            print("   ", note, flush=True)
        if write:
            _save(name, section, f"{machine_line}; {time.monotonic() - started:.0f} s")
    if write:
        sections = [loaded for name in MODULES if (loaded := _load(name)) is not None]
        (DOCS / "benchmarks.md").write_text(render(sections))
        print(f"wrote {DOCS / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
