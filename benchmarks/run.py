"""Run the benchmark suite and write docs/benchmarks.md (and its charts).

    python benchmarks/run.py            # the full suite (about 10 minutes here)
    python benchmarks/run.py --quick    # a smoke run: small sizes, no file written
    python benchmarks/run.py --only verify propagation

Each benchmark module has ``run(quick: bool) -> Section``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

# The project root instead of this folder: benchmark modules are imported as
# ``benchmarks.*``, and the folder itself must not shadow anything.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.common import CHARTS, DOCS, Section, machine  # noqa: E402

MODULES = ["verify", "propagation", "throughput", "memory", "http_load"]


def render(sections: list[Section], header: str, elapsed: float) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Regenerate with `python benchmarks/run.py` (charts need the `bench` extra:",
        '`pip install -e ".[bench]"`). Every comparison is measured side by side in one',
        "run, and ratios are against a baseline from that same run: this machine is",
        "shared and noisy, so absolute times move between runs more than ratios do.",
        "",
        f"Machine: {header}. Suite time: {elapsed:.0f} s.",
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}", "", section.intro, ""]
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
    started = time.monotonic()
    sections: list[Section] = []
    for name in args.only or MODULES:
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        section: Section = module.run(quick=args.quick, charts=write)
        sections.append(section)
        for row in section.rows:
            print("   ", " | ".join(str(cell) for cell in row), flush=True)
    report = render(sections, machine(), time.monotonic() - started)
    if write:
        (DOCS / "benchmarks.md").write_text(report)
        print(f"wrote {DOCS / 'benchmarks.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
