"""The fault campaign: a long, seeded, reproducible run of every fault, then mixed.

    python scripts/campaign.py                 # 40 rounds, seed 7, writes docs/reliability.md
    python scripts/campaign.py --rounds 200 --seed 11
    python scripts/campaign.py --rounds 8 --no-write

Each kind of fault once, on its own, then random faults (seeded) during bursts
of revocations of random size; after each round every app process must
enforce every confirmed revocation and reconverge to the store (see
``tests/faults.py``). Clients run with clocks skewed by -3, 0 and +3 seconds.
"""

from __future__ import annotations

import argparse
import datetime
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

from tests.faults import (  # noqa: E402
    HEARTBEAT,
    MAX_STALENESS,
    SCENARIOS,
    Deployment,
    Report,
    run_scenario,
)


def campaign(rounds: int, seed: int) -> tuple[Report, float]:
    random.seed(seed)
    total = Report()
    started = time.monotonic()
    names = list(SCENARIOS)
    with Deployment(clients=3, skews=[-3.0, 0.0, 3.0]) as deployment:
        for number in range(rounds):
            name = names[number] if number < len(names) else random.choice(names)
            burst = random.randint(5, 40)
            report = run_scenario(deployment, name, burst)
            print(
                f"round {number + 1:3d}/{rounds}: {name:40s} burst {burst:2d}  "
                f"lost {report.lost}  reconverged {report.longest_reconverge:.2f} s  "
                f"late so far {report.longest_late_acceptance * 1000:.1f} ms",
                flush=True,
            )
            total.merge(report)
        total.revocations = deployment.report.revocations
    return total, time.monotonic() - started


def render(report: Report, rounds: int, seed: int, elapsed: float) -> str:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    bound = MAX_STALENESS + HEARTBEAT
    lines = [
        "# Reliability: the fault campaign",
        "",
        f"Written by `python scripts/campaign.py --rounds {rounds} --seed {seed}` on {stamp}",
        f"({elapsed:.0f} s). The same seed replays the same sequence of faults and bursts.",
        "",
        "Deployment: a real redis-server with `appendonly yes` and `appendfsync always` (the",
        "durable setting: a revocation `revoke()` confirmed is on disk), publisher worker",
        "processes, and 3 app processes whose clocks are skewed by -3 s, 0 and +3 s against",
        f"the issuer's. `heartbeat_interval` {HEARTBEAT} s, `max_staleness` {MAX_STALENESS} s,",
        "`stale_policy` deny. Each round: a burst of revocations (80% `token=`, 20%",
        "`user_id=`), then a fault injected while a second burst runs, then the checks. App",
        "processes verify every confirmed-revoked token with `check_database=True` in a loop.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| rounds | {rounds} |",
        f"| revocations confirmed by `revoke()` | {report.revocations:,} |",
        f"| revocations lost (confirmed, not enforced by every process afterwards) | "
        f"**{report.lost}** |",
        f"| longest time to reconverge after a fault (every process fresh, at the head, "
        f"rejecting every confirmed revocation) | {report.longest_reconverge:.2f} s |",
        f"| longest a revoked token was still accepted after `revoke()` returned | "
        f"{report.longest_late_acceptance * 1000:.1f} ms (bound: `max_staleness` + one "
        f"heartbeat = {bound * 1000:.0f} ms) |",
        "",
        "Faults injected:",
        "",
        "| fault | times |",
        "|---|---|",
    ]
    lines += [f"| {name} | {report.faults[name]} |" for name in SCENARIOS]
    lines += [
        "",
        "What each fault is:",
        "",
        "- *pubsub connections killed*: `CLIENT KILL TYPE pubsub`; clients reconnect and catch up.",
        "- *redis paused (half-open)*: SIGSTOP for twice `max_staleness`, then SIGCONT: "
        "sockets stay open, nothing answers; clients go stale, deny, reconnect.",
        "- *redis restarted (AOF)*: the server stopped and started again on its AOF file "
        "mid-burst.",
        "- *worker killed -9 and restarted*: no clean shutdown; the outbox cursor in the "
        "store makes the new worker relay what was left.",
        "- *second worker started*: two (or more) workers relay at once.",
        "- *slow subscriber cut off*: one app process frozen (SIGSTOP) through a burst with "
        "`client-output-buffer-limit pubsub 4kb 2kb 1`; Redis drops it; it reconnects.",
        "- *duplicated, reordered, missing events*: correctly signed frames replayed "
        "reversed, twice, with gaps.",
    ]
    if report.details:
        lines += ["", "Anomalies:", ""] + [f"- {d}" for d in report.details]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    report, elapsed = campaign(max(args.rounds, 1), args.seed)
    text = render(report, args.rounds, args.seed, elapsed)
    if args.no_write:
        print(text)
    else:
        (ROOT / "docs" / "reliability.md").write_text(text)
        print(f"wrote {ROOT / 'docs' / 'reliability.md'}")
    return 0 if report.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
