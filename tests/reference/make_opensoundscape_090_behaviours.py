"""Record behaviours of the real OpenSoundscape 0.9.0 that opso must share (issue 23), as JSON.

Run it in the reference environment, never the project's:

    ../shared/tools/opensoundscape-0.9.0-venv.sh /tmp/oss-0.9.0
    /tmp/oss-0.9.0/bin/python tests/reference/make_opensoundscape_090_behaviours.py

It writes ``tests/reference/opensoundscape_0.9.0_behaviours.json`` (committed), which
``tests/opso_core/test_090_behaviours.py`` compares opso with: the names the package exposes at its
top level, the CNN's loss class, the built-in exception types 0.9.0 raises where opso raises its
own typed errors, what ``Audio.save`` writes into the metadata, and (key ``scenarios``) what 0.9.0
does in each scenario of ``behaviour_scenarios.py``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

OUT = Path(__file__).resolve().with_name("opensoundscape_0.9.0_behaviours.json")


sys.path.insert(0, str(Path(__file__).parent))
from behaviour_scenarios import SCENARIOS, builtin_bases, observe  # noqa: E402


def main() -> None:
    os.chdir("/")  # the package's own logging.py must not shadow the standard library's
    os.environ.setdefault("WANDB_MODE", "disabled")
    import opensoundscape
    from opensoundscape.ml import cnn_architectures
    from opensoundscape.ml.cnn import CNN

    out = {"version": opensoundscape.__version__,
           "top_level": sorted(n for n in vars(opensoundscape) if not n.startswith("_"))}

    def network():  # no pretrained weights: nothing to download
        return cnn_architectures.resnet18(2, weights=None)

    out["loss_cls"] = {"multi_target": CNN(network(), classes=[0, 1], sample_duration=2).loss_cls.__name__,
                       "single_target": CNN(network(), classes=[0, 1], sample_duration=2,
                                            single_target=True).loss_cls.__name__}
    try:
        CNN("not_an_architecture", classes=[0, 1], sample_duration=2)
    except Exception as exc:  # recording whatever 0.9.0 raises
        out["unknown_architecture"] = builtin_bases(exc)
    import tempfile

    import numpy as np
    from opensoundscape.audio import Audio

    with tempfile.TemporaryDirectory() as tmp:
        audio = Audio(np.full(16000, 0.01, dtype=np.float32), 16000)
        audio.metadata = {"title": "t", "artist": "x"}
        audio.save(f"{tmp}/a.wav")
        back = Audio.from_file(f"{tmp}/a.wav").metadata
        out["saved_metadata"] = {"keys": sorted(back), "opensoundscape_version": back["opensoundscape_version"]}
        audio.metadata = {"title": "", "artist": "x"}
        try:
            audio.save(f"{tmp}/b.wav")
            out["empty_tag"] = "saved"
        except Exception as exc:
            out["empty_tag"] = f"{type(exc).__name__}: {exc}"
    from opensoundscape.ml.sampling import ClassAwareSampler

    sampler = ClassAwareSampler(np.array([0, 0, 0, 1, 2, 2]), num_samples_cls=1)
    drawn = list(sampler)
    labels = [0, 0, 0, 1, 2, 2]
    out["class_aware_sampler"] = {"labels": labels, "len": len(sampler),
                                  "per_class": [sum(labels[i] == c for i in drawn) for c in range(3)]}
    out["scenarios"] = {}
    for name in SCENARIOS:
        with tempfile.TemporaryDirectory() as tmp:
            out["scenarios"][name] = observe(name, "opensoundscape", Path(tmp))
        print(name, out["scenarios"][name]["raised"] or "ok", file=sys.stderr)
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
