"""`grove-autoscaler backtest`: replay real traffic against policies on a simulated Grove cluster."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import yaml

from autoscaler import argtypes
from autoscaler.backtest import baselines, limits, report, traces
from autoscaler.backtest.cluster import (
    TopologyError,
    build_topology,
    default_manifest,
    describe_decode_error,
    describe_yaml_error,
    load_manifest,
    read_text,
)
from autoscaler.backtest.oracle import OracleResult, oracle_for_shape, oracle_for_trace
from autoscaler.backtest.runner import Settings, Workload, run_backtest
from autoscaler.backtest.signals import DECODE, PREFILL
from autoscaler.config import Config, ConfigError, parse_config
from policies.profile import Profile, ProfileError, bundled_profile_dir

logger = logging.getLogger(__name__)

DEFAULT_MIN_PEAK_GPUS = 8.0
EXIT_INVALID_INPUT = 2
EXIT_NO_DATA = 1

# Both serving models keep arrays over every request of the scaled trace. In request mode 50 million
# requests take about 2.5 minutes per policy set, an estimate scaled from the bundled default run.
MAX_REQUESTS = 50_000_000

PLOT_SUFFIXES = (".png", ".pdf", ".svg")

# Longest simulated range per mode. The request model records signals every second, about 0.5 kB
# per second (0.6 GB for 14 days). The fluid model took about 60 s per 14 days on the benchmark
# machine, so 31 days take about 2 minutes there.
MAX_SIMULATED_DAYS = {"request": 14, "fluid": 31}

# Options of a simulated run that history mode does not use, so it rejects them instead of ignoring them.
_SIMULATION_ONLY = ("trace", "format", "lengths_from", "rate_scale", "jitter", "profile", "mode", "csv", "plot")


def default_config_path() -> Path:
    from importlib import resources

    return Path(str(resources.files("autoscaler.data").joinpath("backtest.yaml")))


def add_parser(subparsers) -> None:
    """Register the `backtest` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "backtest",
        help="compare scaling policies on a recorded trace with a simulated cluster",
        description=(
            "Replay a request trace (or a rate shape) against every configured policy set and the "
            "built-in baselines on a simulated Grove cluster whose serving speed comes from a Dynamo "
            "profile, and print SLO attainment and GPU-hours against a clairvoyant oracle. Without "
            "arguments it runs the bundled Azure conversation trace, scaled so the peak needs at "
            "least 8 GPUs, with the bundled H200 profile and example configuration."
        ),
    )

    parser.add_argument("--trace", help="trace file or ServeGen directory, or a bundled trace: azure-conv, azure-code (default: azure-conv)")
    parser.add_argument("--format", choices=("auto",) + traces.FORMATS, help="trace format (default: detect)")
    parser.add_argument("--lengths-from", help="request-level trace whose input/output lengths a rate shape uses (default: azure-conv)")
    parser.add_argument("--start", help="start of the range to replay: seconds from the trace start (history mode: Unix seconds or RFC 3339)")
    parser.add_argument("--end", help="end of the range to replay: seconds from the trace start (history mode: Unix seconds or RFC 3339)")
    parser.add_argument(
        "--rate-scale",
        default=None,
        help="multiply the request rate, keeping the time axis; a number or 'auto' (scale until the peak needs "
        f"{DEFAULT_MIN_PEAK_GPUS:g} GPUs; the default for the bundled traces, 1 otherwise)",
    )
    parser.add_argument(
        "--jitter",
        type=argtypes.non_negative_seconds,
        default=None,
        help="with --rate-scale above 1: each added copy's arrivals move by a random offset of up to this many seconds "
        f"(default {traces.DEFAULT_JITTER_SECONDS:g}; 0 stacks every burst)",
    )

    parser.add_argument("--config", action="append", help="configuration file of one policy set; repeat to compare several (default: bundled example)")
    parser.add_argument("--profile", help="Dynamo profiling directory (default: bundled H200 TP1 profile)")
    parser.add_argument("--manifest", help="PodCliqueSet manifest of the simulated deployment (default: bundled multi-node disaggregated example)")
    parser.add_argument("--gpus-per-pod", type=argtypes.positive_number, default=1.0, help="GPUs per pod when the manifest requests none (default: 1)")

    parser.add_argument("--mode", choices=("request", "fluid"), help="request-level events or per-second fluid model (default: request for traces, fluid for rate shapes)")
    parser.add_argument("--cold-start", type=argtypes.non_negative_seconds, default=120.0, help="seconds before a new replica serves (default: 120)")
    parser.add_argument("--ttft-slo", type=argtypes.positive_number, default=0.5, help="TTFT objective per request, seconds (default: 0.5)")
    parser.add_argument("--itl-slo", type=argtypes.positive_number, default=0.05, help="mean ITL objective per request, seconds (default: 0.05)")

    parser.add_argument("--no-baselines", action="store_true", help="run only the configured policy sets")
    parser.add_argument("--json", help="write the results as JSON to this file")
    parser.add_argument("--csv", help="write one timeline CSV per policy into this directory (created if its parent exists)")
    parser.add_argument("--plot", help="write a plot of replicas, load and latency per policy to this .png, .pdf or .svg file")

    parser.add_argument(
        "--prometheus",
        help="history mode: read the configured signals from this Prometheus URL between --start and --end "
        "(Unix seconds or RFC 3339) and replay them through the engine open loop",
    )
    parser.add_argument("--seed", type=argtypes.non_negative_int, default=0, help="seed of the rate scaling (default: 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the backtest described by parsed arguments and return the exit code: 2 on invalid input, 1 when history mode read no data."""
    try:
        return _run(args)
    except (traces.TraceError, ProfileError, TopologyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    except OSError as error:
        # An output file or directory that cannot be written.
        print(f"error: cannot write {error.filename}: {error.strerror}", file=sys.stderr)
        return EXIT_INVALID_INPUT


def _run(args: argparse.Namespace) -> int:
    if args.prometheus:
        return _run_history(args)
    check_output_paths(args)
    _check_trace_options(args)
    profile = Profile.load(args.profile) if args.profile else Profile.load(bundled_profile_dir())
    manifest = load_manifest(args.manifest) if args.manifest else default_manifest()
    config_paths = [Path(path) for path in args.config] if args.config else [default_config_path()]
    configs = [(_policy_set_name(path), load_config_file(path)) for path in config_paths]
    main_config = configs[0][1]
    topology = build_topology(main_config, manifest, gpus_per_pod=args.gpus_per_pod)
    prefill_gpus = topology.by_role(PREFILL).gpus_per_replica
    decode_gpus = topology.by_role(DECODE).gpus_per_replica

    workload = _load_workload(args)
    mode = args.mode or ("request" if workload.trace is not None and workload.shape is None else "fluid")
    if mode == "request" and workload.trace is None:
        raise ValueError(f"trace {workload.name} is a rate shape without request times; use --mode fluid")
    _check_simulated_range(workload, mode)
    settings = Settings(
        ttft_slo_s=args.ttft_slo, itl_slo_s=args.itl_slo, cold_start_s=args.cold_start,
        mode=mode, gpus_per_pod=args.gpus_per_pod, seed=args.seed,
    )

    workload = _scale_workload(workload, args, profile, prefill_gpus, decode_gpus, settings)
    oracle = _oracle(workload, profile, prefill_gpus, decode_gpus, settings, main_config)

    policy_sets, warnings = _policy_sets(args, configs, topology, oracle, settings)
    warnings.extend(limits.workload_warnings(workload, profile, settings, decode_gpus=decode_gpus))
    result = run_backtest(workload, policy_sets, profile, manifest, settings, oracle, show_progress=not args.quiet)
    result.warnings.extend(warnings)
    result.warnings.extend(limits.outcome_warnings(result.results))

    print(report.format_table(result))
    if args.json:
        report.write_json(result, args.json)
    if args.csv:
        report.write_csv(result, args.csv)
    if args.plot:
        report.write_plot(result, args.plot)
    return 0


def _run_history(args: argparse.Namespace) -> int:
    import json

    from autoscaler.backtest.history import format_history, history_to_dict, parse_time, run_history
    from metrics.catalog import SignalCatalog
    from metrics.prometheus import PrometheusSource

    rejected = [f"--{name.replace('_', '-')}" for name in _SIMULATION_ONLY if getattr(args, name) is not None]
    if args.no_baselines:
        rejected.append("--no-baselines")
    if rejected:
        raise ValueError(f"{', '.join(rejected)} cannot be used with --prometheus (history mode replays recorded signals, without a trace or a simulated cluster)")
    _check_prometheus_url(args.prometheus)
    check_output_paths(args)
    if args.config is not None and len(args.config) > 1:
        raise ValueError(f"history mode replays one configuration, got {len(args.config)} --config options")
    if args.start is None or args.end is None:
        raise ValueError("history mode needs --start and --end (Unix seconds or RFC 3339)")
    start = parse_time(args.start, "--start")
    end = parse_time(args.end, "--end")
    config_path = Path(args.config[0]) if args.config else default_config_path()
    config = load_config_file(config_path)
    check_history_range(start, end, config.interval_seconds)
    manifest = load_manifest(args.manifest) if args.manifest else default_manifest()
    timeout = config.metrics.prometheus.timeout_seconds if config.metrics.prometheus is not None else 30.0
    source = PrometheusSource(url=args.prometheus, catalog=SignalCatalog.from_config(config.metrics), timeout_seconds=timeout)
    try:
        result = run_history(config, manifest, source, start=start, end=end, gpus_per_pod=args.gpus_per_pod)
    finally:
        source.close()
    print(format_history(result))
    if args.json:
        Path(args.json).write_text(json.dumps(history_to_dict(result), indent=2) + "\n", encoding="utf-8")
    if result.targets and all(target.unknown_ticks == len(result.times) for target in result.targets):
        print(f"error: every tick had unknown input, so no decision used recorded data: {result.unknown_reason}", file=sys.stderr)
        return EXIT_NO_DATA
    return 0


def _check_prometheus_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"invalid --prometheus {url!r}: expected an http:// or https:// URL such as http://127.0.0.1:9090")


def load_config_file(path: Path) -> Config:
    """Read and validate one configuration file; raise ValueError or ConfigError naming the file and line."""
    try:
        text = read_text(path)
    except OSError as error:
        raise ValueError(f"--config {path}: cannot read file: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"--config {describe_decode_error(path, error)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"--config {describe_yaml_error(path, error)}") from None
    return parse_config(data, str(path))


def check_output_paths(args: argparse.Namespace) -> None:
    """Reject output paths that cannot be written, before any simulation runs; raise ValueError."""
    if args.json is not None:
        _check_output_file("--json", Path(args.json))
    if args.csv is not None:
        directory = Path(args.csv)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"invalid --csv {args.csv}: it exists and is not a directory; give a directory for the timeline files")
        if not directory.exists():
            _check_parent("--csv", directory)
        elif not os.access(directory, os.W_OK):
            raise ValueError(f"invalid --csv {args.csv}: the directory is not writable")
    if args.plot is not None:
        plot = Path(args.plot)
        if plot.suffix.lower() not in PLOT_SUFFIXES:
            raise ValueError(f"invalid --plot {args.plot}: the file name must end in {', '.join(PLOT_SUFFIXES)}, which selects the format")
        _check_output_file("--plot", plot)


def _check_output_file(option: str, path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"invalid {option} {path}: it is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"invalid {option} {path}: the file is not writable")
    _check_parent(option, path)


def _check_parent(option: str, path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"invalid {option} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"invalid {option} {path}: directory {parent} is not writable")


def check_history_range(start: float, end: float, interval_s: float) -> None:
    from autoscaler.backtest.history import MAX_TICKS

    if end <= start:
        raise ValueError(f"invalid --end {end:.0f}: it is not after --start {start:.0f}")
    ticks = (end - start) / interval_s + 1
    if ticks > MAX_TICKS:
        raise ValueError(
            f"invalid time range --start {start:.0f} --end {end:.0f}: {ticks:.3g} ticks of {interval_s:g} s, more than the maximum "
            f"{MAX_TICKS}; shorten the range to at most {(MAX_TICKS - 1) * interval_s / 86400:.1f} days"
        )


def _check_trace_options(args: argparse.Namespace) -> None:
    bundled = args.trace is None or args.trace in traces.BUNDLED_TRACES
    if bundled and args.format not in (None, "auto", "azure"):
        raise ValueError(f"invalid --format {args.format}: the bundled trace {args.trace or 'azure-conv'} is in azure format; leave out --format")


def _policy_set_name(path: Path) -> str:
    # The bundled example runs the sla-planner policy; a user's set is named after its file.
    return "sla-planner (example)" if path.resolve() == default_config_path().resolve() else path.stem


def _load_workload(args: argparse.Namespace) -> Workload:
    if args.trace is None or args.trace in traces.BUNDLED_TRACES:
        path = traces.bundled_trace_path(args.trace or "azure-conv")
        loaded = traces.load(path, "azure")
    else:
        loaded = traces.load(args.trace, args.format or "auto")

    start = _seconds(args.start, "--start")
    end = _seconds(args.end, "--end")
    if isinstance(loaded, traces.RateShape):
        for option, value in (("--start", start), ("--end", end)):
            _check_window_multiple(option, value, loaded)
        shape = traces.cut_shape(loaded, start, end) if start is not None or end is not None else loaded
        lengths_source = args.lengths_from or "azure-conv"
        if lengths_source in traces.BUNDLED_TRACES:
            lengths = traces.load(traces.bundled_trace_path(lengths_source), "azure")
        else:
            lengths = traces.load(lengths_source)
        if not isinstance(lengths, traces.Trace):
            raise traces.TraceError(f"--lengths-from {lengths_source}: a request-level trace is needed, got a rate shape")
        return Workload(name=shape.name, duration_s=shape.duration_s, shape=shape, lengths=lengths)

    if args.lengths_from is not None:
        raise ValueError(f"--lengths-from {args.lengths_from} applies only to a rate shape, but {loaded.name} is a request-level trace with its own lengths; leave out --lengths-from")
    trace = traces.cut(loaded, start, end) if start is not None or end is not None else loaded
    return Workload(name=trace.name, duration_s=trace.duration_s, trace=trace)


def _check_simulated_range(workload: Workload, mode: str) -> None:
    days = workload.duration_s / 86400
    limit = MAX_SIMULATED_DAYS[mode]
    if days > limit:
        other = " or --mode fluid" if mode == "request" and days <= MAX_SIMULATED_DAYS["fluid"] else ""
        raise ValueError(
            f"trace {workload.name} spans {days:.1f} days, more than the {limit} days that {mode} mode simulates; "
            f"replay a part with --start and --end{other}"
        )


def _check_window_multiple(option: str, value: float | None, shape: traces.RateShape) -> None:
    # A rate shape is cut at window boundaries only, so any other value would count a partial
    # window as a whole one in the GPU-hours.
    if value is None:
        return
    windows = value / shape.window_s
    if abs(windows - round(windows)) > 1e-9:
        lower = math.floor(windows) * shape.window_s
        examples = f"{lower:g} or {lower + shape.window_s:g}" if lower > 0 else f"{shape.window_s:g}"
        raise ValueError(
            f"invalid {option} {value:g}: rate shape {shape.name} has windows of {shape.window_s:g} s, and a partial "
            f"window would count as a whole one; give a multiple of {shape.window_s:g}, such as {examples}"
        )


def _seconds(text: str | None, option: str) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid {option} {text!r}: expected seconds from the trace start") from None
    if not math.isfinite(value):
        raise ValueError(f"invalid {option} {text!r}: expected a finite number of seconds")
    return value


def _scale_workload(workload: Workload, args, profile: Profile, prefill_gpus: float, decode_gpus: float, settings: Settings) -> Workload:
    requested = args.rate_scale
    if requested is None:
        # A bundled trace is scaled to the default fleet size; a user's trace keeps its own rate.
        requested = "auto" if args.trace is None or args.trace in traces.BUNDLED_TRACES else "1"
    if requested == "auto":
        oracle = _oracle(workload, profile, prefill_gpus, decode_gpus, settings, None)
        factor = max(1.0, math.ceil(DEFAULT_MIN_PEAK_GPUS / max(oracle.peak_gpu_need, 1e-9) * 10) / 10)
    else:
        try:
            factor = float(requested)
        except ValueError:
            raise ValueError(f"invalid --rate-scale {requested!r}: expected a positive number or 'auto'") from None
        if not math.isfinite(factor) or factor <= 0:
            raise ValueError(f"invalid --rate-scale {requested!r}: expected a positive number or 'auto'")
    if factor == 1:
        return workload
    _check_scaled_requests(workload, factor, requested, settings.mode)
    if workload.trace is not None:
        jitter = traces.DEFAULT_JITTER_SECONDS if args.jitter is None else args.jitter
        trace = traces.scale_rate(workload.trace, factor, seed=args.seed, jitter_s=jitter)
        if trace.requests == 0:
            raise ValueError(f"invalid --rate-scale {requested}: no request of the {workload.requests} in {workload.name} is left; use a larger scale")
        return Workload(name=trace.name, duration_s=trace.duration_s, trace=trace)
    shape = traces.scale_shape(workload.shape, factor)
    return Workload(name=shape.name, duration_s=shape.duration_s, shape=shape, lengths=workload.lengths)


def _check_scaled_requests(workload: Workload, factor: float, requested: str, mode: str) -> None:
    """Reject a scale that leaves no request, or gives a trace too large to simulate request by request."""
    if workload.trace is None:
        expected = float(sum(workload.shape.rate * workload.shape.window_s)) * factor
        if expected < 0.5:
            raise ValueError(f"invalid --rate-scale {requested}: {workload.name} would have {expected:.3g} requests in all; use a larger scale")
        return
    expected = workload.trace.requests * factor
    if expected < 0.5:
        raise ValueError(f"invalid --rate-scale {requested}: {workload.name} would have {expected:.3g} requests in all; use a larger scale")
    if expected > MAX_REQUESTS:
        # Both models need the scaled trace's arrays, so the fluid mode is no way around the limit for a trace.
        raise ValueError(
            f"invalid --rate-scale {requested} (factor {factor:g}): {workload.name} would have {expected:.3g} requests, more than the "
            f"maximum {MAX_REQUESTS}; use a smaller --rate-scale or a shorter range (--start/--end), or a rate shape with --mode fluid"
        )


def _oracle(workload: Workload, profile, prefill_gpus, decode_gpus, settings: Settings, config: Config | None) -> OracleResult:
    if workload.trace is not None:
        window = float(config.metrics.window_seconds) if config is not None else 60.0
        return oracle_for_trace(workload.trace, profile, prefill_gpus=prefill_gpus, decode_gpus=decode_gpus, itl_slo_s=settings.itl_slo_s, window_s=window)
    return oracle_for_shape(workload.shape, workload.lengths, profile, prefill_gpus=prefill_gpus, decode_gpus=decode_gpus, itl_slo_s=settings.itl_slo_s)


def _policy_sets(args, configs, topology, oracle: OracleResult, settings: Settings) -> tuple[list[baselines.PolicySet], list[str]]:
    policy_sets = [baselines.PolicySet(name, config) for name, config in configs]
    warnings: list[str] = []
    if args.no_baselines:
        return policy_sets, warnings
    main_config = configs[0][1]
    peak = {PREFILL: int(oracle.prefill_replicas.max()), DECODE: int(oracle.decode_replicas.max())}
    policy_sets.append(baselines.static_peak(main_config, peak))
    policy_sets.append(baselines.hpa_kv_cache(main_config))
    roles = {target.discovered.rule: target.role for target in topology.targets}
    gpus = {target.discovered.rule: target.gpus_per_replica for target in topology.targets}
    dynamo = baselines.dynamo_planner(
        main_config, roles, gpus, ttft_slo_s=settings.ttft_slo_s, itl_slo_s=settings.itl_slo_s,
        profile_dir=Path(args.profile) if args.profile else None,
    )
    if dynamo is None:
        warnings.append("policy dynamo-compatible is not registered; the Dynamo planner baseline was skipped")
    else:
        policy_sets.append(dynamo)
    return policy_sets, warnings


def main(argv: Sequence[str] | None = None) -> int:
    """Run `backtest` as a standalone program (the package CLI registers it as a subcommand)."""
    parser = argparse.ArgumentParser(prog="grove-autoscaler")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args(["backtest", *(argv if argv is not None else sys.argv[1:])])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
