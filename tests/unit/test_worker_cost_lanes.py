"""What a lane spends per host beyond the host's own work: its threads take their first
units in one transaction; once one of them found nothing to claim, the others stop
instead of each asking the ledger again; and a
step's plain form is what ``dataclasses.asdict`` gives. SQLite, fake transports."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from controller.lanes import JobPlan, Lane
from controller.ledger import Claim
from controller.testing import Call, FakeTransports
from shared.results import OperationResult, Step
from tests.controller_client import Controller


class CountingLane(Lane):
    """A lane that counts its claims and says when one found nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claims = 0
        self.starts: list[int] = []  # units each claim_start took
        self.found_nothing = threading.Event()
        self._count_lock = threading.Lock()

    def claim_start(self, plan: JobPlan, count: int) -> list[Claim]:
        """The lane's first claims, counted."""
        claimed = super().claim_start(plan, count)
        self.starts.append(len(claimed))
        return claimed

    def claim(self, plan: JobPlan) -> Claim | None:
        """The ledger's claim, counted."""
        claimed = super().claim(plan)
        with self._count_lock:
            self.claims += 1
        if claimed is None:
            self.found_nothing.set()
        return claimed


def test_threads_stop_claiming_once_one_found_nothing(memory_controller: Controller) -> None:
    controller = memory_controller
    site = controller.site(controller.tenant("Acme"), "Leeds")
    for n in range(4):
        controller.host(site, f"pbx-{n}")
    job = controller.start_job({"action": "flush_queue", "target": {"all": True},
                                "options": {"concurrency": 4}})
    every_unit_claimed = threading.Barrier(4, timeout=30)
    lane_box: list[CountingLane] = []

    def answer(call: Call) -> OperationResult:
        every_unit_claimed.wait()  # (four threads, each with its host)
        if call.host != "pbx-0":
            # the others end after pbx-0's thread has looked for more and found nothing
            assert lane_box[0].found_nothing.wait(30)
        return OperationResult("flush_queue", data={"before": 0, "after": 0,
                                                    "deliveries": [], "remaining": []})

    fake = FakeTransports(default=answer)
    with controller.app.app_context():
        lane = CountingLane(job, 0, transports=fake, send=lambda *a, **k: None)
        lane_box.append(lane)
        lane.run()
    assert sorted(fake.hosts_called()) == [f"pbx-{n}" for n in range(4)]
    # the four first units in one transaction, and one claim that found nothing left
    assert lane.starts == [4] and lane.claims == 1
    assert controller.ok("GET", f"/v1/jobs/{job}")["status"] == "succeeded"


def test_a_steps_plain_form_is_what_asdict_gives() -> None:
    for step in (Step("flush", ["sendmail", "-q"], 0, 0.123, True, "done"),
                 Step("note", [], None, 0.0, False)):
        plain = step.to_dict()
        assert plain == dataclasses.asdict(step)
        assert list(plain) == [f.name for f in dataclasses.fields(Step)]
        assert plain["argv"] is not step.argv  # a copy, as asdict's
