"""Leader election on a Lease in the Kubernetes API emulator, through the official client.

The step tests drive each candidate with its own manual clock, so expiry and fencing are
checked at exact instants. The thread tests run two candidates concurrently and check that
their writes never overlap.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from autoscaler.leader import LeaderElector, LeaseTiming, default_identity, default_namespace

NAMESPACE = "grove-autoscaler"
LEASE = "grove-autoscaler"
TIMING = LeaseTiming(lease_duration_seconds=15, renew_deadline_seconds=10, retry_period_seconds=2)


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_elector(kube_emulator, identity: str, clock=None, timing: LeaseTiming = TIMING, **kwargs) -> LeaderElector:
    return LeaderElector(
        api_client=kube_emulator.api_client(),
        namespace=NAMESPACE,
        name=LEASE,
        identity=identity,
        timing=timing,
        clock=clock if clock is not None else time.monotonic,
        **kwargs,
    )


def lease_spec(kube_emulator) -> dict:
    return kube_emulator.get("leases", NAMESPACE, LEASE)["spec"]


@pytest.fixture
def emulator(kube_emulator):
    kube_emulator.create("namespaces", {"metadata": {"name": NAMESPACE}})
    return kube_emulator


# --- single steps with manual clocks --------------------------------------------------------


def test_first_candidate_creates_lease(emulator) -> None:
    elector = make_elector(emulator, "a", ManualClock())
    assert elector.try_acquire_or_renew() is True
    assert elector.is_leader() is True

    spec = lease_spec(emulator)
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0


def test_second_candidate_blocked_while_held(emulator) -> None:
    clock_a, clock_b = ManualClock(), ManualClock()
    a = make_elector(emulator, "a", clock_a)
    b = make_elector(emulator, "b", clock_b)
    assert a.try_acquire_or_renew() is True

    for now in (0.0, 5.0, 14.9):
        clock_a.now = clock_b.now = now
        assert b.try_acquire_or_renew() is False, f"b acquired at {now} s"
        assert b.is_leader() is False
    assert lease_spec(emulator)["holderIdentity"] == "a"


def test_renewal_keeps_leadership(emulator) -> None:
    clock_a, clock_b = ManualClock(), ManualClock()
    a = make_elector(emulator, "a", clock_a)
    b = make_elector(emulator, "b", clock_b)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False

    # a renews at 8 s. b reads the changed record at 9 s and waits a full duration from then.
    clock_a.now = 8.0
    assert a.try_acquire_or_renew() is True
    clock_b.now = 9.0
    assert b.try_acquire_or_renew() is False
    clock_b.now = 23.9
    assert b.try_acquire_or_renew() is False
    clock_b.now = 24.0
    assert b.try_acquire_or_renew() is True
    assert lease_spec(emulator)["holderIdentity"] == "b"


def test_failover_after_lease_duration(emulator) -> None:
    clock_a, clock_b = ManualClock(), ManualClock()
    a = make_elector(emulator, "a", clock_a)
    b = make_elector(emulator, "b", clock_b)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False

    # a stops renewing (a hung loop): it fences itself at the renew deadline...
    clock_a.now = 9.9
    assert a.is_leader() is True
    clock_a.now = 10.0
    assert a.is_leader() is False

    # ...and b takes over exactly one lease duration after it first saw a's record.
    clock_b.now = 14.9
    assert b.try_acquire_or_renew() is False
    clock_b.now = 15.0
    assert b.try_acquire_or_renew() is True
    assert b.is_leader() is True

    spec = lease_spec(emulator)
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1


def test_stale_leader_cannot_renew_after_takeover(emulator) -> None:
    clock_a, clock_b = ManualClock(), ManualClock()
    a = make_elector(emulator, "a", clock_a)
    b = make_elector(emulator, "b", clock_b)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    clock_b.now = 15.0
    assert b.try_acquire_or_renew() is True

    # a wakes up: it reads b's new record and must not take the Lease back.
    clock_a.now = 16.0
    assert a.try_acquire_or_renew() is False
    assert a.is_leader() is False
    assert lease_spec(emulator)["holderIdentity"] == "b"


def test_release_hands_over_at_once(emulator) -> None:
    clock_a, clock_b = ManualClock(), ManualClock()
    a = make_elector(emulator, "a", clock_a)
    b = make_elector(emulator, "b", clock_b)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False

    assert a.release() is True
    assert a.is_leader() is False
    assert b.try_acquire_or_renew() is True
    assert lease_spec(emulator)["holderIdentity"] == "b"


def test_release_by_follower_changes_nothing(emulator) -> None:
    a = make_elector(emulator, "a", ManualClock())
    b = make_elector(emulator, "b", ManualClock())
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    assert b.release() is False
    assert lease_spec(emulator)["holderIdentity"] == "a"


def test_conflicting_update_loses_race(emulator) -> None:
    emulator.create(
        "leases",
        {"metadata": {"name": LEASE}, "spec": {"holderIdentity": "crashed", "leaseDurationSeconds": 15}},
        namespace=NAMESPACE,
    )
    clock_b, clock_d = ManualClock(), ManualClock()
    b = make_elector(emulator, "b", clock_b)
    d = make_elector(emulator, "d", clock_d)
    assert b.try_acquire_or_renew() is False
    assert d.try_acquire_or_renew() is False
    clock_b.now = clock_d.now = 15.0

    # d reads the expired Lease and sends its update, which the server delays. b then reads
    # the same version and writes first, so d's update carries a stale resourceVersion.
    fault = emulator.inject_fault(method="PUT", path_regex=f"leases/{LEASE}$", delay_seconds=2.0, count=1)
    outcome: list[bool] = []
    racer = threading.Thread(target=lambda: outcome.append(d.try_acquire_or_renew()))
    racer.start()
    deadline = time.monotonic() + 10
    while fault.hits < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fault.hits == 1
    assert b.try_acquire_or_renew() is True
    racer.join(timeout=10)

    assert outcome == [False]
    assert d.is_leader() is False
    assert lease_spec(emulator)["holderIdentity"] == "b"
    conflicts = [record for record in emulator.requests_matching("PUT", f"leases/{LEASE}$") if record.status == 409]
    assert len(conflicts) == 1


def test_failed_renew_keeps_leader_until_deadline(emulator) -> None:
    clock = ManualClock()
    a = make_elector(emulator, "a", clock)
    assert a.try_acquire_or_renew() is True

    emulator.inject_fault(method="GET", path_regex=f"leases/{LEASE}$", status=500, count=None)
    clock.now = 4.0
    assert a.try_acquire_or_renew() is True
    clock.now = 9.9
    assert a.try_acquire_or_renew() is True
    clock.now = 10.0
    assert a.try_acquire_or_renew() is False
    assert a.is_leader() is False


def test_leadership_callbacks(emulator) -> None:
    events: list[str] = []
    clock = ManualClock()
    a = make_elector(
        emulator,
        "a",
        clock,
        on_started_leading=lambda: events.append("started"),
        on_stopped_leading=lambda: events.append("stopped"),
    )
    assert a.try_acquire_or_renew() is True
    clock.now = 2.0
    assert a.try_acquire_or_renew() is True
    assert events == ["started"]
    assert a.release() is True
    assert events == ["started", "stopped"]


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"),
    [(10, 10, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)],
    ids=["deadline equals duration", "retry equals deadline", "zero retry", "deadline above duration"],
)
def test_timing_rejects_invalid_order(duration: float, deadline: float, retry: float) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        LeaseTiming(lease_duration_seconds=duration, renew_deadline_seconds=deadline, retry_period_seconds=retry)


# --- two candidates in threads --------------------------------------------------------------

FAST = LeaseTiming(lease_duration_seconds=1, renew_deadline_seconds=0.6, retry_period_seconds=0.1)


@dataclass
class Writer:
    """Writes while its elector is the leader, recording (identity, start, end) per write."""

    elector: LeaderElector
    log: list[tuple[str, float, float]]
    lock: threading.Lock
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            if self.elector.is_leader():
                start = time.monotonic()
                time.sleep(0.005)
                end = time.monotonic()
                with self.lock:
                    self.log.append((self.elector.identity, start, end))
            else:
                time.sleep(0.005)


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def assert_no_overlap(log: list[tuple[str, float, float]]) -> None:
    ordered = sorted(log, key=lambda entry: entry[1])
    for previous, current in zip(ordered, ordered[1:]):
        if previous[0] != current[0]:
            assert previous[2] <= current[1], f"{previous[0]} wrote until {previous[2]:.3f} but {current[0]} started at {current[1]:.3f}"


@pytest.mark.parametrize("release", [False, True], ids=["leader crashes", "leader releases"])
def test_two_candidates_hand_over_without_overlap(emulator, release: bool) -> None:
    log: list[tuple[str, float, float]] = []
    lock = threading.Lock()
    electors = {name: make_elector(emulator, name, timing=FAST) for name in ("a", "b")}
    writers = {name: Writer(elector, log, lock) for name, elector in electors.items()}
    threads = {name: threading.Thread(target=writer.run, daemon=True) for name, writer in writers.items()}

    electors["a"].start()
    assert wait_until(electors["a"].is_leader)
    electors["b"].start()
    for thread in threads.values():
        thread.start()

    both_leading = []
    monitor_stop = threading.Event()

    def monitor() -> None:
        # b is read first: b leads only after a's fence has fallen, so a later True from a
        # together with an earlier True from b would be a real overlap, whatever the scheduling.
        while not monitor_stop.is_set():
            if electors["b"].is_leader() and electors["a"].is_leader():
                both_leading.append(time.monotonic())
            time.sleep(0.002)

    monitor_thread = threading.Thread(target=monitor, daemon=True)
    monitor_thread.start()

    assert wait_until(lambda: sum(1 for entry in log if entry[0] == "a") >= 5)
    if release:
        # A graceful shutdown stops writing before it releases the Lease.
        writers["a"].stop.set()
        threads["a"].join(timeout=5)
    # Without release this is a crash: a's renewals stop, and only the fence stops its writer.
    electors["a"].stop(release=release)
    assert wait_until(electors["b"].is_leader)
    assert wait_until(lambda: sum(1 for entry in log if entry[0] == "b") >= 5)

    monitor_stop.set()
    electors["b"].stop()
    for writer in writers.values():
        writer.stop.set()
    for thread in [*threads.values(), monitor_thread]:
        thread.join(timeout=5)

    assert both_leading == []
    assert {entry[0] for entry in log} == {"a", "b"}
    assert_no_overlap(log)
    last_a = max(end for name, _, end in log if name == "a")
    first_b = min(start for name, start, _ in log if name == "b")
    assert last_a <= first_b


def test_identity_from_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "grove-autoscaler-7d9f-abcde")
    first, second = default_identity(), default_identity()
    assert first.startswith("grove-autoscaler-7d9f-abcde_")
    assert first != second


def test_namespace_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "autoscaling")
    assert default_namespace() == "autoscaling"
