"""A stage kind written the way a contributor would add one (used by test_stage_registry.py): after
every detection, Raven selection tables, ``raven/part-<range>.txt``, 50 detections per task.

It is this module and one line in the registry; nothing else in the pipeline changes."""

from __future__ import annotations

import dataclasses

import pandas as pd

from pipelines.driver.tasks import Stage, task_ranges
from pipelines.outputs.run_folder import OutputName
from pipelines.stages.base import RANGE, Product, StageKind

STAGE = "raven"


@dataclasses.dataclass(frozen=True)
class RavenTask:
    def __call__(self, clip_range, detections: pd.DataFrame, location, needed=None) -> dict:
        lines = ["Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tBegin File\tClass\tScore"]
        for i, d in enumerate(detections.itertuples(index=False), start=clip_range.start + 1):
            lines.append(f"{i}\tSpectrogram 1\t1\t{d.start_time}\t{d.end_time}\t{d.file}\t{d._1}\t{d.score}")
        location.write_bytes(f"raven/part-{clip_range.name}.txt", ("\n".join(lines) + "\n").encode())
        return {"n_clips": len(clip_range), "n_ok": len(detections), "failures": [],
                "detections": {"raven:selections": len(detections)}}


class RavenKind(StageKind):
    name = "raven"
    phase = 2
    output_names = (OutputName("raven", rf"part-{RANGE}\.txt"),)

    def enabled(self, config) -> bool:
        return True

    def products(self, ctx):
        detections = tuple(f"detections:ribbit:{s.name}" for s in ctx.config.ribbit)
        return [Product("raven", STAGE, {"raven.per_task": 50}, inputs=detections, outputs=self.output_names)]

    def plan(self, ctx, products):
        from pipelines.outputs.results import read_detections

        detections = read_detections(ctx.location.url, ctx.location.storage_options)
        detections = detections.sort_values(["detector", "file", "start_time"]).reset_index(drop=True)
        return [Stage(STAGE, detections, task_ranges(len(detections), 50), RavenTask(), cpu_only=True)]

    def counters(self, config):
        return {"raven:selections": 0}


KIND = RavenKind()
