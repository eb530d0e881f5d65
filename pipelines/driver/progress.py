"""Progress of a run's stages: bars on a terminal, one log line every few seconds elsewhere.

A SLURM output file or a log collector gets ``progress: spectrograms 12/40, ribbit 10/40 chunks
(28 %), 25 s`` lines instead of tqdm's carriage-return stream.
"""

from __future__ import annotations

import logging
import sys
import time

__all__ = ["StageProgress"]

logger = logging.getLogger("pipelines.driver.progress")


class StageProgress:
    """Counts finished tasks per stage and shows them.

    Parameters
    ----------
    totals : dict
        ``{stage: number of tasks}``, in the order to show them.
    enabled : bool
        False shows nothing (``--no-progress``).
    interval_s : float
        Seconds between log lines when the output is not a terminal.
    stream : file, optional
        Where bars go (default ``sys.stderr``); bars only if it is a terminal.
    """

    def __init__(self, totals: dict[str, int], *, enabled: bool = True, interval_s: float = 10.0, stream=None):
        self.totals = dict(totals)
        self.done = dict.fromkeys(totals, 0)
        self.enabled = enabled and sum(totals.values()) > 0
        self.interval_s = interval_s
        self._started = self._last_line = time.monotonic()
        stream = stream or sys.stderr
        self._bars = {}
        if self.enabled and getattr(stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self._bars = {st: tqdm(total=n, desc=st, unit="task", file=stream) for st, n in totals.items()}

    def advance(self, stage: str, n: int = 1) -> None:
        """Count ``n`` finished tasks of ``stage``."""
        self.done[stage] += n
        if stage in self._bars:
            self._bars[stage].update(n)
        self.tick()

    def tick(self) -> None:
        """Log a line if the interval has passed (call it while waiting, too)."""
        now = time.monotonic()
        if self.enabled and not self._bars and now - self._last_line >= self.interval_s:
            self._last_line = now
            logger.info("progress: %s", self.line())

    def line(self) -> str:
        parts = ", ".join(f"{st} {self.done[st]}/{n}" for st, n in self.totals.items())
        total = sum(self.totals.values())
        share = 100 * sum(self.done.values()) / total if total else 100.0
        return f"{parts} tasks ({share:.0f} %), {time.monotonic() - self._started:.0f} s"

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        if self.enabled and not self._bars:
            logger.info("progress: %s", self.line())
