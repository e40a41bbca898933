"""Wire the live controller from configuration and command-line options."""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import threading

from kubernetes import client, config as kube_config

from autoscaler.adapter import Authenticator, MetricStore, serve_adapter
from autoscaler.config import Config, ConfigError, load_config
from autoscaler.controller import Controller, Loop
from autoscaler.kube import KubeClient
from autoscaler.leader import LeaderElector, LeaseTiming, default_identity, default_namespace
from autoscaler.ops import Telemetry, serve_ops

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """A problem found before the first tick (kubeconfig, ports, certificates), with a message naming the fix."""


def make_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """Build an API client: the given kubeconfig, else in-cluster, else the default kubeconfig."""
    configuration = client.Configuration()
    try:
        if kubeconfig:
            if not os.path.isfile(kubeconfig):
                raise StartupError(f"kubeconfig {kubeconfig} not found or not a file")
            kube_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            kube_config.load_incluster_config(client_configuration=configuration)
        else:
            kube_config.load_kube_config(context=context, client_configuration=configuration)
    except kube_config.ConfigException as error:
        where = kubeconfig or "the default kubeconfig (~/.kube/config or KUBECONFIG)"
        raise StartupError(f"invalid Kubernetes client configuration in {where}: {error}") from None
    except (OSError, ValueError, TypeError, AttributeError) as error:
        where = kubeconfig or "the default kubeconfig"
        raise StartupError(f"cannot load {where}: {type(error).__name__}: {error}") from None
    # One retry for a dropped connection; the default three would stretch a hung call to four
    # timeouts, and the next tick retries anyway.
    configuration.retries = 1
    return client.ApiClient(configuration)


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
        if stamp is None:
            if self._stamp is not None:
                logger.warning("configuration %s is missing; keeping the last valid one until it returns", self.path)
                self._stamp = None
            return False
        if stamp == self._stamp:
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
                try:
                    self.check()
                except Exception:  # the watcher must outlive any bad file
                    logger.exception("checking configuration %s failed; keeping the last valid one", self.path)

        threading.Thread(target=loop, name="config-watcher", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def _start_ops(args: argparse.Namespace, config: Config) -> Telemetry | None:
    if not args.metrics_port:
        return None
    telemetry = Telemetry(stall_after_seconds=config.interval_seconds * 10)
    try:
        server, _ = serve_ops(telemetry, host=args.metrics_host, port=args.metrics_port)
    except OSError as error:
        raise StartupError(f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {error.strerror or error}") from None
    logger.info("serving /metrics, /healthz and /readyz on http://%s:%d", args.metrics_host, server.server_address[1])
    return telemetry


def _start_adapter(args: argparse.Namespace, api_client: client.ApiClient, store: MetricStore) -> None:
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        raise StartupError("give both --tls-cert-file and --tls-key-file, or neither for a self-signed certificate")
    auth = None
    try:
        if not args.adapter_insecure_no_auth:
            auth = Authenticator.from_cluster(api_client, requestheader_client_ca_file=args.requestheader_client_ca_file)
        server, _ = serve_adapter(
            store,
            host=args.adapter_host,
            port=args.adapter_port,
            cert_file=args.tls_cert_file,
            key_file=args.tls_key_file,
            auth=auth,
        )
    except (OSError, ValueError, ssl.SSLError) as error:
        raise StartupError(f"cannot start the external metrics adapter on {args.adapter_host}:{args.adapter_port}: {error}") from None
    logger.info("serving external.metrics.k8s.io/v1beta1 on https://%s:%d", args.adapter_host, server.server_address[1])


def _start_elector(args: argparse.Namespace, api_client: client.ApiClient) -> LeaderElector | None:
    if not args.leader_elect:
        return None
    if not args.lease_duration_seconds > args.renew_deadline_seconds > args.retry_period_seconds > 0:
        raise StartupError(
            "lease timings must satisfy --lease-duration-seconds > --renew-deadline-seconds > --retry-period-seconds > 0, "
            f"got {args.lease_duration_seconds:g} > {args.renew_deadline_seconds:g} > {args.retry_period_seconds:g}"
        )
    elector = LeaderElector(
        api_client=api_client,
        namespace=args.lease_namespace or default_namespace(),
        name=args.lease_name,
        identity=default_identity(),
        timing=LeaseTiming(
            lease_duration_seconds=args.lease_duration_seconds,
            renew_deadline_seconds=args.renew_deadline_seconds,
            retry_period_seconds=args.retry_period_seconds,
        ),
    )
    elector.start()
    return elector


def run_controller(config: Config, args: argparse.Namespace, *, serve_metrics_api: bool = False) -> int:
    """Run the control loop with the options of `run` (or `adapter`, which never writes)."""
    try:
        source = make_source(config)
    except ConfigError as error:
        logger.error("%s", error)
        return 2
    api_client = make_api_client(args.kubeconfig, args.context)
    kube = KubeClient(api_client)

    telemetry = _start_ops(args, config)
    sinks: list = [telemetry] if telemetry is not None else []
    if serve_metrics_api or getattr(args, "adapter", False):
        store = MetricStore(max_age_seconds=config.interval_seconds * 3)
        sinks.append(store)
        _start_adapter(args, api_client, store)
    elector = None if args.dry_run else _start_elector(args, api_client)

    controller = Controller(
        config,
        kube,
        source,
        dry_run=args.dry_run,
        sinks=sinks,
        may_write=elector.is_leader if elector is not None else (lambda: True),
        telemetry=telemetry,
    )
    if args.once:
        result = controller.tick()
        changes = sum(1 for decision in result.decisions if decision.changes_scale)
        logger.info(
            "tick done: %d targets, %d changes decided, %d written%s, %d errors",
            len(result.decisions),
            changes,
            len(result.writes),
            " (dry run)" if args.dry_run else "",
            len(result.errors),
        )
        if elector is not None:
            elector.stop(release=True)
        return 1 if result.errors else 0

    watcher = None
    if args.reload_seconds > 0:
        watcher = ConfigWatcher(args.config, controller, args.reload_seconds)
        watcher.start()
    try:
        Loop(controller, config.interval_seconds, telemetry).run()
    finally:
        if watcher is not None:
            watcher.stop()
        if elector is not None:
            elector.stop(release=True)
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
