"""The ``opso`` command. This module is the only place that configures logging."""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger("opso")


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def _cmd_demo(args) -> int:
    from pipelines.demo import run_demo

    result = run_demo(args.out, seed=args.seed)
    print(f"opso demo: {result.n_files} files, {result.audio_hours:.2f} audio hours, "
          f"{result.n_clips} clips in {result.wall_s:.1f} s")
    print(f"  archive:          {result.archive_dir}")
    print(f"  spectrogram:      {result.spectrogram_png}")
    print(f"  clip table (CSV): {result.clip_table_csv}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opso", description="Bioacoustic analysis of large recording archives.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate a sample archive and analyse it locally")
    demo.add_argument("--out", default="opso-demo", help="output folder [default: ./opso-demo]")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(-1 if args.quiet else args.verbose)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
