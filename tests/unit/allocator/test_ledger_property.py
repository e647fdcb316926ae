"""Random sequences of creates, binds, stops, starts, removals and rebuilds keep the invariants.

One holder per device, no quota exceeded, no device in two running containers, and a rebuild
from labels always gives back what the ledger holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alloc_helpers import NOW, example_inventory, limits, researcher, student
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from allocator.ledger import Ledger, Reservation, State
from allocator.placement import GPUEQ_EPSILON
from allocator.preempt import preemption_plan
from allocator.reconcile import ContainerSummary
from allocator.refusal import Refusal
from allocator.request import GpuRequest

INVENTORY = example_inventory()
DEVICE_IDS = ["0", "1", "2", "3"] + [d.uuid for d in INVENTORY.devices]
USERS = {
    "alice": student("alice"),
    "bob": student(
        "bob", max_mig_instances=2, max_gpus_per_container=2, allowed_mig_profiles=["1g.10gb"]
    ),
    "rita": researcher("rita"),
    "eve": limits("eve", max_mig_instances=None, max_gpu_equivalents=3 / 7),
    "root": limits("root", admin=True, priority=100),
}
HOLD = {"alice": 0.0, "bob": 60.0, "rita": 600.0, "eve": None, "root": 0.0}

requests = st.one_of(
    st.builds(GpuRequest, count=st.integers(1, 3)),
    st.just(GpuRequest(all=True)),
    st.lists(st.sampled_from(DEVICE_IDS), min_size=1, max_size=2, unique=True).map(
        lambda ids: GpuRequest(device_ids=tuple(ids))
    ),
    st.builds(GpuRequest, count=st.just(1), profiles=st.just(("2g.20gb",))),
)


@dataclass
class DockerContainer:
    """What dockerd knows about a container: its labels and state."""

    id: str
    user: str
    labels: dict[str, str]
    devices: tuple[str, ...]
    state: str = "created"
    finished_at: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def summary(self) -> ContainerSummary:
        return ContainerSummary(
            self.id, self.labels, self.state, self.finished_at, gpu_devices=self.devices
        )


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(INVENTORY)
        self.now = NOW
        self.pending: list[Reservation] = []
        self.docker: dict[str, DockerContainer] = {}
        self.serial = 0
        self.preempted: set[str] = set()  # released early; a rebuild may restore their hold

    # ------------------------------------------------------------ rules

    @rule(user=st.sampled_from(sorted(USERS)), request=requests)
    def create(self, user: str, request: GpuRequest) -> None:
        result = self.ledger.reserve(user, 1000, "g", USERS[user], request, self.now)
        if isinstance(result, Reservation):
            assert result.devices
            self.pending.append(result)
        else:
            assert isinstance(result, Refusal) and result.reason and result.fix

    @rule(data=st.data(), succeeded=st.booleans())
    def create_answered(self, data: st.DataObject, succeeded: bool) -> None:
        if not self.pending:
            return
        res = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        if not succeeded:
            self.ledger.rollback(res.reservation_id)
            return
        self.serial += 1
        cid = f"{self.serial:064x}"
        self.ledger.bind(res.reservation_id, cid)
        self.docker[cid] = DockerContainer(cid, res.user, res.labels(), res.device_ids)

    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        stopped = [c for c in self.docker.values() if c.state in ("created", "exited")]
        if not stopped:
            return
        c = data.draw(st.sampled_from(stopped))
        result = self.ledger.reacquire(
            c.id, c.devices, user=c.user, uid=1000, group="g", now=self.now, limits=USERS[c.user]
        )
        if not isinstance(result, Refusal):  # the AuthZ plugin allows the start
            c.state, c.finished_at = "running", None
            self.preempted.discard(c.id)

    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        running = [c for c in self.docker.values() if c.state == "running"]
        if not running:
            return
        c = data.draw(st.sampled_from(running))
        c.state, c.finished_at = "exited", self.now
        self.ledger.container_stopped(c.id, self.now, HOLD[c.user])

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        if not self.docker:
            return
        cid = data.draw(st.sampled_from(sorted(self.docker)))
        del self.docker[cid]
        self.ledger.container_removed(cid)

    @rule(seconds=st.sampled_from([1.0, 30.0, 61.0, 700.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.ledger.expire_holds(self.now)

    @rule()
    def rebuild(self) -> None:
        """A restart of ds01d: the ledger rebuilt from Docker equals the one it had."""
        self.ledger.expire_holds(self.now)
        before = self._holdings()
        conflicts = self.ledger.rebuild(
            [c.summary() for c in self.docker.values()],
            self.now,
            hold_for=lambda user, uid, labels: HOLD.get(user),
        )
        assert conflicts == []
        after = self._holdings()
        restored = {u: h for u, h in after.items() if u not in before}
        assert all(h[0] in self.preempted and h[1] == "held" for h in restored.values())
        assert {u: h for u, h in after.items() if u in before} == before

    @rule()
    def preempt(self) -> None:
        """root (highest priority) takes a device from idle lower-priority containers."""
        idle = {c.id for c in self.docker.values() if c.state == "running"}
        request = GpuRequest(count=1)
        victims = preemption_plan(self.ledger, "root", USERS["root"], request, self.now, idle)
        if victims is None:
            return
        for victim in victims:
            assert victim.priority < USERS["root"].priority
            container = self.docker[victim.container_id or ""]
            if container.state == "running":  # stopped with the normal grace
                container.state, container.finished_at = "exited", self.now
            self.ledger.release(container.id)
            self.preempted.add(container.id)
        result = self.ledger.reserve("root", 0, "g", USERS["root"], request, self.now)
        assert isinstance(result, Reservation), result  # the plan freed enough
        self.pending.append(result)

    # ------------------------------------------------------------ invariants

    @invariant()
    def one_holder_per_device(self) -> None:
        self.ledger.check_invariants()

    @invariant()
    def no_device_in_two_running_containers(self) -> None:
        seen: set[str] = set()
        for c in self.docker.values():
            if c.state == "running":
                assert not seen & set(c.devices), c
                seen |= set(c.devices)
                alloc = self.ledger.allocation_of(c.id)
                assert alloc is not None and alloc.state is State.BOUND

    @invariant()
    def quotas_hold(self) -> None:
        for user, lim in USERS.items():
            if lim.is_admin:
                continue
            usage = self.ledger.usage(user)
            assert lim.max_gpus is None or usage.whole <= lim.max_gpus
            assert lim.max_mig_instances is None or usage.mig <= lim.max_mig_instances
            assert lim.max_gpu_equivalents is None or (
                usage.gpueq <= lim.max_gpu_equivalents + GPUEQ_EPSILON
            )
        for alloc in self.ledger.allocations():
            per = USERS[alloc.user].max_gpus_per_container
            assert per is None or len(alloc.devices) <= per

    def _holdings(self) -> dict[str, tuple[str | None, str]]:
        return {
            u: (a.container_id, a.state.value) for a in self.ledger.allocations() for u in a.devices
        }


LedgerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    database=None,  # no .hypothesis directory in the tree
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerMachine = LedgerMachine.TestCase
