"""The ``opso`` command. This module is the only place that configures logging.

    opso run CONFIG.yaml [--cluster local|slurm|pbs|tcp://host:8786] [--overwrite] [--no-progress]
    opso status OUTPUT_URL
    opso demo [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from opso_core.errors import OpsoError

logger = logging.getLogger("opso")


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if verbosity < 1:  # Dask's own INFO lines drown the run's (the variable reaches worker processes too)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _run(config, cluster_kind=None, overwrite=False, progress=True):
    from pipelines.cluster import make_client
    from pipelines.graph import run_pipeline

    with make_client(config.cluster, kind=cluster_kind) as client:
        print(f"opso: Dask dashboard at {client.dashboard_link}", flush=True)
        summary = run_pipeline(config, client, overwrite=overwrite, progress=progress)
    for line in summary.lines():
        print(line)
    return summary


def _cmd_run(args) -> int:
    from pipelines.config import load_config

    config = load_config(args.config)
    summary = _run(config, cluster_kind=args.cluster, overwrite=args.overwrite, progress=not args.no_progress)
    return 0 if summary.status != "incomplete" else 1


def _cmd_status(args) -> int:
    from pipelines.graph import read_status

    status = read_status(args.output_url)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"run at {args.output_url}: {status['status']}")
    print(f"  started {status.get('started')}, finished {status.get('finished', '-')}")
    for key, value in (status.get("summary") or {}).items():
        print(f"  {key}: {value}")
    return 0


def _cmd_demo(args) -> int:
    from pipelines.demo import prepare_demo

    config = prepare_demo(args.out, seed=args.seed)
    print(f"opso demo: generated a sample archive in {config.input.url}", flush=True)
    summary = _run(config, overwrite=True, progress=not args.no_progress)
    print("\nRead the results with pandas:")
    print(f"  pd.read_parquet('{summary.output_url}/detections')")
    print(f"  xr.open_zarr('{summary.output_url}/spectrograms.zarr')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opso", description="Bioacoustic analysis of large recording archives.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline described by a YAML configuration")
    run.add_argument("config", help="YAML configuration file")
    run.add_argument("--cluster", default=None,
                     help="local, slurm, pbs, or a scheduler address (overrides cluster.kind)")
    run.add_argument("--overwrite", action="store_true", help="delete existing outputs and start over")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="show the state of a run from its run.json")
    status.add_argument("output_url")
    status.add_argument("--json", action="store_true", help="print run.json as it is")
    status.set_defaults(func=_cmd_status)

    demo = sub.add_parser("demo", help="generate a sample archive and run the whole pipeline locally")
    demo.add_argument("--out", default="opso-demo", help="output folder [default: ./opso-demo]")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(-1 if args.quiet else args.verbose)
    try:
        return args.func(args)
    except OpsoError as exc:
        print(f"opso: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("opso: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
