"""The ``opso`` command. This module is the only place that configures logging.

    opso run CONFIG.yaml [--cluster local|slurm|pbs|tcp://host:8786] [--overwrite] [--steal-lock] [--no-progress]
                         [--dry-run | --plan-only]
    opso status OUTPUT_URL|CONFIG.yaml [--storage-options JSON] [--json]
    opso export OUTPUT_URL|CONFIG.yaml --format raven|audacity|kaleidoscope|csv --out DIR_OR_URL
                [--detector D] [--class C] [--only calibrated|reviewed-present] [--overwrite]
    opso review OUTPUT_URL|CONFIG.yaml [--host 127.0.0.1] [--port N] [--detector D] [--class C]
    opso calibrate OUTPUT_URL|CONFIG.yaml --target-precision 0.9 [--apply]
    opso search OUTPUT_URL|CONFIG.yaml --example FILE[:START-END] [--k 100] [--approximate] [--out TABLE]
    opso index OUTPUT_URL|CONFIG.yaml [--detector D]
    opso train-linear OUTPUT_URL|CONFIG.yaml [--labels CSV] --out MODEL.opso-linear
    opso demo [--out DIR] [--birdnet]
    opso --version

A user error ends with one ``opso: error: ...`` line and the exit code of
:mod:`pipelines.errors` (2: configuration, input, output or storage, or a folder in use by another
run; 3: cluster; 4: storage failed during the run; 5: the run lost its folder's lock); ``-v`` adds
the traceback. A run that ends incomplete exits with 1, Ctrl-C (or SIGTERM, e.g. ``scancel`` of a
driver job) with 130; either way the same command resumes it.

Logging: credentials never reach the log. Third-party clients' debug lines (botocore's signed
headers) are filtered by :class:`RedactingFilter`, which replaces the values of the run's storage
options and of the usual credential variables, and anything shaped like an access key or a
signature, with ``***``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys

# only the standard library at import time: worker processes re-import this module, and a Ctrl-C
# while the heavy modules load must still end in one line
from pipelines.exit_codes import (
    EXIT_BROKEN_PIPE,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STORAGE,
)

logger = logging.getLogger("opso")

EPILOG = """exit codes:
  0    the run is complete (unreadable files are listed in failures.parquet)
  1    the run is incomplete: failed tasks (run it again to retry them), or no readable audio (fix the input)
  2    configuration, input, output or storage error, or the output folder is in use by another
       run (nothing was started or deleted)
  3    cluster error: job submission rejected, scheduler unreachable, no workers; resumable
  4    the storage failed during the run; resumable once it works again
  5    the run lost its output folder's lock to another run and stopped writing
  130  interrupted (Ctrl-C, SIGTERM); resumable
  141  (opso status) the pipe it printed to closed early, e.g. `| head`; not an error
