"""The output contract: where a run writes (:class:`OutputLocation`, fenced by the run's lease), the run
folder's names (:mod:`~pipelines.outputs.run_folder`), the table schemas (:mod:`~pipelines.outputs.tables`),
the Zarr store layout (:mod:`~pipelines.outputs.spectrogram_store`) and the readers
(:mod:`~pipelines.outputs.results`)."""

from pipelines.outputs.location import OutputLocation

__all__ = ["OutputLocation"]
