"""The `grove-autoscaler` command: validate, run, replay, backtest, explain, adapter."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from autoscaler import __version__, argtypes
from autoscaler.config import ConfigError, load_config

logger = logging.getLogger("grove_autoscaler")

EXIT_INVALID = 2


def _setup_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        from autoscaler.ops import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level (default: info)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"], help="log line format (default: text)")


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"{error.source}: invalid configuration", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    rules = len(config.targets)
    if args.manifest:
        from autoscaler.manifests import check_manifests, load_podcliquesets

        try:
            podcliquesets = load_podcliquesets(args.manifest)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_INVALID
        report = check_manifests(config, podcliquesets)
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if report.errors:
            print(f"{args.config}: invalid against {', '.join(args.manifest)}", file=sys.stderr)
            for problem in report.errors:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_INVALID
    print(f"{args.config}: valid ({rules} target rule{'' if rules == 1 else 's'}, tick every {config.interval_seconds:g} s)")
    return 0


def _load_or_exit(path: str):
    try:
        return load_config(path)
    except ConfigError as error:
        print(str(error), file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from None


def cmd_replay(args: argparse.Namespace) -> int:
    from autoscaler.replay import ReplayError, run_replay, summarize

    config = _load_or_exit(args.config)
    try:
        records = run_replay(config, args.metrics)
    except ReplayError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    lines = "".join(json.dumps(record) + "\n" for record in records)
    if args.out:
        try:
            Path(args.out).write_text(lines, encoding="utf-8")
        except OSError as error:
            print(f"error: cannot write --out {args.out}: {error.strerror}", file=sys.stderr)
            return EXIT_INVALID
        print(f"{summarize(records)}; written to {args.out}")
    else:
        sys.stdout.write(lines)
        print(summarize(records), file=sys.stderr)
    return 0


def _startup_guarded(function):
    """Turn a StartupError into one `error:` line and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        from autoscaler.runtime import StartupError

        try:
            return function(args)
        except StartupError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_INVALID

    return run


@_startup_guarded
def cmd_run(args: argparse.Namespace) -> int:
    from autoscaler.runtime import run_controller

    config = _load_or_exit(args.config)
    return run_controller(config, args)


@_startup_guarded
def cmd_adapter(args: argparse.Namespace) -> int:
    """Serve the external metrics API from a controller that decides every tick and never writes."""
    from autoscaler.runtime import run_controller

    config = _load_or_exit(args.config)
    args.dry_run = True
    args.once = False
    args.leader_elect = False
    return run_controller(config, args, serve_metrics_api=True)


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="path of the YAML configuration")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--reload-seconds", type=argtypes.non_negative_seconds, default=10.0, help="how often to check the config file for changes, in seconds (0 disables)")
    parser.add_argument("--metrics-port", type=argtypes.port, default=0, help="serve /metrics, /healthz and /readyz on this port (default 0: off)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address for --metrics-port (default 0.0.0.0)")


def _add_adapter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter-port", type=argtypes.port, default=6443, help="HTTPS port of the external metrics API (default 6443)")
    parser.add_argument("--adapter-host", default="0.0.0.0", help="address of the external metrics API (default 0.0.0.0)")
    parser.add_argument("--tls-cert-file", help="serving certificate (PEM); a self-signed one is made when absent")
    parser.add_argument("--tls-key-file", help="private key of --tls-cert-file (PEM)")
    parser.add_argument(
        "--requestheader-client-ca-file",
        help="CA of the aggregator's front-proxy client certificates (default: read from the extension-apiserver-authentication ConfigMap)",
    )
    parser.add_argument("--adapter-insecure-no-auth", action="store_true", help="serve without authentication or authorisation (testing only)")


@_startup_guarded
def cmd_explain(args: argparse.Namespace) -> int:
    from autoscaler.explain import explain_decisions_json, explain_decisions_text

    config = _load_or_exit(args.config)
    if args.at is not None and not args.metrics:
        print("error: --at needs --metrics (it picks a tick of a recording)", file=sys.stderr)
        return EXIT_INVALID
    if args.metrics:
        decisions = _replayed_decisions(config, args)
        if decisions is None:
            return EXIT_INVALID
    else:
        from autoscaler.runtime import explain_live

        decisions = explain_live(config, args)
        if decisions is None:
            return 1
    if args.json:
        print(json.dumps(explain_decisions_json(decisions), indent=2))
    else:
        print(explain_decisions_text(decisions))
    return 0


