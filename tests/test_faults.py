"""The consistency model under faults, against real redis-server, worker and app processes.

Each scenario: a burst of revocations, the fault injected during a second
burst, then the checks: every revocation ``revoke()`` confirmed is enforced by
every app process (from its cache, fresh again), none was accepted later than
``max_staleness`` plus one heartbeat after it was confirmed, and every process
converged to the store's head. The long seeded campaign is
``scripts/campaign.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .faults import HEARTBEAT, MAX_STALENESS, SCENARIOS, Deployment, run_scenario

pytestmark = pytest.mark.integration
BOUND = MAX_STALENESS + HEARTBEAT


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    with Deployment(clients=3) as deployment:
        yield deployment


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_confirmed_revocations_survive(deployment: Deployment, scenario: str) -> None:
    report = run_scenario(deployment, scenario, burst=15)
    assert report.lost == 0, report.details
    assert report.longest_late_acceptance <= BOUND, report
    assert not report.details, report.details


def test_client_clocks_skewed_against_the_issuer() -> None:
    with Deployment(clients=3, skews=[-3.0, 0.0, 3.0]) as skewed:
        report = run_scenario(skewed, "pubsub connections killed", burst=15)
    assert report.lost == 0
    assert report.longest_late_acceptance <= BOUND
