"""Exit codes of the ``opso`` command (standard library only, so the command can start light).

=====  ==========================================================================================
code   meaning
=====  ==========================================================================================
0      the run is complete (files that could not be read are listed in ``failures.parquet``)
1      the run ended but is incomplete: some tasks failed (run the same command again to retry
       them), or no clip could be analysed at all (no file held readable audio: failures.parquet
       says why; a rerun cannot help until the input is fixed)
2      a user error found before any work: configuration, input, output or storage, or an
       output folder in use by another run (the message names its holder)
3      the cluster could not be started, reached or kept alive: a rejected job submission, an
       unreachable scheduler, no worker for ``cluster.no_workers_timeout_s``; the run is resumable
4      the storage failed during the run (an outage, a full disk, credentials that expired), for
       the driver or for tasks: ``run.json`` says ``failed`` or ``incomplete`` where it could still
       be written; the run is resumable
5      the run lost its output folder's lock (its driver was paused or cut off for longer than
       ``output.lease_s`` and another run took the folder over); it stopped writing
130    interrupted (Ctrl-C, or SIGTERM such as ``scancel`` of a driver job); the run is resumable
141    the output of ``opso status`` went to a pipe that closed early (``| head``); not an error
=====  ==========================================================================================
"""

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USER_ERROR = 2
EXIT_CLUSTER = 3
EXIT_STORAGE = 4
EXIT_LOCK_LOST = 5
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