"""

#: environment variables whose values never appear in a log line
SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                    "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN")
#: storage-option keys whose values are secrets (at any depth)
SECRET_KEYS = ("key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
               "aws_session_token", "account_key", "sas_token", "client_secret", "credential", "private_key",
               "private_key_id", "refresh_token", "connection_string")
#: shortest value redacted wherever it appears as a word (shorter ones, e.g. a MinIO user "opso", would
#: blank out ordinary words; their use in request headers is caught by shape)
MIN_SECRET_CHARS = 8
_SECRET_SHAPES = [
    re.compile(r"(Credential=)[^/,\s]+"),  # the access key id in a SigV4 Authorization header
    re.compile(r"(Signature=)[0-9a-fA-F]+"),
    re.compile(r"((?:AccountKey|SharedAccessSignature|sig)=)[^;&\s'\"]+"),  # Azure connection strings, SAS URLs
    re.compile(r"((?:X-Amz-Security-Token|x-amz-security-token|X-Amz-Credential|X-Amz-Signature)['\"]?[:=]\s*['\"]?)"
               r"[^'\"&\s,}]+"),
    re.compile(r"(['\"](?:aws_access_key_id|aws_secret_access_key|aws_session_token)['\"]:\s*['\"])[^'\"]+"),
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
]


class RedactingFilter(logging.Filter):
    """Replace secrets in log records with ``***`` (see the module docstring)."""

    def __init__(self, secrets=()):
        super().__init__()
        self.secrets: list[str] = []
        self._words = None
        self.add(secrets)

    def add(self, secrets) -> None:
        """Also redact these values (those of at least :data:`MIN_SECRET_CHARS` characters)."""
        self.secrets = sorted({*self.secrets, *(str(s) for s in secrets if s and len(str(s)) >= MIN_SECRET_CHARS)},
                              key=len, reverse=True)
        self._words = (re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(re.escape(s) for s in self.secrets)
                                  + r")(?![A-Za-z0-9])") if self.secrets else None)

    def redact(self, text: str) -> str:
        if self._words is not None:
            text = self._words.sub("***", text)
        for shape in _SECRET_SHAPES:
            text = shape.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken log call: leave it to logging's own error report
            return True
        redacted = self.redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACTION = RedactingFilter()


def secrets_of(options) -> list[str]:
    """The secret values in a storage-options mapping (keys named like :data:`SECRET_KEYS`, at any depth)."""
    found = []
    if isinstance(options, dict):
        for key, value in options.items():
            if isinstance(value, dict | list):
                found += secrets_of(value)
            elif str(key).lower() in SECRET_KEYS and isinstance(value, str):
                found.append(value)
    elif isinstance(options, list):
        for value in options:
            found += secrets_of(value)
    return found


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    _REDACTION.add(os.environ.get(name) for name in SECRET_VARIABLES)
    for handler in logging.getLogger().handlers:
        if _REDACTION not in handler.filters:
            handler.addFilter(_REDACTION)
    if verbosity < 1:  # Dask's own INFO lines drown the run's (the variable reaches worker processes too)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        for name in ("distributed", "bokeh", "tornado", "dask_jobqueue", "asyncio"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _hide_secrets_of(config) -> None:
    """Add the configuration's storage-option secrets to the log filter."""
    _REDACTION.add(secrets_of(config.input.storage_options) + secrets_of(config.output.storage_options)
                   + [s for m in config.cnn for s in secrets_of(m.storage_options)])


