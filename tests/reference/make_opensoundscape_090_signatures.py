"""Write the public signatures of the real OpenSoundscape 0.9.0 (the seed's API reference) to JSON.

Run in a 0.9.0 reference environment (see make_opensoundscape_090_reference.py):

    /tmp/oss-0.9.0/bin/python tests/reference/make_opensoundscape_090_signatures.py

Writes ``tests/reference/opensoundscape_0.9.0_signatures.json``: for every public function, class and
public method defined in the modules below, its parameters (name, kind, default's repr or null).
``tests/opso_core/test_signatures.py`` compares opso_core's with them.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from reference_helpers import describe_signature

OUT = Path(__file__).with_name("opensoundscape_0.9.0_signatures.json")
MODULES = ["audio", "spectrogram", "annotations", "aru", "metrics", "ribbit", "signal_processing", "localization",
           "taxa", "utils", "data_selection", "sample", "ml.cnn", "ml.cnn_architectures", "ml.datasets",
           "ml.safe_dataset", "ml.loss", "ml.sampling", "ml.utils", "ml.cam", "preprocess.actions",
           "preprocess.preprocessors", "preprocess.utils", "preprocess.img_augment", "preprocess.tensor_augment"]


def main() -> None:
    os.environ.setdefault("WANDB_MODE", "disabled")
    out = {}
    for name in MODULES:
        module = importlib.import_module(f"opensoundscape.{name}")
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                out[f"{name}.{attr}"] = describe_signature(obj)
            elif inspect.isclass(obj):
                out[f"{name}.{attr}"] = describe_signature(obj.__init__)
                for method_name, method in sorted(vars(obj).items()):
                    if method_name.startswith("_"):
                        continue
                    if isinstance(method, (classmethod, staticmethod)):
                        method = method.__func__
                    if inspect.isfunction(method):
                        out[f"{name}.{attr}.{method_name}"] = describe_signature(method)
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}: {len(out)} signatures")


if __name__ == "__main__":
    main()
