import pandas as pd
import pytest

from opso_core.data_selection import resample, upsample
from opso_core.errors import OpsoValueError


def test_upsample_categorical():
    df = pd.DataFrame({"Labels": ["a", "a", "a", "a", "b"], "x": range(5)})
    out = upsample(df, random_state=0)
    assert out.Labels.value_counts().to_dict() == {"a": 4, "b": 4}
    with pytest.raises(OpsoValueError):
        upsample(df, label_column="nope")


def test_resample_one_hot():
    df = pd.DataFrame({"a": [1, 1, 1, 1, 0], "b": [0, 0, 0, 0, 1]}, index=list("pqrst"))
    out = resample(df, n_samples_per_class=3, random_state=1)
    assert out.a.sum() == 3 and out.b.sum() == 3
    assert list(out.index[-3:]) == ["t", "t", "t"]
    kept = resample(df, n_samples_per_class=2, upsample=False, random_state=1)
    assert kept.a.sum() == 2 and kept.b.sum() == 1