def _quiet_shutdown() -> None:
    """After Ctrl-C, closing the cluster makes Dask log about the tasks it drops: not news to the user."""
    for name in ("distributed", "tornado", "asyncio", "dask_jobqueue"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _run(config, cluster_kind=None, overwrite=False, progress=True, steal_lock=False):
    from pipelines.config import JOBQUEUE_KINDS
    from pipelines.driver.cluster import open_cluster
    from pipelines.driver.preflight import check_run
    from pipelines.driver.run import run_pipeline

    _hide_secrets_of(config)
    preflight = check_run(config, cluster_kind=cluster_kind, overwrite=overwrite, steal_lock=steal_lock)
    try:
        with open_cluster(config.cluster, kind=preflight.cluster_kind, gpu_work=config.gpu_work) as session:
            if logging.getLogger().isEnabledFor(logging.INFO):  # not with -q
                print(f"opso: Dask dashboard at {session.dashboard_link}", flush=True)
            summary = run_pipeline(config, session.client, overwrite=overwrite, progress=progress,
                                   preflight=preflight, watch=session.check)
    except KeyboardInterrupt:
        _quiet_shutdown()
        raise
    finally:
        if preflight.lock is not None and preflight.cluster_kind in ("local", *JOBQUEUE_KINDS):
            preflight.lock.mark_quiesced(stopped=True)  # the cluster opso started is closed: no task runs on
        preflight.release()
    for line in summary.lines():
        print(line)
    return summary


def _exit_code(summary) -> int:
    overview = "".join(f"\n  {line}" for line in summary.failure_overview)
    if summary.status == "incomplete" and summary.storage_failed:
        print(f"opso: the storage failed during the run for some tasks (see failures.parquet); run the same command "
              f"again to retry them once it works{overview}", file=sys.stderr)
        return EXIT_STORAGE
    if summary.analysed_nothing:
        what = ("no input file held readable audio" if not summary.n_clips
                else f"all {summary.n_clips} clips failed")
        print(f"opso: no clip could be analysed: {what} (see failures.parquet){overview}", file=sys.stderr)
        return EXIT_INCOMPLETE
    if summary.status == "incomplete":
        print(f"opso: some tasks failed (see failures.parquet); run the same command again to retry them{overview}",
              file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def _cmd_run(args) -> int:
    from pipelines.config import load_config

    config = load_config(args.config)
    if args.plan_only:
        from pipelines.driver.plan_only import plan_lines

        print("\n".join(plan_lines(config, overwrite=args.overwrite)))
        return EXIT_OK
    if args.dry_run:
        from pipelines.driver.dry_run import plan_run

        print("\n".join(plan_run(config, overwrite=args.overwrite)))
        return EXIT_OK
    summary = _run(config, cluster_kind=args.cluster, overwrite=args.overwrite, progress=not args.no_progress,
                   steal_lock=args.steal_lock)
    return _exit_code(summary)


def _status_target(args) -> tuple[str, dict]:
    """(output URL, storage options) from a URL or a run configuration file."""
    from pipelines.errors import ConfigError

    options = _json_options(args.storage_options, "--storage-options")
    target = args.target
    if "://" not in target and target.lower().endswith((".yaml", ".yml")) and not os.path.isfile(target):
        raise ConfigError(f"configuration file not found: {target}")
    if os.path.isfile(target) and target.lower().endswith((".yaml", ".yml")):
        from pipelines.config import load_config

        config = load_config(target)
        _hide_secrets_of(config)
        return config.output.url, {**config.output.storage_options, **options}
    return target, options


def _cmd_status(args) -> int:
    from pipelines.errors import StorageError
    from pipelines.outputs.results import read_lock_holder, read_status, status_lines

    url, options = _status_target(args)
    _REDACTION.add(secrets_of(options))
    try:
        try:
            status = read_status(url, options)
        except StorageError:
            if not _has_lock(url, options):
                raise
            status = {}  # taken by a run that has not written run.json yet
        holder = read_lock_holder(url, options)
    except StorageError as exc:
        if "://" in url and not options and "credential" in str(exc).lower():
            raise StorageError(f"{exc} (give the storage options with --storage-options '{{...}}', or the run's "
                               "configuration file instead of its URL)") from None
        raise
    if args.json:
        print(json.dumps({**status, "lock": holder.to_json() if holder else None}, indent=2))
        return EXIT_OK
    for line in status_lines(url, status, holder):
        print(line)
    return EXIT_OK


def _input_options(args) -> dict:
    """The archive's storage options: ``--input-storage-options``, else the configuration file's."""
    options = _json_options(args.input_storage_options, "--input-storage-options")
    if not options and os.path.isfile(args.target) and args.target.lower().endswith((".yaml", ".yml")):
        from pipelines.config import load_config

        options = load_config(args.target).input.storage_options
    return options


def _json_options(text: str | None, flag: str) -> dict:
    """Storage options given as JSON on the command line."""
    from pipelines.errors import ConfigError

    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ConfigError(f"{flag} must be a JSON object, e.g. "
                          '\'{"client_kwargs": {"endpoint_url": "http://minio:9000"}}\'')
    return options


def _cmd_export(args) -> int:
    from pipelines.export import export_detections

    url, options = _status_target(args)
    out_options = _json_options(args.out_storage_options, "--out-storage-options")
    _REDACTION.add(secrets_of(options))
    _REDACTION.add(secrets_of(out_options))
    summary = export_detections(url, args.out, args.format, storage_options=options,
                                destination_storage_options=out_options, detectors=args.detector,
                                classes=args.class_name, overwrite=args.overwrite, only=args.only)
    what = "clips reviewed present" if args.only == "reviewed-present" else "detections"
    print(f"opso export: {summary.detections} {what} in {len(summary.files)} {args.format} file(s) "
          f"under {summary.destination}")
    return EXIT_OK


#: the review server's first port; the next ones are tried while a port is taken (unless --port is given)
REVIEW_PORT = 8765
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _review_server(args, app):
    """The review server on --host and --port (the first free of REVIEW_PORT and the 19 after it)."""
    from pipelines.errors import ConfigError
    from pipelines.review.server import ReviewServer

    ports = [args.port] if args.port is not None else range(REVIEW_PORT, REVIEW_PORT + 20)
    for port in ports:
        try:
            return ReviewServer(app, host=args.host, port=port, token=args.token)
        except OSError as exc:
            if isinstance(exc, socket.gaierror):
                raise ConfigError(f"review: --host {args.host} is not an address of this machine ({exc})") from None
            last = exc
    raise ConfigError(f"review: cannot listen on {args.host} port {ports[0] if len(ports) == 1 else 'any of '}"
                      f"{'' if len(ports) == 1 else f'{ports[0]}-{ports[-1]}'}: {last}; choose another with --port "
                      "(0: any free port)")


def _check_review_options(args) -> None:
    """The review command's numbers, before anything is read."""
    from pipelines.errors import ConfigError

    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"review: --port is 0 (any free port) to 65535, got {args.port}")
    if not 0 <= args.context_s <= 30:
        raise ConfigError(f"review: --context-s is 0 to 30 seconds, got {args.context_s:g}")
    if args.token is not None and len(args.token) < 8:
        raise ConfigError("review: --token needs at least 8 characters (leave it out for a random one)")


def _cmd_review(args) -> int:
    from pipelines.errors import ConfigError
    from pipelines.outputs.results import read_status
    from pipelines.review.media import ClipMedia
    from pipelines.review.queue import review_items
    from pipelines.review.server import ReviewApp

    _check_review_options(args)
    url, options = _status_target(args)
    input_options = _input_options(args)
    status = read_status(url, options)
    config = status.get("config") or {}
    input_url = str((config.get("input") or {}).get("url", ""))
    if not input_options and "://" in input_url and input_url.split("://")[0] == url.split("://")[0]:
        input_options = options  # the archive on the same storage as the run (one endpoint, one key)
    _REDACTION.add(secrets_of(options))
    _REDACTION.add(secrets_of(input_options))
    if args.clips:
        from pipelines.review.queue import table_items

        if not args.class_name or len(args.class_name) != 1:
            raise ConfigError("review --clips: name the one class you are looking for with --class")
        items = table_items(args.clips, args.class_name[0],
                            _json_options(args.clips_storage_options, "--clips-storage-options"))
    else:
        items = review_items(url, options, detectors=args.detector, classes=args.class_name, n_bins=args.bins,
                             per_bin=args.per_bin, seed=args.seed)
    media = ClipMedia(url, config, options, input_options, context_s=args.context_s)
    server = _review_server(args, ReviewApp(url, items, media, options))
    if args.host not in _LOCAL_HOSTS:
        print(f"opso review: warning: serving on {args.host}, not this machine only: whoever can reach it and has "
              "the address below (its token) can hear the archive's clips and write reviews", file=sys.stderr)
    n_classes = len(items.drop_duplicates(["detector", "class"]))
    how = f"from {args.clips}" if args.clips else f"{args.bins} score bins, up to {args.per_bin} clips each"
    print(f"opso review: {len(items)} clips of {n_classes} class(es) in {url} ({how})")
    print(f"  open {server.url}")
    print(f"  answers are saved at once in {url.rstrip('/')}/reviews/; Ctrl-C stops the server", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("opso review: stopped; every answer is saved (run the same command to continue)", file=sys.stderr)
    return EXIT_OK


def _cmd_search(args) -> int:
    from pipelines.embeddings.search import search

    url, options = _status_target(args)
    input_options = _input_options(args)
    _REDACTION.add(secrets_of(options))
    _REDACTION.add(secrets_of(input_options))
    table = search(url, args.example, args.k, detector=args.detector, storage_options=options,
                   input_storage_options=input_options or None, approximate=args.approximate)
    if args.out:
        from pipelines.outputs.location import OutputLocation

        folder, _, name = args.out.rpartition("/")
        target = OutputLocation(folder or ".", _json_options(args.out_storage_options, "--out-storage-options"))
        data = table.to_parquet(index=False) if name.endswith(".parquet") else table.to_csv(index=False).encode()
        target.write_bytes_unguarded(name, data)
        print(f"opso search: {len(table)} clips written to {args.out}")
    if args.show > 0:  # --show 0: the table only goes to --out
        shown = table.head(args.show).assign(file=table["file"].head(args.show).str.rsplit("/", n=1).str[-1])
        print(shown[["rank", "similarity", "file", "recorder", "start_time", "end_time", "example"]].to_string(
            index=False, float_format=lambda v: f"{v:.4f}"))
    return EXIT_OK


def _cmd_index(args) -> int:
    from pipelines.embeddings.index import build_index

    url, options = _status_target(args)
    _REDACTION.add(secrets_of(options))
    summary = build_index(url, args.detector, options)
    print(f"opso index: {summary.n_vectors:,} embeddings of {summary.detector} indexed in {summary.build_s:.1f} s "
          f"({summary.size_bytes / 1e6:.1f} MB): {summary.path}")
    return EXIT_OK


def _cmd_train_linear(args) -> int:
    from pipelines.embeddings.linear import train_linear
    from pipelines.outputs.location import OutputLocation

    url, options = _status_target(args)
    labels_options = _json_options(args.labels_storage_options, "--labels-storage-options")
    _REDACTION.add(secrets_of(options))
    model = train_linear(url, args.labels, detector=args.detector, classes=args.class_name, l2=args.l2,
                         test_fraction=args.test_fraction, seed=args.seed, storage_options=options,
                         labels_storage_options=labels_options)
    folder, _, name = args.out.rpartition("/")
    OutputLocation(folder or ".", _json_options(args.out_storage_options, "--out-storage-options")) \
        .write_bytes_unguarded(name, model.to_bytes())
    print(f"opso train-linear: {len(model.classes)} class(es) on the embeddings of {model.embedding}; model written "
          f"to {args.out}")
    for name_, figures in model.evaluation.items():
        held = (f"held-out {figures['n_test']}: ROC AUC {figures['auc']:.3f}, average precision "
                f"{figures['average_precision']:.3f}, precision {figures['precision_at_0_5']:.2f} and recall "
                f"{figures['recall_at_0_5']:.2f} at 0.5" if "auc" in figures else
                "too few labels to hold some out: no evaluation")
        print(f"  {name_}: {figures['n_present']} present, {figures['n_absent']} absent windows; {held}")
    print("Score the whole archive with it: add to the run's configuration\n"
          f"  linear:\n    - {{name: {_safe_name(model.classes[0])}, model: {args.out}, threshold: 0.5}}\n"
          "and run it again in the same folder (the stored embeddings are scored; no audio is read).")
    return EXIT_OK


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").lower() or "linear"


def _cmd_calibrate(args) -> int:
    from pipelines.errors import ConfigError
    from pipelines.review.calibrate_run import CALIBRATION_FILE, calibrate_run

    url, options = _status_target(args)  # a configuration file that is not there is named first
    config = None
    if os.path.isfile(args.target) and args.target.lower().endswith((".yaml", ".yml")):
        from pipelines.config import load_config

        config = load_config(args.target)
    if args.apply:
        if config is None:
            raise ConfigError("calibrate --apply runs the run again to re-derive its detections: give the run's "
                              "configuration file, not its URL")
        if not any(e.calibrated_thresholds for section in (config.ribbit, config.cnn, config.birdnet) for e in section):
            raise ConfigError(f"calibrate --apply: no detector of {args.target} has calibrated_thresholds: true; add it "
                              "to the entries whose calibrated thresholds the run should use")
    _REDACTION.add(secrets_of(options))
    table = calibrate_run(url, args.target_precision, options, seed=args.seed)
    print(f"opso calibrate: target precision {args.target_precision:g}; {CALIBRATION_FILE} written in {url}")
    for row in table.itertuples():
        if row.status != "ok":
            print(f"  {row.detector} / {row.class_name}: {row.message}")
            continue
        head = f"  {row.detector} / {row.class_name}: {row.n_reviews} reviews ({row.n_present} present)"
        print(f"{head}: threshold {row.threshold:.4g} [{row.threshold_low:.4g}, {row.threshold_high:.4g}], "
              f"precision {row.precision:.2f} [{row.precision_low:.2f}, {row.precision_high:.2f}], "
              f"recall {row.recall:.2f} [{row.recall_low:.2f}, {row.recall_high:.2f}], {row.n_above} clips above")
    if args.apply:
        print("opso calibrate: re-deriving the detections with these thresholds (from the stored scores, no audio "
              "read)", flush=True)
        return _exit_code(_run(config, progress=not args.no_progress))
    print("Apply them: set calibrated_thresholds: true on the detector entries in the run's configuration and run it "
          "again in the same folder (or opso calibrate CONFIG.yaml ... --apply): the detections are re-derived from "
          "the stored scores without reading audio.")
    return EXIT_OK


def _has_lock(url: str, options: dict) -> bool:
    from pipelines.outputs.results import read_lock_holder

    try:
        return read_lock_holder(url, options) is not None
    except Exception:  # the first error is the one to report
        return False


def _cmd_demo(args) -> int:
    from pipelines.demo import prepare_demo

    config = prepare_demo(args.out, seed=args.seed, birdnet=args.birdnet)
    print(f"opso demo: generated a sample archive in {config.input.url}", flush=True)
    summary = _run(config, overwrite=True, progress=not args.no_progress)
    print("\nRead the results with pandas:")
    print(f"  pd.read_parquet('{summary.output_url}/detections')")
    print(f"  pd.read_parquet('{summary.output_url}/scores/detector=ribbit:frog12')   # one detector at a time")
    print(f"  xr.open_zarr('{summary.output_url}/spectrograms.zarr')")
    if args.birdnet:
        print(f"  pd.read_parquet('{summary.output_url}/scores/detector=birdnet:birds')   # long: window, class, score")
        print(f"  xr.open_zarr('{summary.output_url}/embeddings.zarr/birdnet-birds')")
        print("The archive is synthetic (frogs, FM sweeps, clicks in noise): BirdNET finds few birds in it. For a real "
              "run, copy the birdnet entry of the demo's config.yaml into your configuration (docs/birdnet.md).")
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
    run.add_argument("--steal-lock", action="store_true",
                     help="take the output folder even from a run that still seems alive (for a run you know "
                          "is dead, e.g. on a node that was lost; its tasks stop writing)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    plans = run.add_mutually_exclusive_group()
    plans.add_argument("--dry-run", action="store_true",
                     help="say, per stage, what the run would keep, compute, recompute (naming the changed "
                          "settings) and remove in its output folder; starts no cluster, writes nothing")
    plans.add_argument("--plan-only", action="store_true",
                     help="--dry-run, then plan the run (the stored inventory, or every file's header read here) "
                          "and print its files, audio hours, clips and tasks per stage, the size of a task's "
                          "description and the driver's time and memory; starts no cluster, writes nothing")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", parents=[verbosity], help="show the state of a run from its run.json")
    status.add_argument("target", metavar="OUTPUT_URL|CONFIG", help="the run's output URL, or its configuration file")
    status.add_argument("--storage-options", default=None,
                        help='JSON for fsspec, e.g. \'{"client_kwargs": {"endpoint_url": "http://minio:9000"}}\'')
    status.add_argument("--json", action="store_true", help="print run.json as it is")
    status.set_defaults(func=_cmd_status)

    export = sub.add_parser("export", parents=[verbosity],
                            help="write a run's detections for Raven Pro, Audacity, Kaleidoscope or as one CSV")
    export.add_argument("target", metavar="OUTPUT_URL|CONFIG", help="the run's output URL, or its configuration file")
    export.add_argument("--format", required=True, choices=["raven", "audacity", "kaleidoscope", "csv"],
                        help="raven: a selection table per audio file; audacity: a label track per audio file; "
                             "kaleidoscope, csv: one CSV")
    export.add_argument("--out", required=True, help="destination folder or URL (s3://...)")
    export.add_argument("--detector", action="append", default=None,
                        help="only this detector, e.g. ribbit:frog12 or birdnet:birds (repeatable)")
    export.add_argument("--class", dest="class_name", action="append", default=None,
                        help="only this class (repeatable)")
    export.add_argument("--only", choices=["calibrated", "reviewed-present"], default=None,
                        help="calibrated: detections at or above their class's calibrated threshold (opso calibrate); "
                             "reviewed-present: the clips reviewers marked present (opso review) [default: every "
                             "detection]")
    export.add_argument("--overwrite", action="store_true",
                        help="replace export files of the same names in the destination (nothing else)")
    export.add_argument("--storage-options", default=None, help="JSON for fsspec, for the run's URL")
    export.add_argument("--out-storage-options", default=None, help="JSON for fsspec, for the destination")
    export.set_defaults(func=_cmd_export)

    calibrate = sub.add_parser("calibrate", parents=[verbosity],
                               help="per-class thresholds with a target precision, from the run's reviews")
    calibrate.add_argument("target", metavar="OUTPUT_URL|CONFIG", help="the run's output URL, or its configuration file")
    calibrate.add_argument("--target-precision", type=float, required=True, help="e.g. 0.9")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    calibrate.add_argument("--storage-options", default=None, help="JSON for fsspec, for the run's URL")
    calibrate.add_argument("--apply", action="store_true",
                           help="then run the run again (CONFIG needed): its entries with calibrated_thresholds: true "
                                "re-derive their detections from the stored scores with the new thresholds")
    calibrate.add_argument("--no-progress", action="store_true", help="with --apply: no progress bars or lines")
    calibrate.set_defaults(func=_cmd_calibrate)

    review = sub.add_parser("review", parents=[verbosity],
                            help="review a sample of a run's clips in the browser (present / absent / unsure)")
    review.add_argument("target", metavar="OUTPUT_URL|CONFIG", help="the run's output URL, or its configuration file")
    review.add_argument("--host", default="127.0.0.1",
                        help="address to listen on [default: 127.0.0.1, this machine only]; another opens the page "
                             "to the network (with a warning): use an SSH tunnel instead where you can")
    review.add_argument("--port", type=int, default=None,
                        help=f"port [default: the first free from {REVIEW_PORT}]; 0: any free port")
    review.add_argument("--token", default=None, help="the page's token [default: a new random one]")
    review.add_argument("--detector", action="append", default=None,
                        help="only this detector, e.g. ribbit:frog12 (repeatable)")
    review.add_argument("--class", dest="class_name", action="append", default=None,
                        help="only this class (repeatable); a BirdNET class named here is offered even without a "
                             "detection (by default BirdNET offers its detected classes)")
    review.add_argument("--clips", default=None, metavar="TABLE",
                        help="review these clips instead of a sample (a CSV or Parquet table with file, start_time, "
                             "end_time, e.g. opso search --out's), for the one class named with --class")
    review.add_argument("--clips-storage-options", default=None, help="JSON for fsspec, for --clips")
    review.add_argument("--bins", type=int, default=10, help="score bins per class [default: 10]")
    review.add_argument("--per-bin", type=int, default=5, help="clips drawn per bin [default: 5]")
    review.add_argument("--seed", type=int, default=0,
                        help="seed of the sample (the same seed gives every reviewer the same clips)")
    review.add_argument("--context-s", type=float, default=1.0, help="seconds of audio around each clip [default: 1]")
    review.add_argument("--storage-options", default=None, help="JSON for fsspec, for the run's URL")
    review.add_argument("--input-storage-options", default=None,
                        help="JSON for fsspec, for the archive [default: the configuration's, or the run URL's "
                             "when both are on one storage]")
    review.set_defaults(func=_cmd_review)

    search_cmd = sub.add_parser("search", parents=[verbosity],
                                help="the clips most similar to example clips, from the run's embeddings")
    search_cmd.add_argument("target", metavar="OUTPUT_URL|CONFIG", help="the run's output URL, or its configuration file")
    search_cmd.add_argument("--example", action="append", required=True, metavar="FILE[:START-END]",
                            help="an example clip (seconds; the whole file without a range), in the archive or not "
                                 "(repeatable: a clip's similarity is to its closest example)")
    search_cmd.add_argument("--k", type=int, default=100, help="clips to return [default: 100]")
    search_cmd.add_argument("--detector", default=None, help="whose embeddings, e.g. birdnet:birds [default: the "
                                                             "run's only store]")
    search_cmd.add_argument("--approximate", action="store_true",
                            help="use the run's approximate index (built by opso index) instead of a full scan")
    search_cmd.add_argument("--out", default=None, help="write the table here (.csv, or .parquet), local or s3://")
    search_cmd.add_argument("--show", type=int, default=20, help="rows printed; 0: none (with --out) [default: 20]")
    search_cmd.add_argument("--storage-options", default=None, help="JSON for fsspec, for the run's URL")
    search_cmd.add_argument("--input-storage-options", default=None, help="JSON for fsspec, for the examples' files")
    search_cmd.add_argument("--out-storage-options", default=None, help="JSON for fsspec, for --out")
    search_cmd.set_defaults(func=_cmd_search)

    index_cmd = sub.add_parser("index", parents=[verbosity],
                               help="build the approximate search index of a run's embeddings (pip install "
                                    "'opso[search]')")
    index_cmd.add_argument("target", metavar="OUTPUT_URL|CONFIG", help="the run's output URL, or its configuration file")
    index_cmd.add_argument("--detector", default=None, help="whose embeddings [default: the run's only store]")
    index_cmd.add_argument("--storage-options", default=None, help="JSON for fsspec, for the run's URL")
    index_cmd.set_defaults(func=_cmd_index)

    train = sub.add_parser("train-linear", parents=[verbosity],
                           help="fit a linear classifier on a run's embeddings from reviews or a labels table")
    train.add_argument("target", metavar="OUTPUT_URL|CONFIG", help="the run's output URL, or its configuration file")
    train.add_argument("--labels", default=None, metavar="CSV",
                       help="labels: file, start_time, end_time and class + label (present/absent, 1/0) or one 0/1 "
                            "column per class [default: the run's reviews]")
    train.add_argument("--out", required=True, help="the model file to write (.opso-linear), local or s3://")
    train.add_argument("--detector", default=None, help="whose embeddings [default: the run's only store]")
    train.add_argument("--class", dest="class_name", action="append", default=None,
                       help="only this class of the labels (repeatable)")
    train.add_argument("--l2", type=float, default=1e-2, help="L2 penalty on the standardised weights [default: 0.01]")
    train.add_argument("--test-fraction", type=float, default=0.2,
                       help="share of each class's labelled windows held out for the evaluation [default: 0.2]")
    train.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    train.add_argument("--storage-options", default=None, help="JSON for fsspec, for the run's URL")
    train.add_argument("--labels-storage-options", default=None, help="JSON for fsspec, for --labels")
    train.add_argument("--out-storage-options", default=None, help="JSON for fsspec, for --out")
    train.set_defaults(func=_cmd_train_linear)

    demo = sub.add_parser("demo", parents=[verbosity],
                          help="generate a sample archive and run the whole pipeline locally")
    demo.add_argument("--out", default="opso-demo", help="output folder [default: ./opso-demo]")
    demo.add_argument("--seed", type=int, default=0, help="seed of the synthetic archive")
    demo.add_argument("--birdnet", action="store_true",
                      help="also run a BirdNET detector (needs: pip install 'opso[birdnet]')")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars or progress lines")
    demo.set_defaults(func=_cmd_demo)
    return parser


_INTERRUPTED: list[int] = []


def _interrupt(signum, frame):
    """Ctrl-C, and SIGTERM (scancel of a driver job, docker stop, kill): clean up as for Ctrl-C. A second
    signal while the run cleans up (closing its cluster, releasing its lock) is ignored, so that it
    cannot break the clean-up into a traceback."""
    _INTERRUPTED.append(signum)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


#: longest word of an error message shown whole (characters); the middle of a longer one is elided
MAX_WORD_CHARS = 200
#: longest error line (characters)
MAX_LINE_CHARS = 4000
_LONG_WORD = re.compile(rf"\S{{{MAX_WORD_CHARS + 1},}}")


def _elide_words(text: str) -> str:
    from pipelines.driver.summary import elide

    return elide(_LONG_WORD.sub(lambda m: elide(m[0], MAX_WORD_CHARS), text), MAX_LINE_CHARS)


def _one_line(exc: BaseException) -> str:
    """The error as one line, long values elided (a 10 MB configuration value is not echoed)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        text = lines[0] if lines else type(exc).__name__
    else:
        text = f"{lines[0].rstrip(':')}: {'; '.join(lines[1:])}"
    return _REDACTION.redact(_elide_words(text))


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in tests)
        pass


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    verbose = args.verbose + args.verbose_top
    _configure_logging(-1 if (args.quiet or args.quiet_top) else verbose)
    try:
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread (main() called from another thread)
        previous = {}
    _INTERRUPTED.clear()
    try:
        from opso_core.errors import OpsoError
        from pipelines.errors import exit_code_of

        try:
            code = args.func(args)
            sys.stdout.flush()  # a closed pipe raises here, inside the handler below, not at exit
            return code
        except OpsoError as exc:
            if verbose:
                logger.error("traceback:", exc_info=exc)
            print(f"opso: error: {_one_line(exc)}", file=sys.stderr)
            return exit_code_of(exc)
    except KeyboardInterrupt:
        print("opso: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `opso status ... | head`: the reader has what it wanted
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        if not _INTERRUPTED:  # after an interrupt, the clean-up at exit (Dask's) must not be broken either
            for sig, handler in previous.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
