"""docs/configuration.md names every configuration key with its real default."""

from pathlib import Path

import pytest
import yaml
from pydantic_core import PydanticUndefined

from pipelines.config import (
    BirdnetConfig,
    BirdnetLocation,
    ClipConfig,
    ClusterConfig,
    CnnModelConfig,
    InputConfig,
    LinearConfig,
    LocalizationConfig,
    OutputConfig,
    RibbitSpecies,
    RunConfig,
    SpectrogramConfig,
)

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"
SECTIONS = {"input": InputConfig, "output": OutputConfig, "clips": ClipConfig, "spectrogram": SpectrogramConfig,
            "ribbit": RibbitSpecies, "cnn": CnnModelConfig, "birdnet": BirdnetConfig, "birdnet.species": BirdnetLocation,
            "linear": LinearConfig, "localization": LocalizationConfig,
            "cluster": ClusterConfig}


def documented_keys() -> dict[str, dict[str, str]]:
    tables, section = {}, None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            tables[section] = {}
        elif section and line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tables[section][cells[0].strip("`")] = cells[2]
    return tables


def test_every_section_is_documented():
    assert set(documented_keys()) == set(RunConfig.model_fields) | set(SECTIONS)


@pytest.mark.parametrize("section", SECTIONS)
def test_keys_and_defaults(section):
    model = SECTIONS[section]
    docs = documented_keys()[section]
    keys = {field.alias or name: field for name, field in model.model_fields.items()}  # as written in YAML
    assert set(docs) == set(keys), f"{section}: documented {sorted(docs)}"
    for name, field in keys.items():
        cell = docs[name].replace("`", "")
        if field.default is PydanticUndefined and field.default_factory is None:
            assert cell == "required", f"{section}.{name}"
            continue
        default = field.default_factory() if field.default_factory is not None else field.default
        if isinstance(default, tuple):
            default = list(default)
        assert yaml.safe_load(cell) == default, f"{section}.{name}: docs say {cell!r}, the model {default!r}"
