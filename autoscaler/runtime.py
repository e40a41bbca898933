"""Wire the live controller from configuration and command-line options."""

from __future__ import annotations

import argparse
import logging
import os
import threading

from kubernetes import client, config as kube_config

from autoscaler.config import Config, ConfigError, load_config
from autoscaler.controller import Controller, Loop
from autoscaler.kube import KubeClient

logger = logging.getLogger(__name__)


def make_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """Build an API client: the given kubeconfig, else in-cluster, else the default kubeconfig."""
    if kubeconfig:
        return kube_config.new_client_from_config(config_file=kubeconfig, context=context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        configuration = client.Configuration()
        kube_config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    return kube_config.new_client_from_config(context=context)


def make_source(config: Config):
    """Build the metric source named by the configuration."""
    from metrics.prometheus import PrometheusSource

    if config.metrics.prometheus is None:
        raise ConfigError("configuration", ["metrics.prometheus: missing; the live controller needs a Prometheus URL"])
    return PrometheusSource.from_config(config.metrics)


class ConfigWatcher:
    """Reloads the configuration file when it changes, keeping the last valid one on error."""

    def __init__(self, path: str, controller: Controller, interval_seconds: float) -> None:
        self.path = path
        self.controller = controller
        self.interval_seconds = interval_seconds
        self._stamp = self._read_stamp()
        self._stop = threading.Event()

    def _read_stamp(self) -> tuple[float, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime, stat.st_size)

    def check(self) -> bool:
        """Reload when the file changed; return True when a new configuration was applied."""
        stamp = self._read_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            config = load_config(self.path)
        except ConfigError as error:
            logger.error("configuration %s changed but is invalid; keeping the last valid one: %s", self.path, "; ".join(error.problems))
            return False
        self.controller.replace_config(config)
        logger.info("configuration %s reloaded: %d target rules", self.path, len(config.targets))
        return True

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval_seconds):
                self.check()

        threading.Thread(target=loop, name="config-watcher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def run_controller(config: Config, args: argparse.Namespace) -> int:
    try:
        source = make_source(config)
    except ConfigError as error:
        logger.error("%s", error)
        return 2
    kube = KubeClient(make_api_client(args.kubeconfig, args.context))
    controller = Controller(config, kube, source, dry_run=args.dry_run)
    if args.once:
        result = controller.tick()
        changed = sum(1 for decision in result.decisions if decision.changes_scale)
        logger.info(
            "tick done: %d targets, %d scale changes%s, %d errors",
            len(result.decisions),
            changed,
            " (dry run, nothing written)" if args.dry_run else "",
            len(result.errors),
        )
        return 1 if result.errors and not result.decisions else 0
    watcher = None
    if args.reload_seconds > 0:
        watcher = ConfigWatcher(args.config, controller, args.reload_seconds)
        watcher.start()
    try:
        Loop(controller, config.interval_seconds).run()
    finally:
        if watcher is not None:
            watcher.stop()
    return 0


def explain_live(config: Config, args: argparse.Namespace):
    """Run one dry-run tick against the cluster and return its decisions (None on a setup error)."""
    try:
        source = make_source(config)
    except ConfigError as error:
        logger.error("%s", error)
        return None
    kube = KubeClient(make_api_client(args.kubeconfig, args.context))
    controller = Controller(config, kube, source, dry_run=True)
    result = controller.tick()
    for error in result.errors:
        logger.error("%s", error)
    return result.decisions
