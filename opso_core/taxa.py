"""Scientific and common names of bird species in two naming systems: BirdNET and xeno-canto
(``opensoundscape.taxa``).

Names are kept normalised: scientific names lowercase and hyphenated (``setophaga-cerulea``),
common names lowercase without spaces or dashes (``ceruleanwarbler``). The lookups ignore case,
spaces and dashes in the name they are given.

The table is yours: opso downloads nothing. A small built-in table (14 North American birds) serves
examples and tests; give your own with :func:`set_species_table` or the ``OPSO_SPECIES_TABLE``
environment variable (a CSV with columns ``scientific, bn_common, xc_common``; other columns are
kept). A name missing from the table raises :class:`UnknownSpeciesError` (a ``KeyError``, as
OpenSoundscape's lookups raised).
"""

from __future__ import annotations

import os
from importlib import resources

from opso_core.errors import OpsoError, OpsoValueError

__all__ = [
    "SPECIES_TABLE_COLUMNS",
    "UnknownSpeciesError",
    "bn_common_to_sci",
    "common_to_sci",
    "get_species_list",
    "sci_to_bn_common",
    "sci_to_xc_common",
    "set_species_table",
    "species_table",
    "xc_common_to_sci",
]

#: Columns a species table must have.
SPECIES_TABLE_COLUMNS = ("scientific", "bn_common", "xc_common")

_TABLE = None  # the table in use, loaded on first lookup


class UnknownSpeciesError(OpsoError, KeyError):
    """A name that the species table does not hold."""

    def __str__(self):  # KeyError's str() would quote the whole message
        return str(self.args[0]) if self.args else ""


def _normalise_common(name: str) -> str:
    return str(name).lower().replace(" ", "").replace("-", "")


def _normalise_scientific(name: str) -> str:
    return "-".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def _checked(table):
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        raise OpsoValueError(f"a species table is a path or a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in SPECIES_TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise OpsoValueError(f"the species table lacks the columns {missing}; it needs {list(SPECIES_TABLE_COLUMNS)}")
    table = table.copy()
    table["scientific"] = table["scientific"].map(_normalise_scientific)
    for column in ("bn_common", "xc_common"):
        table[column] = table[column].map(lambda v: v if v != v else _normalise_common(v))  # keep NaN
    return table.reset_index(drop=True)


def set_species_table(table=None):
    """Use ``table`` for every lookup of this module.

    Parameters
    ----------
    table : str, os.PathLike, pandas.DataFrame or None
        A CSV path (local or any fsspec URL) or a DataFrame with the columns
        ``scientific, bn_common, xc_common``; ``None`` goes back to ``$OPSO_SPECIES_TABLE`` or the
        built-in table.

    Returns
    -------
    pandas.DataFrame
        The table now in use, names normalised.
    """
    global _TABLE
    import pandas as pd

    if table is None:
        table = os.environ.get("OPSO_SPECIES_TABLE") or None
    if table is None:
        with resources.files("opso_core.resources").joinpath("species_table.csv").open("r") as f:
            frame = pd.read_csv(f)
    elif isinstance(table, pd.DataFrame):
        frame = table
    else:
        from opso_core.storage import open_binary

        with open_binary(os.fspath(table)) as f:
            frame = pd.read_csv(f)
    _TABLE = _checked(frame)
    return _TABLE


def species_table():
    """The species table in use (a DataFrame with at least ``scientific, bn_common, xc_common``)."""
    return _TABLE if _TABLE is not None else set_species_table()


def get_species_list():
    """Scientific names (lowercase-hyphenated) of the species that have a BirdNET name, sorted."""
    table = species_table()
    return sorted(table.loc[table["bn_common"].notna(), "scientific"].tolist())


def _lookup(key_column: str, key: str, value_column: str):
    table = species_table()
    hits = table.loc[table[key_column] == key, value_column]
    if hits.empty:
        raise UnknownSpeciesError(f"{key!r} is not in the species table's {key_column!r} column; "
                                  "add it to your table (opso_core.taxa.set_species_table)")
    return hits.iloc[0]


def sci_to_bn_common(scientific):
    """BirdNET common name (lowercase, no spaces) of a scientific name (``genus-species``)."""
    return _lookup("scientific", _normalise_scientific(scientific), "bn_common")


def sci_to_xc_common(scientific):
    """xeno-canto common name (lowercase, no spaces) of a scientific name (``genus-species``)."""
    return _lookup("scientific", _normalise_scientific(scientific), "xc_common")


def xc_common_to_sci(common):
    """Scientific name (lowercase-hyphenated) of a xeno-canto common name (case, spaces, dashes ignored)."""
    return _lookup("xc_common", _normalise_common(common), "scientific")


def bn_common_to_sci(common):
    """Scientific name (lowercase-hyphenated) of a BirdNET common name (case, spaces, dashes ignored)."""
    return _lookup("bn_common", _normalise_common(common), "scientific")


def common_to_sci(common):
    """Scientific name of a BirdNET common name; same as :func:`bn_common_to_sci`."""
    return bn_common_to_sci(common)
