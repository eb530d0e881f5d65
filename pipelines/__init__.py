"""pipelines: opso's distributed batch pipeline (Dask). Stage functions live in noun-named modules;
``cli.py`` is the ``opso`` command and the only place that configures logging."""
