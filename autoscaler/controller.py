"""The live control loop: discover, read the live scale, query signals, decide, write.

Each tick is level-triggered: the live `/scale` value is read fresh and compared with the
decision, so manual edits and Grove's recovery resets are corrected on the next tick, and
nothing is written when the two are equal.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from apscheduler.schedulers.background import BackgroundScheduler

from kubernetes.client.exceptions import ApiException

from autoscaler.budget import write_order
from autoscaler.coexistence import find_conflicts, other_writers
from autoscaler.config import Config
from autoscaler.engine import Decision, EngineState, TargetSpec, decide, forget_scale, signal_requests
from autoscaler.kube import TRANSPORT_ERRORS, KubeClient, ScaleWriteError
from autoscaler.coordination import CoordinationError, RatioBand
from autoscaler.specs import budget_limits, build_bands, build_specs
from autoscaler.targets import TargetRef
from autoscaler.ops import Telemetry
from autoscaler.topology import LiveTarget, TopologyReader
from metrics.source import MetricSource

logger = logging.getLogger(__name__)


class DecisionSink(Protocol):
    """Receives every tick's decisions (the adapter's store, the ops metrics)."""

    def publish(self, now: float, decisions: Sequence[Decision]) -> None: ...


@dataclass
class TickResult:
    time: float
    decisions: list[Decision] = field(default_factory=list)
    writes: list[tuple[str, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Controller:
    """Runs ticks against a cluster; `dry_run` logs decisions and writes nothing.

    `may_write` is consulted before each write (leader election plugs in here), so a replica
    that is not the leader still decides and publishes but never patches.
    """

    def __init__(
        self,
        config: Config,
        kube: KubeClient,
        source: MetricSource,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
        sinks: Sequence[DecisionSink] = (),
        may_write: Callable[[], bool] = lambda: True,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config
        self.kube = kube
        self.topology = TopologyReader(kube)
        self.source = source
        self.dry_run = dry_run
        self.clock = clock
        self.sinks = list(sinks)
        self.may_write = may_write
        self.telemetry = telemetry
        self.state = EngineState()
        self._lock = threading.Lock()
        # Reasons already reported per target, so a standing conflict yields one Event, not one per tick.
        self._reported_conflicts: dict[str, tuple[str, ...]] = {}
        # Our last write per target, to notice a second writer of the same /scale.
        self._last_written: dict[str, int] = {}

    def replace_config(self, config: Config) -> None:
        """Swap in a new, already validated configuration from the next tick on."""
        with self._lock:
            self.config = config

    def tick(self) -> TickResult:
        with self._lock:
            return self._tick()

    def _tick(self) -> TickResult:
        now = self.clock()
        result = TickResult(time=now)

        discovery = self.topology.discover(self.config)
        result.errors.extend(discovery.errors)
        owned = self._without_other_autoscalers(discovery.targets, result)
        for live in owned:
            self._report_outside_change(live)
        live_targets = {str(live.target.ref): live for live in owned}
        specs = self._specs(owned, result)

        try:
            observations = self.source.fetch(signal_requests(specs), now)
        except Exception as error:  # a source must not raise; if one does, every signal is unknown
            logger.exception("reading signals failed")
            result.errors.append(f"reading signals failed: {type(error).__name__}: {error}")
            observations = {}
        if specs and _all_unknown(observations, specs):
            message = "every signal of every target is unknown: check metrics.prometheus and the series labels"
            logger.error(message)
            result.errors.append(message)
        live = {name: target.replicas for name, target in live_targets.items()}
        ready = {name: target.ready_replicas for name, target in live_targets.items() if target.ready_replicas is not None}
        decisions, self.state = decide(
            now=now,
            specs=specs,
            observations=observations,
            live=live,
            ready=ready,
            state=self.state,
            interval_seconds=self.config.interval_seconds,
            bands=self._bands(owned, result),
            budgets=budget_limits(self.config),
        )
        result.decisions = decisions

        # Shrinks go first, so GPUs a budget moves between targets are free before they are claimed.
        for decision in write_order(decisions):
            try:
                written = self._act(decision, live_targets[decision.target], result)
            except Exception as error:  # one target's failure must not stop the others
                logger.exception("acting on %s failed", decision.target)
                result.errors.append(f"{decision.target}: {type(error).__name__}: {error}")
                written = False
            if not written:
                forget_scale(self.state, decision)
        for sink in self.sinks:
            try:
                sink.publish(now, decisions)
            except Exception:  # a broken sink must not stop scaling
                logger.exception("decision sink %r failed", sink)
        return result

    def _specs(self, targets: Sequence[LiveTarget], result: TickResult) -> list[TargetSpec]:
        """Build specs rule by rule, so a rule whose policies cannot be built skips only its targets."""
        by_rule: dict[str, list] = {}
        for live in targets:
            by_rule.setdefault(live.target.rule, []).append(live.target)
        specs = []
        for rule, discovered in by_rule.items():
            try:
                specs.extend(build_specs(self.config, discovered))
            except Exception as error:  # a plugin may raise anything; the other rules still run
                message = f"target rule {rule!r}: cannot build its policies, skipping {len(discovered)} targets: {error}"
                logger.error(message)
                result.errors.append(message)
        return specs

    def _without_other_autoscalers(self, targets: Sequence[LiveTarget], result: TickResult) -> list[LiveTarget]:
        """Drop targets that an HPA or Grove's own autoscaling already scales, unless the rule overrides.

        Two writers on one `/scale` fight, so such a target is skipped with an Event and a log line.
        A publishOnly rule never writes, so its targets are kept: the adapter serves their decisions
        to the HPA that scales them.
        When the HPAs of a namespace cannot be listed, its targets are skipped too: acting without
        knowing whether another writer exists is the fight this check prevents.
        """
        rules = {rule.name: rule for rule in self.config.targets}
        hpas: dict[str, list[dict] | None] = {}
        owned = []
        for live in targets:
            ref = live.target.ref
            rule = rules[live.target.rule]
            if rule.ignore_other_autoscalers or rule.publish_only:
                owned.append(live)
                continue
            if ref.namespace not in hpas:
                try:
                    hpas[ref.namespace] = self.kube.list_hpas(ref.namespace)
                except (ApiException, *TRANSPORT_ERRORS) as error:
                    status = f"HTTP {error.status}" if isinstance(error, ApiException) else type(error).__name__
                    message = f"listing HorizontalPodAutoscalers in {ref.namespace} failed ({status}); skipping its targets this tick"
                    logger.error(message)
                    result.errors.append(message)
                    hpas[ref.namespace] = None
            namespace_hpas = hpas[ref.namespace]
            if namespace_hpas is None:
                continue
            conflicts = find_conflicts(ref.kind, ref.name, live.podcliqueset, namespace_hpas, namespace=ref.namespace)
            if not conflicts:
                self._reported_conflicts.pop(str(ref), None)
                owned.append(live)
                continue
            if self._reported_conflicts.get(str(ref)) != tuple(conflicts):
                self._reported_conflicts[str(ref)] = tuple(conflicts)
                message = "skipped: already autoscaled by " + "; ".join(conflicts) + " (set ignoreOtherAutoscalers on the rule to override)"
                logger.warning("%s %s", ref, message)
                self.kube.emit_event(ref, live.uid, reason="ScaleSkipped", message=message, event_type="Warning")
        return owned

    def _report_outside_change(self, live: LiveTarget) -> None:
        """Log and record an Event when the live count differs from our last write."""
        name = str(live.target.ref)
        written = self._last_written.get(name)
        if written is None or written == live.replicas:
            return
        writers = other_writers(live.obj) or ["unknown (managedFields show no other writer)"]
        message = f"replicas changed outside the autoscaler: {written} -> {live.replicas} by {', '.join(writers)}"
        logger.warning("%s %s", name, message)
        self.kube.emit_event(live.target.ref, live.uid, reason="ScaleChangedOutside", message=message, event_type="Warning")
        del self._last_written[name]

    def _bands(self, targets: Sequence[LiveTarget], result: TickResult) -> list[RatioBand]:
        try:
            return build_bands(self.config, [live.target for live in targets])
        except CoordinationError as error:
            logger.error("ratio bands not applied this tick: %s", error)
            result.errors.append(str(error))
            return []

    def _act(self, decision: Decision, live: LiveTarget, result: TickResult) -> bool:
        """Write a changed decision; return True only when `/scale` was patched."""
        ref = TargetRef.parse(decision.target)
        if not decision.changes_scale:
            logger.debug("hold %s at %s: %s", ref, decision.current, decision.reason)
            return False
        assert decision.current is not None and decision.desired is not None
        direction = "up" if decision.desired > decision.current else "down"

        if self._publish_only(decision.rule):
            logger.debug("publish only: %s %d -> %d is served, not written", ref, decision.current, decision.desired)
            return False
        if self.dry_run:
            logger.info("dry-run: would scale %s %s %d -> %d: %s", ref.kind.value, _short(ref), decision.current, decision.desired, decision.reason)
            return False
        if not self.may_write():
            logger.info("not the leader: skip scaling %s %d -> %d", ref, decision.current, decision.desired)
            return False

        try:
            write = self.kube.patch_scale(ref, decision.desired, live.resource_version)
        except ScaleWriteError as error:
            logger.error("%s", error)
            result.errors.append(str(error))
            if self.telemetry is not None:
                self.telemetry.record_patch(decision.target, success=False)
            return False
        if self.telemetry is not None:
            self.telemetry.record_patch(decision.target, success=True)

        logger.info("scaled %s %s %d -> %d: %s", ref.kind.value, _short(ref), decision.current, decision.desired, decision.reason)
        result.writes.append((decision.target, decision.current, write.new))
        self._last_written[decision.target] = write.new
        self.kube.emit_event(
            ref,
            live.uid,
            reason="ScaledUp" if direction == "up" else "ScaledDown",
            message=f"scaled {decision.current} -> {decision.desired}: {decision.reason}",
        )
        return True


    def _publish_only(self, rule_name: str) -> bool:
        return any(rule.name == rule_name and rule.publish_only for rule in self.config.targets)


def _all_unknown(observations, specs: Sequence[TargetSpec]) -> bool:
    samples = [sample for spec in specs for sample in observations.get(spec.target, {}).values()]
    wanted = sum(len(spec.signals()) for spec in specs)
    return wanted > 0 and all(sample.is_unknown for sample in samples)


def _short(ref: TargetRef) -> str:
    return f"{ref.namespace}/{ref.name}"


class Loop:
    """Runs `Controller.tick` on an APScheduler interval until SIGTERM or SIGINT.

    A tick in progress finishes before the loop returns. Ticks never overlap, and a tick that
    overruns the interval makes the scheduler skip (coalesce) the missed runs.
    """

    def __init__(self, controller: Controller, interval_seconds: float, telemetry: Telemetry | None = None) -> None:
        self.controller = controller
        self.interval_seconds = interval_seconds
        self.telemetry = telemetry
        self.stopped = threading.Event()
        self.scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})

    def _run_tick(self) -> None:
        started = time.monotonic()
        success = False
        try:
            result = self.controller.tick()
            success = bool(result.decisions) or not result.errors
        except Exception:  # the loop must survive anything a tick raises
            logger.exception("tick failed")
        if self.telemetry is not None:
            self.telemetry.record_tick(duration_seconds=time.monotonic() - started, success=success)

    def stop(self, *_: object) -> None:
        self.stopped.set()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        self.scheduler.add_job(self._run_tick, "interval", seconds=self.interval_seconds, next_run_time=_now_datetime())
        self.scheduler.start()
        logger.info("controller started: tick every %g s", self.interval_seconds)
        self.stopped.wait()
        logger.info("stopping: waiting for the running tick to finish")
        self.scheduler.shutdown(wait=True)
        logger.info("controller stopped")


def _now_datetime():
    import datetime

    return datetime.datetime.now(datetime.timezone.utc)
