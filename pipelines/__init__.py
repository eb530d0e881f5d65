"""pipelines: opso's distributed batch pipeline (Dask).

- :mod:`pipelines.driver`: the run (checks, inventory, clip index, then the registered stages phase by
  phase, the summary, the cluster); it names no stage kind;
- :mod:`pipelines.stages`: one module per stage kind, registered by one line;
- :mod:`pipelines.outputs`: the output contract (where and how a run writes, the run folder's names,
  table schemas, the Zarr layout, readers);
- at the top: the configuration (:mod:`pipelines.config`), the ``opso`` command (:mod:`pipelines.cli`,
  the only place that configures logging) and the demo.
"""
