"""Exit codes of the ``opso`` command (standard library only, so the command can start light).

=====  ==========================================================================================
code   meaning
=====  ==========================================================================================
0      the run is complete (files that could not be read are listed in ``failures.parquet``)
1      the run ended but is incomplete: some tasks failed, or no file held readable audio;
       run the same command again to retry what is missing
2      a user error found before any work: configuration, input, output or storage
3      the cluster could not be started, reached or kept alive: a rejected job submission, an
       unreachable scheduler, no worker for ``cluster.no_workers_timeout_s``; the run is resumable
130    interrupted (Ctrl-C, or SIGTERM such as ``scancel`` of a driver job); the run is resumable
=====  ==========================================================================================
"""

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_USER_ERROR = 2
EXIT_CLUSTER = 3
EXIT_INTERRUPTED = 130
