"""Which of BirdNET's 6,522 classes a detector may report: all, a list, or those expected at a place and week.

A :class:`SpeciesFilter` is small and picklable (a task carries it); the place-and-week lists are
computed where they are needed, by BirdNET's range model (:func:`pipelines.birdnet.model.occurrence`,
cached per process), so a year of weeks never travels with the tasks.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd

from pipelines.birdnet import model
from pipelines.errors import ConfigError, StorageError

__all__ = ["YEAR_ROUND", "SpeciesFilter", "read_species_list", "species_filter", "species_list"]

#: BirdNET's week for "the whole year"
YEAR_ROUND = -1


@dataclasses.dataclass(frozen=True)
class SpeciesFilter:
    """The classes a detector may report.

    Attributes
    ----------
    kind : {"all", "list", "location"}
    classes : tuple of int
        ``list``: the model's class numbers the list names.
    lat, lon : float or None
        ``location``: degrees.
    week : "auto", int or None
        ``location``: 1-48, ``"auto"`` (each file's week from its start) or None (the whole year).
    min_occurrence : float
        ``location``: the range model's threshold.
    """

    kind: str = "all"
    classes: tuple[int, ...] = ()
    lat: float | None = None
    lon: float | None = None
    week: str | int | None = None
    min_occurrence: float = 0.03

    def mask(self, week: int = YEAR_ROUND) -> np.ndarray | None:
        """Classes allowed for a file of BirdNET week ``week`` (used with ``week: auto``), as a boolean
        array of shape (6522,); None when every class is."""
        if self.kind == "all":
            return None
        n = len(model.labels()[0])
        if self.kind == "list":
            out = np.zeros(n, dtype=bool)
            out[list(self.classes)] = True
            return out
        if self.week != "auto":
            week = YEAR_ROUND if self.week is None else int(self.week)
        return model.occurrence(self.lat, self.lon, week) >= np.float32(self.min_occurrence)

    def identity(self) -> str:
        """What the detections depend on, as JSON (a changed filter re-derives them from the scores)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def read_species_list(url: str, storage_options=None) -> tuple[int, ...]:
    """The model's class numbers named by a species list file: one ``Scientific name_Common name``
    (BirdNET's format) or scientific name per line; blank lines and ``#`` comments are skipped.

    Raises
    ------
    ConfigError
        The file is missing, empty, or names a species the model does not know (the message lists them).
    """
    import fsspec

    try:
        with fsspec.open(url, "rt", encoding="utf-8", **(storage_options or {})) as f:
            text = f.read()
    except FileNotFoundError as exc:
        raise ConfigError(f"birdnet species list not found: {url}") from exc
    except Exception as exc:  # storage backends raise their own types
        raise StorageError(f"cannot read the birdnet species list {url}: {type(exc).__name__}: {exc}") from exc
    scientific, common = model.labels()
    by_label = {f"{s}_{c}": i for i, (s, c) in enumerate(zip(scientific, common, strict=True))}
    by_name = {s: i for i, s in enumerate(scientific)}
    found, unknown = set(), []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        index = by_label.get(entry, by_name.get(entry.split("_", 1)[0]))
        if index is None:
            unknown.append(entry)
        else:
            found.add(index)
    if unknown:
        raise ConfigError(f"birdnet species list {url}: {len(unknown)} line(s) name no class of BirdNET "
                          f"{model.MODEL_NAME}, e.g. {unknown[:5]}; use its labels ('Scientific name_Common name')")
    if not found:
        raise ConfigError(f"birdnet species list {url} names no species")
    return tuple(sorted(found))


def species_filter(species, storage_options=None) -> SpeciesFilter:
    """The :class:`SpeciesFilter` of a ``birdnet`` entry's ``species`` (None, a path or URL, or a
    :class:`~pipelines.config.BirdnetLocation`); ``storage_options`` are fsspec's for a list's URL.

    Raises
    ------
    ConfigError
        A species list file is missing, empty or names unknown species, or a place and fixed week
        (or the whole year) for which the range model expects no species.
    """
    if species is None:
        return SpeciesFilter()
    if isinstance(species, str):
        return SpeciesFilter(kind="list", classes=read_species_list(species, storage_options))
    found = SpeciesFilter(kind="location", lat=float(species.lat), lon=float(species.lon), week=species.week,
                          min_occurrence=float(species.min_occurrence))
    if found.week != "auto" and not found.mask().any():  # birdnetlib would pass every species instead
        when = "the whole year" if found.week is None else f"week {found.week}"
        raise ConfigError(f"birdnet species: BirdNET's range model expects no species at lat {found.lat}, "
                          f"lon {found.lon} in {when} with min_occurrence {found.min_occurrence}; check the place "
                          "(latitude first) or lower min_occurrence")
    return found


def species_list(lat: float, lon: float, week: int | None = None, min_occurrence: float = 0.03) -> pd.DataFrame:
    """BirdNET's species list for a place and week, as ``birdnetlib``'s ``SpeciesList.return_list``.

    Parameters
    ----------
    lat, lon : float
        Degrees.
    week : int, optional
        1-48; None: the whole year.
    min_occurrence : float

    Returns
    -------
    pandas.DataFrame
        ``scientific_name, common_name, occurrence``, most likely first.
    """
    values = model.occurrence(lat, lon, YEAR_ROUND if week is None else int(week))
    keep = np.flatnonzero(values >= np.float32(min_occurrence))
    scientific, common = model.labels()
    table = pd.DataFrame({"scientific_name": [scientific[i] for i in keep], "common_name": [common[i] for i in keep],
                          "occurrence": values[keep]})
    return table.sort_values("occurrence", ascending=False, kind="stable").reset_index(drop=True)
