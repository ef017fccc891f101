"""Which site runs a job and which queue it goes to (pure: no Redis needed)."""

from __future__ import annotations

import pytest

from mvp_core.dispatch import SiteConflictError, job_site, route, site_queue


@pytest.mark.parametrize("source, target, expected", [
    (("a", True), ("a", True), "a"),          # both disks at site a
    (("a", True), (None, False), "a"),        # local source, ssh target
    ((None, False), ("b", True), "b"),        # ssh source, local target
    ((None, False), (None, False), None),     # ssh to ssh: any site
    ((None, True), (None, False), None),      # a one-host install: no sites at all
    (("a", True), ("b", False), "a"),         # a local disk beats an ssh portal's pin
    ((None, False), ("b", False), "b"),       # an ssh portal pinned to a site
])
def test_job_site(source: tuple[str | None, bool], target: tuple[str | None, bool],
                  expected: str | None) -> None:
    assert job_site(source, target) == expected


def test_two_sites_disks_in_one_job_are_refused() -> None:
    with pytest.raises(SiteConflictError, match="different sites"):
        job_site(("a", True), ("b", True))


def test_route() -> None:
    assert route(queue_name="q", site="a", live_sites=[], job_id=1) == site_queue("q", "a")
    assert route(queue_name="q", site=None, live_sites=[], job_id=1) is None
    spread = {route(queue_name="q", site=None, live_sites=["b", "a"], job_id=i)
              for i in range(4)}
    assert spread == {"q:site:a", "q:site:b"}
