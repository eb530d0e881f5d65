"""BirdNET in the pipeline: the model (:mod:`.model`), its windows (:mod:`.windows`) and the species
it may report at a place and week (:mod:`.species`). The stage is :mod:`pipelines.stages.birdnet`."""
