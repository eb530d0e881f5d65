"""What a run did, in numbers and in the lines ``opso run`` and ``opso status`` print.

:class:`RunSummary` is stored in ``run.json`` (its fields, under ``summary``) and read back by
``opso status``, so the end of a run and a later status show the same lines. Standard library only.
"""

from __future__ import annotations

import dataclasses

__all__ = ["MAX_MESSAGE_CHARS", "RunSummary", "elide"]


#: the error types of a task that failed because the storage did
STORAGE_ERROR_TYPES = ("StorageError", "RunStorageError")

#: longest error message kept in run.json and failures.parquet (characters; the middle is elided)
MAX_MESSAGE_CHARS = 2000


def elide(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, its middle replaced by ``…[N characters]…``."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 20)
    return f"{text[: keep * 2 // 3]}…[{len(text) - keep:,} characters]…{text[len(text) - keep // 3:]}"


@dataclasses.dataclass(slots=True)
class RunSummary:
    """What a run did; also stored in ``run.json``.

    ``wall_s`` is this session's time (s); ``total_wall_s`` adds the earlier sessions of a resumed
    run, so ``audio_hours_per_hour`` is the whole run's rate. ``dropped`` counts, per stage, what a
    stage left out on purpose and why (``{"localization": {"residual above residual_threshold_m": 4}}``);
    ``warnings`` counts inventory warnings by kind.
    """

    output_url: str
    status: str
    n_files: int
    n_files_ok: int
    n_files_truncated: int
    n_files_failed: int
    audio_hours: float
    n_clips: int
    n_clips_failed: int
    detections: dict[str, int]
    n_failures: int
    wall_s: float
    stage_wall_s: dict[str, float]
    n_files_no_clips: int = 0
    n_folders_unlisted: int = 0
    warnings: dict[str, int] = dataclasses.field(default_factory=dict)
    dropped: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    total_wall_s: float | None = None
    n_sessions: int = 1
    failure_overview: list[str] = dataclasses.field(default_factory=list)
    task_failures: dict[str, int] = dataclasses.field(default_factory=dict)  # error type -> failed tasks

    @property
    def storage_failed(self) -> bool:
        """True when tasks failed because the output storage did (the run is resumable once it works)."""
        return any(kind in STORAGE_ERROR_TYPES for kind in self.task_failures)

    @property
    def audio_hours_per_hour(self) -> float:
        wall_s = self.total_wall_s if self.total_wall_s is not None else self.wall_s
        return self.audio_hours / (wall_s / 3600) if wall_s > 0 else float("nan")

    @property
    def analysed_nothing(self) -> bool:
        """True when no file held readable audio (every clip is missing)."""
        return self.n_clips == 0 or self.n_clips_failed == self.n_clips

    def lines(self) -> list[str]:
        det = ", ".join(f"{k}: {v}" for k, v in self.detections.items()) or "none configured"
        files = (f"files:       {self.n_files} ({self.n_files_ok} ok, {self.n_files_truncated} truncated, "
                 f"{self.n_files_no_clips} shorter than one clip, {self.n_files_failed} failed)")
        if self.n_folders_unlisted:
            files += f"; {self.n_folders_unlisted} folder(s) could not be listed"
        lines = [f"status:      {self.status}", files]
        if self.warnings:
            lines.append("warnings:    " + ", ".join(f"{n} {what}" for what, n in self.warnings.items())
                         + " (inventory.parquet, column warning)")
        lines += [
            f"audio:       {self.audio_hours:.3f} hours in {self.n_clips} clips ({self.n_clips_failed} failed)",
            f"detections:  {det}",
        ]
        for stage, reasons in self.dropped.items():
            lines.append(f"dropped:     {stage}: " + ", ".join(f"{n} {why}" for why, n in reasons.items()))
        total = self.total_wall_s if self.total_wall_s is not None else self.wall_s
        sessions = f" over {self.n_sessions} sessions" if self.n_sessions > 1 else ""
        lines += [
            f"failures:    {self.n_failures} (see failures.parquet)",
            f"wall time:   {total:.1f} s{sessions} ({self.audio_hours_per_hour:,.0f} audio-hours per hour); "
            + ("this session " if self.n_sessions > 1 else "") + f"{self.wall_s:.1f} s: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_wall_s.items()),
            f"outputs:     {self.output_url}",
        ]
        return lines

    @classmethod
    def from_json(cls, output_url: str, summary: dict) -> RunSummary:
        """The summary stored in ``run.json`` (keys this version does not know are left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(output_url=output_url, **{k: v for k, v in summary.items() if k in names and k != "output_url"})
