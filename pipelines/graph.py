"""``run_pipeline``, kept at this path for users' scripts (the driver lives in :mod:`pipelines.driver.run`)."""

from pipelines.driver.run import RunSummary, run_pipeline

__all__ = ["RunSummary", "run_pipeline"]