def _replayed_decisions(config, args: argparse.Namespace):
    """Return the decisions of one replayed tick: the one at --at, else the last."""
    from autoscaler.replay import ReplayError, catalog_check, read_recording, replay

    try:
        recording = read_recording(args.metrics, catalog_check(config))
        decisions = list(replay(config, recording, args.metrics))
    except ReplayError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    times = sorted({decision.time for decision in decisions})
    if args.at is None:
        chosen = times[-1]
    else:
        start = recording.ticks[0].time
        wanted = [time for time in times if time - start <= args.at]
        if not wanted:
            print(f"error: --at {args.at:g} is before the first tick of {args.metrics}", file=sys.stderr)
            return None
        chosen = wanted[-1]
    return [decision for decision in decisions if decision.time == chosen]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grove-autoscaler", description="Multi-level autoscaler for Grove PodCliqueSets serving LLMs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check a configuration file and list every problem")
    validate.add_argument("config", help="path of the YAML configuration")
    validate.add_argument(
        "--manifest",
        action="append",
        default=[],
        help="PodCliqueSet manifest to check the rules against (repeatable): missing groups or cliques, cliques inside scaling groups",
    )
    validate.set_defaults(handler=cmd_validate)

    run = commands.add_parser("run", help="run the control loop against the cluster")
    _add_cluster(run)
    run.add_argument("--dry-run", action="store_true", help="log decisions and write nothing")
    run.add_argument("--once", action="store_true", help="run one tick and exit")
    run.add_argument("--leader-elect", action="store_true", help="write only while holding the coordination.k8s.io Lease")
    run.add_argument("--lease-name", default="grove-autoscaler", help="name of the leader-election Lease (default grove-autoscaler)")
    run.add_argument("--lease-namespace", help="namespace of the Lease (default: the pod's namespace)")
    run.add_argument("--lease-duration-seconds", type=argtypes.non_negative_seconds, default=15.0, help="how long a Lease stays valid without renewal, in seconds (default 15)")
    run.add_argument("--renew-deadline-seconds", type=argtypes.non_negative_seconds, default=10.0, help="the leader stops writing when it could not renew for this long, in seconds (default 10)")
    run.add_argument("--retry-period-seconds", type=argtypes.non_negative_seconds, default=2.0, help="time between Lease renewals and acquisition attempts, in seconds (default 2)")
    run.add_argument("--adapter", action="store_true", help="also serve the external metrics API in this process")
    _add_adapter_options(run)
    _add_common(run)
    run.set_defaults(handler=cmd_run)

    adapter = commands.add_parser("adapter", help="serve the external metrics API from decisions, without writing /scale")
    _add_cluster(adapter)
    _add_adapter_options(adapter)
    _add_common(adapter)
    adapter.set_defaults(handler=cmd_adapter)

    replay = commands.add_parser("replay", help="run the engine over recorded signals (open loop)")
    replay.add_argument("--config", required=True, help="path of the YAML configuration")
    replay.add_argument("--metrics", required=True, help="CSV with header time,target,signal,value")
    replay.add_argument("--out", help="write decisions as JSON lines to this file (default: standard output)")
    _add_common(replay)
    replay.set_defaults(handler=cmd_replay)

    explain = commands.add_parser("explain", help="show every input, policy desire and adjustment behind each decision")
    explain.add_argument("--config", required=True, help="path of the YAML configuration")
    explain.add_argument("--metrics", help="explain a replayed tick of this CSV instead of the live cluster")
    explain.add_argument("--at", type=argtypes.non_negative_seconds, help="with --metrics: seconds from the first tick (default: the last tick)")
    explain.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    explain.add_argument("--context", help="kubeconfig context")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_common(explain)
    explain.set_defaults(handler=cmd_explain)

    _add_optional_commands(commands)
    return parser


def _add_optional_commands(commands) -> None:
    """Register commands whose modules may add their own arguments."""
    try:
        from autoscaler.backtest import cli as backtest_cli
    except ImportError as error:
        logger.debug("backtest command unavailable: %s", error)
        return
    backtest_cli.add_parser(commands)
    commands.choices["backtest"].set_defaults(handler=backtest_cli.run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`| head`): stop quietly, as SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
