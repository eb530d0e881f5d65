"""The ``opso`` command. This module is the only place that configures logging.

    opso run CONFIG.yaml [--cluster local|slurm|pbs|tcp://host:8786] [--overwrite] [--no-progress]
    opso status OUTPUT_URL|CONFIG.yaml [--storage-options JSON] [--json]
    opso demo [--out DIR]
    opso --version

A user error ends with one ``opso: error: ...`` line and the exit code of
:mod:`pipelines.errors` (2: configuration, input, output or storage; 3: cluster); ``-v`` adds the
traceback. A run that ends incomplete exits with 1, Ctrl-C (or SIGTERM, e.g. ``scancel`` of a
driver job) with 130; either way the same command resumes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

# only the standard library at import time: worker processes re-import this module, and a Ctrl-C
# while the heavy modules load must still end in one line
from pipelines.exit_codes import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_OK

logger = logging.getLogger("opso")

EPILOG = """exit codes:
  0    the run is complete (unreadable files are listed in failures.parquet)
  1    the run is incomplete (failed tasks, or no readable audio); run it again to retry
  2    configuration, input, output or storage error (nothing was started or deleted)
  3    cluster error: job submission rejected, scheduler unreachable, no workers; resumable
  130  interrupted (Ctrl-C, SIGTERM); resumable
"""


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if verbosity < 1:  # Dask's own INFO lines drown the run's (the variable reaches worker processes too)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        for name in ("distributed", "bokeh", "tornado", "dask_jobqueue", "asyncio"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _quiet_shutdown() -> None:
    """After Ctrl-C, closing the cluster makes Dask log about the tasks it drops: not news to the user."""
    for name in ("distributed", "tornado", "asyncio", "dask_jobqueue"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _run(config, cluster_kind=None, overwrite=False, progress=True):
    from pipelines.cluster import open_cluster
    from pipelines.graph import run_pipeline
    from pipelines.preflight import check_run

    preflight = check_run(config, cluster_kind=cluster_kind, overwrite=overwrite)
    try:
        with open_cluster(config.cluster, kind=preflight.cluster_kind) as session:
            print(f"opso: Dask dashboard at {session.dashboard_link}", flush=True)
            summary = run_pipeline(config, session.client, overwrite=overwrite, progress=progress,
                                   preflight=preflight, watch=session.check)
    except KeyboardInterrupt:
        _quiet_shutdown()
        raise
    for line in summary.lines():
        print(line)
    return summary


def _exit_code(summary) -> int:
    if summary.analysed_nothing:
        print("opso: no clip could be analysed: no input file held readable audio (see failures.parquet)",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    if summary.status == "incomplete":
        print("opso: some tasks failed (see failures.parquet); run the same command again to retry them",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def _cmd_run(args) -> int:
    from pipelines.config import load_config

    config = load_config(args.config)
    summary = _run(config, cluster_kind=args.cluster, overwrite=args.overwrite, progress=not args.no_progress)
    return _exit_code(summary)


def _status_target(args) -> tuple[str, dict]:
    """(output URL, storage options) from a URL or a run configuration file."""
    options = {}
    if args.storage_options:
        try:
            options = json.loads(args.storage_options)
        except json.JSONDecodeError as exc:
            from pipelines.errors import ConfigError

            raise ConfigError(f"--storage-options is not valid JSON: {exc}") from None
    target = args.target
    if os.path.isfile(target) and target.lower().endswith((".yaml", ".yml")):
        from pipelines.config import load_config

        config = load_config(target)
        return config.output.url, {**config.output.storage_options, **options}
    return target, options


def _cmd_status(args) -> int:
    from pipelines.results import read_status

    url, options = _status_target(args)
    status = read_status(url, options)
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    print(f"run at {url}: {status['status']}")
    print(f"  started {status.get('started')}, finished {status.get('finished', '-')}")
    if status.get("error"):
        print(f"  error: {status['error']['type']}: {status['error']['message']}")
    for key, value in (status.get("summary") or {}).items():
        print(f"  {key}: {value}")
    return EXIT_OK


def _cmd_demo(args) -> int:
    from pipelines.demo import prepare_demo

    config = prepare_demo(args.out, seed=args.seed)
    print(f"opso demo: generated a sample archive in {config.input.url}", flush=True)
    summary = _run(config, overwrite=True, progress=not args.no_progress)
    print("\nRead the results with pandas:")
    print(f"  pd.read_parquet('{summary.output_url}/detections')")
    print(f"  pd.read_parquet('{summary.output_url}/scores/detector=ribbit:frog12')   # one detector at a time")
    print(f"  xr.open_zarr('{summary.output_url}/spectrograms.zarr')")
    return _exit_code(summary)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("opso")
    except PackageNotFoundError:
        from opso_core import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opso", description="Bioacoustic analysis of large recording archives.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"opso {_version()}")
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="more log output; tracebacks of errors")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="count", default=0, dest="verbose_top", help=argparse.SUPPRESS)
    parser.add_argument("-q", "--quiet", action="store_true", dest="quiet_top", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", parents=[verbosity], help="run the pipeline described by a YAML configuration",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", help="YAML configuration file")
    run.add_argument("--cluster", default=None,
                     help="local, slurm, pbs, or a scheduler address (overrides cluster.kind)")
    run.add_argument("--overwrite", action="store_true",
                     help="delete the previous run's outputs in the output folder (only files opso wrote) and "
                          "start over")
    run.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", parents=[verbosity], help="show the state of a run from its run.json")
    status.add_argument("target", metavar="OUTPUT_URL|CONFIG", help="the run's output URL, or its configuration file")
    status.add_argument("--storage-options", default=None,
                        help='JSON for fsspec, e.g. \'{"client_kwargs": {"endpoint_url": "http://minio:9000"}}\'')
    status.add_argument("--json", action="store_true", help="print run.json as it is")
    status.set_defaults(func=_cmd_status)

    demo = sub.add_parser("demo", parents=[verbosity],
                          help="generate a sample archive and run the whole pipeline locally")
    demo.add_argument("--out", default="opso-demo", help="output folder [default: ./opso-demo]")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # scancel of a driver job, docker stop, kill: clean up as for Ctrl-C


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    return f"{lines[0].rstrip(':')}: {'; '.join(lines[1:])}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    verbose = args.verbose + args.verbose_top
    _configure_logging(-1 if (args.quiet or args.quiet_top) else verbose)
    try:
        previous_sigterm = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    except ValueError:  # not the main thread (main() called from another thread)
        previous_sigterm = None
    try:
        from opso_core.errors import OpsoError
        from pipelines.errors import exit_code_of

        try:
            return args.func(args)
        except OpsoError as exc:
            if verbose:
                logger.error("traceback:", exc_info=exc)
            print(f"opso: error: {_one_line(exc)}", file=sys.stderr)
            return exit_code_of(exc)
    except KeyboardInterrupt:
        print("opso: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


if __name__ == "__main__":
    sys.exit(main())
