"""The driver: checks, inventory, clip index, then the registered stages (:mod:`pipelines.stages`) phase by
phase (plan, submit, wait), the run summary and ``run.json``. It names no stage kind."""
