"""Dask clusters by kind: one ``open_cluster(settings)`` over a small registry, and the watch that
keeps a run from waiting forever.

``local`` starts a LocalCluster sized to the machine; ``slurm``/``pbs`` start dask-jobqueue clusters
whose jobs are one worker each (``cores = threads_per_worker``, ``memory = memory_limit``, thread
limits exported in the job script; queue, walltime, account, ... from ``cluster.jobqueue`` or Dask's
own jobqueue configuration); anything else is a scheduler address (``tcp://host:8786``).

:meth:`ClusterSession.check` is called by the driver every few seconds while tasks run. It

- fails the run (:class:`~pipelines.errors.ClusterError`, exit code 3) when a job submission was
  rejected and no worker is connected, with the scheduler's own message;
- submits replacement jobs for jobs that ended (walltime, ``scancel``, node failure), up to
  ``cluster.max_job_replacements``;
- stops the run when no worker has been connected for ``cluster.no_workers_timeout_s``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shlex
import shutil
import signal
import time

from opso_core.errors import MissingDependencyError, missing_dependency
from pipelines.config import JOBQUEUE_KINDS, ClusterConfig, check_cluster_kind
from pipelines.errors import ClusterError, ConfigError

__all__ = ["JOBQUEUE_CLUSTERS", "THREAD_LIMITS", "ClusterSession", "check_cluster_settings", "gpu_local_cluster",
           "job_script", "jobqueue_kwargs", "local_gpu_devices", "open_cluster", "visible_gpus"]

logger = logging.getLogger(__name__)

#: cluster kind -> "module:class" of its dask-jobqueue implementation (imported lazily)
JOBQUEUE_CLUSTERS = {"slurm": "dask_jobqueue:SLURMCluster", "pbs": "dask_jobqueue:PBSCluster"}

#: numeric libraries start a thread per core by default; with one Dask thread per core that
#: oversubscribes the machine, so every worker (local process or batch job) gets these
THREAD_LIMITS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                 "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: most Dask threads per core of a local cluster (more only slows the machine down)
MAX_LOCAL_OVERSUBSCRIPTION = 4

#: Dask's worker profiler samples every thread's stack every 10 ms (for the dashboard's Profile
#: page); it took about 10 % of a spectrogram task's time, so opso's workers run without it unless
#: the user turns it on (DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=True)
_PROFILE_VAR = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def _worker_config() -> dict:
    """Dask settings for the workers opso starts."""
    if _PROFILE_VAR in os.environ:
        return {}
    return {"distributed.worker.profile.enabled": False}


def _jobqueue_class(kind: str):
    module, cls = JOBQUEUE_CLUSTERS[kind].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise missing_dependency("dask_jobqueue", "hpc") from exc


def jobqueue_kwargs(settings: ClusterConfig, kind: str) -> dict:
    """Keyword arguments for the dask-jobqueue cluster of ``kind``: one worker per job.

    ``cores`` = ``threads_per_worker``, ``processes`` = 1, ``memory`` = ``memory_limit`` (or the
    ``jobqueue.<kind>.memory`` of Dask's configuration), thread limits exported by the job script,
    then the user's ``cluster.jobqueue`` keys (queue, walltime, account, log_directory, ...).
    """
    import dask

    memory = settings.memory_limit or dask.config.get(f"jobqueue.{kind}.memory", None)
    kwargs = {"cores": settings.threads_per_worker, "processes": 1, "memory": memory,
              "scheduler_options": {"dashboard_address": settings.dashboard_address or "127.0.0.1:8787"}}
    user = dict(settings.jobqueue)
    prologue = [f"export {k}={v}" for k, v in THREAD_LIMITS.items()]
    if _worker_config():
        prologue.append(f"export {_PROFILE_VAR}=False")
    prologue += list(user.pop("job_script_prologue", None) or dask.config.get(f"jobqueue.{kind}.job-script-prologue",
                                                                              None) or [])
    kwargs["job_script_prologue"] = prologue
    if "scheduler_options" in user:
        kwargs["scheduler_options"] = {**kwargs["scheduler_options"], **user.pop("scheduler_options")}
    if kind == "slurm" and settings.gpus not in ("auto", 0):  # one GPU per job, its worker a GPU worker
        directives = list(user.pop("job_extra_directives", None)
                          or dask.config.get("jobqueue.slurm.job-extra-directives", None) or [])
        asks_gpu = any(d.strip().startswith(("--gpus", "-G")) or (d.strip().startswith("--gres") and "gpu" in d)
                       for d in directives)
        if not asks_gpu:
            directives.append("--gres=gpu:1")
        kwargs["job_extra_directives"] = directives
        worker_args = list(user.pop("worker_extra_args", None)
                           or dask.config.get("jobqueue.slurm.worker-extra-args", None) or [])
        kwargs["worker_extra_args"] = _with_gpu_resource(worker_args)
    kwargs.update(user)
    return kwargs


def _with_gpu_resource(worker_args: list) -> list:
    """``dask worker`` arguments with ``GPU=1`` among its ``--resources`` (added to the user's own
    ``--resources`` value, since a second ``--resources`` would replace the first)."""
    args = [str(a) for a in worker_args]
    for i, arg in enumerate(args):
        if arg == "--resources" and i + 1 < len(args):
            if "GPU=" not in args[i + 1]:
                args[i + 1] += ",GPU=1"
            return args
        if arg.startswith("--resources="):
            if "GPU=" not in arg:
                args[i] = arg + ",GPU=1"
            return args
    return [*args, "--resources", "GPU=1"]


def job_script(settings: ClusterConfig, kind: str, scheduler_address: str = "tcp://scheduler:8786") -> str:
    """The batch script one worker job of ``kind`` runs (as dask-jobqueue writes it)."""
    kwargs = {k: v for k, v in jobqueue_kwargs(settings, kind).items() if k != "scheduler_options"}
    return _jobqueue_class(kind).job_cls(scheduler=scheduler_address, name="opso-worker", **kwargs).job_script()


def check_cluster_settings(settings: ClusterConfig, kind: str | None = None) -> str:
    """Check everything about the cluster that can be known without starting it; returns the kind.

    Raises
    ------
    ConfigError
        Unknown kind or address; for slurm/pbs: no ``n_workers`` or memory, ``cluster.jobqueue``
        keys that dask-jobqueue does not know, dask-jobqueue not installed.
    ClusterError
        The batch system's submit command (``sbatch``, ``qsub``) is not on the PATH.
    """
    try:
        kind = check_cluster_kind(kind or settings.kind)
    except ValueError as exc:
        raise ConfigError(f"cluster.kind: {exc}") from None
    if kind == "local":
        local_gpu_devices(settings)  # raises on an impossible number of GPUs
    elif kind == "slurm" and settings.gpus not in ("auto", 0, 1):
        raise ConfigError(f"cluster.gpus: {settings.gpus} GPUs per slurm job; a job's one worker drives one GPU: "
                          "set gpus: 1 and n_workers to the number of GPUs to use")
    elif kind == "pbs" and settings.gpus not in ("auto", 0):
        raise ConfigError("cluster.gpus: on pbs, ask for the GPU with your site's directive and make the worker a "
                          "GPU worker: cluster.jobqueue: {job_extra_directives: ['-l select=1:ngpus=1'], "
                          "worker_extra_args: ['--resources', 'GPU=1']} (the directive's form varies by site)")
    if kind == "local" and settings.n_workers is not None:
        threads = settings.n_workers * settings.threads_per_worker
        if threads > MAX_LOCAL_OVERSUBSCRIPTION * _cpu_count():
            raise ConfigError(f"cluster.n_workers: {settings.n_workers} local workers of {settings.threads_per_worker} "
                              f"thread(s) on a machine with {_cpu_count()} cores; a local cluster takes at most "
                              f"{MAX_LOCAL_OVERSUBSCRIPTION} threads per core (null: one worker per core)")
    if kind not in JOBQUEUE_KINDS:
        return kind
    example = (f"e.g. cluster: {{kind: {kind}, n_workers: 4, threads_per_worker: 2, memory_limit: 8GiB, "
               "jobqueue: {queue: normal, walltime: '02:00:00'}}")
    if settings.n_workers is None:
        raise ConfigError(f"cluster.n_workers: set the number of {kind} jobs to keep running ({example})")
    try:
        cluster_cls = _jobqueue_class(kind)
    except MissingDependencyError as exc:
        raise ConfigError(str(exc)) from None
    if not jobqueue_kwargs(settings, kind)["memory"]:
        raise ConfigError(f"cluster.memory_limit: set the memory of one {kind} job ({example})")
    try:  # builds the job script as dask-jobqueue will, so unknown keys and bad values show here
        job_script(settings, kind)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cluster.jobqueue: dask-jobqueue refuses these settings: {exc}") from None
    submit = shlex.split(cluster_cls.job_cls.submit_command)[0]
    if shutil.which(submit) is None:
        raise ClusterError(f"cluster kind {kind!r} submits jobs with {submit!r}, which is not on the PATH here; "
                           f"run opso on a login node of the {kind.upper()} cluster")
    return kind


class _SubmissionLog:
    """Job submissions of a dask-jobqueue cluster, as its jobs report them (on the cluster's loop)."""

    def __init__(self):
        self.submitted = 0
        self.errors: list[str] = []
        self.failed_jobs: list = []  # jobs whose submission failed: they will never connect


def _tracked_job_class(base, log: _SubmissionLog):
    """A subclass of dask-jobqueue's job class that records each submission and its failure.

    dask-jobqueue submits from a background task, so a rejected ``sbatch`` only shows as an
    asyncio "exception was never retrieved" and the run would wait forever; here the message is
    kept for :meth:`ClusterSession.check` instead. The job object then counts as started (with no
    job id, so closing it cancels nothing), as the cluster expects of every started job.
    """
    from distributed.core import Status

    class TrackedJob(base):
        async def start(self):
            log.submitted += 1
            try:
                await super().start()
            except Exception as exc:  # the submit command's own message, whatever failed
                log.errors.append(_submission_message(exc))
                log.failed_jobs.append(self)
                self.status = Status.running

        async def close(self):
            await super().close()
            self.status = Status.closed

    TrackedJob.__name__ = TrackedJob.__qualname__ = base.__name__
    return TrackedJob


def _submission_message(exc: BaseException) -> str:
    text = str(exc)
    if "stderr:" in text:  # dask-jobqueue's RuntimeError: keep the batch system's own words
        text = text.split("stderr:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(lines) or type(exc).__name__


class ClusterSession:
    """A connected ``distributed.Client`` and the watch over its workers (see the module docstring)."""

    def __init__(self, client, kind: str, settings: ClusterConfig, cluster=None, submissions=None,
                 dashboard_host: str | None = None):
        self.client = client
        self.dashboard_host = dashboard_host
        self.kind = kind
        self.settings = settings
        self.cluster = cluster
        self.submissions = submissions
        self.no_workers_timeout_s = settings.default_no_workers_timeout_s(kind)
        self._last_worker_seen = time.monotonic()
        self._warned_errors = 0
        self._replacements_exhausted = False

    @property
    def dashboard_link(self) -> str:
        """The dashboard's URL; for a dashboard bound to this machine only, its loopback address (Dask's
        own link names the machine's network address, where it does not listen)."""
        if self.dashboard_host in _LOOPBACK:
            port = (self.client.scheduler_info(n_workers=0).get("services") or {}).get("dashboard")
            if port:
                host = f"[{self.dashboard_host}]" if ":" in self.dashboard_host else self.dashboard_host
                return f"http://{host}:{port}/status"
        return self.client.dashboard_link

    def n_workers(self) -> int:
        """Workers connected to the scheduler now."""
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def check(self) -> None:
        """Keep the cluster's workers coming; raise :class:`ClusterError` when the run cannot go on."""
        n = self.n_workers()
        now = time.monotonic()
        if n:
            self._last_worker_seen = now
        if self.submissions is not None:
            self._check_jobs(n)
        waited = now - self._last_worker_seen
        if not n and waited > self.no_workers_timeout_s:
            hint = (" (jobs may still be waiting in the queue, or dying at start: see their logs)"
                    if self.kind in JOBQUEUE_KINDS else "")
            raise ClusterError(f"no Dask worker has been connected for {waited:.0f} s "
                               f"(cluster.no_workers_timeout_s){hint}; run the same command again to resume")

    def _check_jobs(self, n_connected: int) -> None:
        log = self.submissions
        if len(log.errors) > self._warned_errors:
            message = log.errors[-1]
            if not n_connected:
                raise ClusterError(f"the {self.kind} job submission failed: {message}")
            logger.warning("a %s job submission failed (%d of %d): %s", self.kind, len(log.errors), log.submitted,
                           message)
            self._warned_errors = len(log.errors)
        target = self.settings.n_workers
        if n_connected >= target:
            return
        # jobs that failed to submit never connect, so the cluster would never replace them: forget them
        # as SpecCluster itself forgets lost workers, and let scale() submit new ones
        from distributed.core import Status

        failed = {id(job) for job in log.failed_jobs}
        for name, job in list(self.cluster.workers.items()):
            if id(job) in failed:
                job.status = Status.closed  # nothing was submitted, so nothing to cancel
                del self.cluster.workers[name]
        log.failed_jobs.clear()
        replacements = log.submitted - target
        if replacements >= self.settings.max_job_replacements:
            if not self._replacements_exhausted:
                logger.warning("%d of %d %s jobs are running and no more replacements are submitted "
                               "(cluster.max_job_replacements = %d)", n_connected, target, self.kind,
                               self.settings.max_job_replacements)
                self._replacements_exhausted = True
            return
        self.cluster.scale(jobs=target)  # re-submits jobs the cluster has seen end (after lost-worker-timeout)


@contextlib.contextmanager
def _sigint_deferred():
    """Start local worker processes with SIGINT blocked, and hold back a Ctrl-C until they are up.

    Worker processes (and the threads that start them later, e.g. a restart) inherit the blocked
    signal, so a Ctrl-C in the terminal reaches the driver only, which closes the cluster cleanly,
    instead of printing a traceback from every worker. A Ctrl-C during start-up is recorded and
    raised once the cluster can be closed. Yields a list that holds the signal if one came.
    """
    import multiprocessing.resource_tracker
    import threading

    received: list[int] = []
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield received
        return
    # starting the resource tracker unblocks SIGINT in the calling thread; start it before blocking
    multiprocessing.resource_tracker.ensure_running()
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


@contextlib.contextmanager
def open_cluster(settings: ClusterConfig, kind: str | None = None, gpu_work: bool = True):
    """A :class:`ClusterSession` for ``settings`` (``kind`` overrides ``settings.kind``).

    ``gpu_work``: the run has work for GPU workers (``RunConfig.gpu_work``); without it
    ``cluster.gpus: auto`` starts none, so a run with no CNN keeps every core for CPU workers.

    The cluster it started is closed on exit (its batch jobs cancelled); an external scheduler is
    left running.

    Raises
    ------
    ConfigError, ClusterError
        See :func:`check_cluster_settings`; ``ClusterError`` also when a scheduler address does not
        answer within ``cluster.connect_timeout_s``.
    """
    import dask
    from distributed import Client, LocalCluster

    kind = check_cluster_settings(settings, kind)
    if kind == "local":
        devices = local_gpu_devices(settings, gpu_work=gpu_work)
        n_workers = settings.n_workers or max(1, _cpu_count() // settings.threads_per_worker - len(devices))
        dashboard = settings.dashboard_address or "127.0.0.1:0"
        host = dashboard.rpartition(":")[0]
        kwargs = dict(n_workers=n_workers, threads_per_worker=settings.threads_per_worker,
                      processes=settings.processes, dashboard_address=dashboard,
                      worker_dashboard_address=f"{host}:0" if host else ":0")
        if settings.processes:
            kwargs["env"] = dict(THREAD_LIMITS)
        if settings.memory_limit:
            kwargs["memory_limit"] = settings.memory_limit
        with _sigint_deferred() as interrupted, dask.config.set(_worker_config()):
            cluster = gpu_local_cluster(kwargs, devices) if devices else LocalCluster(**kwargs)
            client = Client(cluster)
        with cluster, client:
            if interrupted:
                raise KeyboardInterrupt
            try:
                yield ClusterSession(client, kind, settings, cluster, dashboard_host=host)
            except KeyboardInterrupt:
                _quiet_workers(client)  # closing now makes workers log about the scheduler going away
                raise
    elif kind in JOBQUEUE_KINDS:
        log = _SubmissionLog()
        cluster_cls = _jobqueue_class(kind)
        kwargs = jobqueue_kwargs(settings, kind)
        kwargs["job_cls"] = _tracked_job_class(cluster_cls.job_cls, log)
        with cluster_cls(**kwargs) as cluster:
            logger.info("submitting %d %s jobs; job script:\n%s", settings.n_workers, kind, cluster.job_script())
            cluster.scale(jobs=settings.n_workers)
            with Client(cluster) as client:
                dashboard = kwargs["scheduler_options"].get("dashboard_address") or ""
                yield ClusterSession(client, kind, settings, cluster, submissions=log,
                                     dashboard_host=dashboard.rpartition(":")[0])
    else:
        try:
            client = Client(kind, timeout=settings.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {kind}: {exc}") from None
        with client:
            yield ClusterSession(client, kind, settings)


def _quiet_worker_logs() -> None:
    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _quiet_workers(client) -> None:
    """Raise the workers' log level before an interrupted run closes its local cluster."""
    try:
        client.run(_quiet_worker_logs)
    except Exception as exc:  # best effort: the cluster is being closed anyway
        logger.debug("could not quiet the workers' logs: %s", exc)


def visible_gpus() -> list[str]:
    """The NVIDIA GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries: that variable's
    entries when it is set (``""`` or ``-1``: none), else one per GPU the driver lists in
    ``/proc/driver/nvidia/gpus`` (no GPU library is imported). Empty without an NVIDIA driver."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        entries = [d.strip() for d in listed.split(",") if d.strip()]
        return [] if not entries or entries[0] == "-1" else entries
    try:
        return [str(i) for i in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
    except OSError:
        return []


def local_gpu_devices(settings: ClusterConfig, gpu_work: bool = True) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each GPU worker a local cluster starts (one per GPU).

    ``cluster.gpus: auto`` takes every visible GPU (:func:`visible_gpus`) when the run has ``gpu_work``
    (none with ``processes: false``, whose workers share the driver's process); a number takes that
    many of them. A number on a machine
    that shows none starts that many GPU workers anyway, devices ``0``, ``1``, ... (logged: their CNN
    tasks run on the CPU), so a GPU layout can be tried out anywhere.

    Raises
    ------
    ConfigError
        More GPUs asked for than are visible, or GPUs with ``processes: false``.
    """
    if settings.gpus == "auto":
        return visible_gpus() if settings.processes and gpu_work else []
    visible = visible_gpus()
    if settings.gpus and not settings.processes:
        raise ConfigError("cluster.gpus: GPU workers need their own processes (processes: true); each sees only "
                          "its GPU")
    if visible and settings.gpus > len(visible):
        raise ConfigError(f"cluster.gpus: {settings.gpus} GPUs asked for, {len(visible)} visible here "
                          f"(CUDA_VISIBLE_DEVICES or /proc/driver/nvidia/gpus)")
    if settings.gpus and not visible:
        logger.warning("cluster.gpus: %d, but no NVIDIA GPU is visible here: the %d GPU workers run their CNN tasks "
                       "on the CPU", settings.gpus, settings.gpus)
        return [str(i) for i in range(settings.gpus)]
    return visible[: settings.gpus]


def gpu_local_cluster(local_kwargs: dict, devices: list[str]):
    """A cluster on this machine like ``LocalCluster(**local_kwargs)`` (its CPU workers), plus one
    worker per entry of ``devices``: a process whose ``CUDA_VISIBLE_DEVICES`` is that GPU alone (so
    ``cuda``/``cuda:0`` is its own GPU), with the Dask resource ``GPU=1``, as ``dask-cuda``'s
    LocalCUDACluster starts them. Built from Dask's public ``SpecCluster``; workers are named
    ``cpu-<i>`` and ``gpu-<i>``."""
    from distributed import Nanny, Scheduler, SpecCluster
    from distributed.worker_memory import parse_memory_limit

    host = "127.0.0.1"  # as LocalCluster: scheduler and workers on the loopback; the dashboard where asked
    n_total = local_kwargs["n_workers"] + len(devices)
    memory = local_kwargs.get("memory_limit") or parse_memory_limit("auto", 1, n_total, logger=logger)  # as LocalCluster
    options = {"nthreads": local_kwargs["threads_per_worker"], "host": host, "memory_limit": memory,
               "dashboard_address": local_kwargs["worker_dashboard_address"], "dashboard": True,
               "silence_logs": logging.WARNING, "env": dict(local_kwargs.get("env", {}))}
    workers = {f"cpu-{i}": {"cls": Nanny, "options": dict(options)} for i in range(local_kwargs["n_workers"])}
    for i, device in enumerate(devices):
        workers[f"gpu-{i}"] = {"cls": Nanny, "options": {**options, "resources": {"GPU": 1},
                                                         "env": {**options["env"], "CUDA_VISIBLE_DEVICES": device}}}
    scheduler = {"cls": Scheduler, "options": {"host": host, "dashboard_address": local_kwargs["dashboard_address"]}}
    logger.info("local cluster: %d CPU worker(s) and %d GPU worker(s) (CUDA_VISIBLE_DEVICES %s)",
                local_kwargs["n_workers"], len(devices), ", ".join(devices))
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.WARNING, name="opso-local")


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1
