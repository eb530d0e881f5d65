import pandas as pd
import pytest

from opso_core import taxa


@pytest.fixture(autouse=True)
def builtin_table(monkeypatch):
    monkeypatch.delenv("OPSO_SPECIES_TABLE", raising=False)
    taxa.set_species_table()
    yield
    taxa.set_species_table()


def test_builtin_table_round_trips():
    species = taxa.get_species_list()
    assert "setophaga-cerulea" in species and species == sorted(species)
    assert taxa.sci_to_bn_common("Setophaga cerulea") == "ceruleanwarbler"
    assert taxa.sci_to_xc_common("setophaga-cerulea") == "ceruleanwarbler"
    assert taxa.bn_common_to_sci("Cerulean Warbler") == "setophaga-cerulea"
    assert taxa.xc_common_to_sci("cerulean-warbler") == "setophaga-cerulea"
    assert taxa.common_to_sci("CERULEAN WARBLER") == "setophaga-cerulea"
    for sci in species:
        assert taxa.common_to_sci(taxa.sci_to_bn_common(sci)) == sci


def test_user_table_from_a_file_and_unknown_names(tmp_path, monkeypatch):
    path = tmp_path / "species.csv"
    pd.DataFrame({"scientific": ["Lithobates sylvaticus"], "bn_common": [None], "xc_common": ["Wood Frog"],
                  "group": ["frog"]}).to_csv(path, index=False)
    monkeypatch.setenv("OPSO_SPECIES_TABLE", str(path))
    table = taxa.set_species_table()
    assert list(table["scientific"]) == ["lithobates-sylvaticus"] and "group" in table.columns
    assert taxa.get_species_list() == []  # no BirdNET name
    assert taxa.xc_common_to_sci("wood frog") == "lithobates-sylvaticus"
    with pytest.raises(KeyError, match="not in the species table"):
        taxa.bn_common_to_sci("cerulean warbler")
    with pytest.raises(ValueError, match="lacks the columns"):
        taxa.set_species_table(pd.DataFrame({"scientific": ["a-b"]}))
