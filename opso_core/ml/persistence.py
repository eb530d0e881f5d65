"""Saving and loading models without running pickled code.

The default model file (``CNN.save(path)``) is a zip archive holding

- ``opso_model.json``: model class, architecture (a name from ``cnn_architectures`` and its
  arguments), classes, sample duration and shape, single_target, the preprocessor (class, sample
  duration, output shape, each action's parameters and bypass/augmentation flags) and the training
  settings (optimizer class and parameters, learning-rate schedule, epoch, loss history);
- ``weights.pt``: the network's ``state_dict``, read back with ``torch.load(weights_only=True)``,
  which only accepts tensors and plain containers.

Loading it constructs everything from the JSON description; nothing is unpickled: this module reads
the file (:func:`read_safe`) and builds the network and preprocessor; ``load_model`` then makes the
model with ``CNN.from_description``, so this module never imports :mod:`opso_core.ml.cnn`. A model pickled
whole (OpenSoundscape's own ``.model`` files, or ``save(..., pickle=True)``) loads only with
``load_model(path, allow_pickle=True)``, because unpickling runs code from the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from opso_core.errors import OpsoError, OpsoValueError

__all__ = ["FORMAT_NAME", "PickleNotAllowedError", "UnsafeToDescribeError", "build_network", "build_preprocessor",
           "check_description", "check_weights", "describe_preprocessor", "file_kind", "from_json_value", "is_opso_model_file",
           "read_description", "read_safe", "save_safe"]

FORMAT_NAME = "opso-model"
FORMAT_VERSION = 1
_JSON_NAME = "opso_model.json"
_WEIGHTS_NAME = "weights.pt"


class PickleNotAllowedError(OpsoError, PermissionError):
    """The file is a pickled model; loading it would run code from the file."""


class UnsafeToDescribeError(OpsoError, ValueError):
    """Part of the model (a custom architecture or action) cannot be described in JSON."""


def _json_value(value, where):
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, type) and issubclass(value, np.generic) or isinstance(value, np.dtype):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, tuple | list):
        return {"__tuple__": [_json_value(v, where) for v in value]} if isinstance(value, tuple) else \
            [_json_value(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v, where) for k, v in value.items()}
    raise UnsafeToDescribeError(f"{where} holds a {type(value).__name__}, which the safe model format cannot "
                                "store; save with pickle=True (loading then needs allow_pickle=True)")


def from_json_value(value):
    """A value of a model description as Python again (tuples and dtypes are tagged in the JSON)."""
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(from_json_value(v) for v in value["__tuple__"])
        if set(value) == {"__dtype__"}:
            return np.dtype(value["__dtype__"]).type
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value


_from_json = from_json_value


_MAGIC = ((b"RIFF", "a WAV audio file"), (b"RF64", "a WAV audio file"), (b"fLaC", "a FLAC audio file"),
          (b"OggS", "an Ogg audio file"), (b"ID3", "an MP3 audio file"), (b"\x89PNG", "a PNG image"),
          (b"%PDF", "a PDF document"))


def file_kind(source) -> str:
    """What a file that is not an opso model file is, in a few words (``"a WAV audio file"``,
    ``"a pickle"``, ``"a PyTorch file written by torch.save (a pickle)"``, ...), from its first bytes.

    Parameters
    ----------
    source : path, file-like or bytes
    """
    if isinstance(source, bytes | bytearray):
        head, data = bytes(source[:16]), source
    else:
        with contextlib.ExitStack() as stack:
            f = source if hasattr(source, "read") else stack.enter_context(open(source, "rb"))
            head, data = f.read(16), None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a pickle"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data) if data is not None else source) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return "a damaged zip archive"
        if any(n.endswith("data.pkl") for n in names):
            return "a PyTorch file written by torch.save (a pickle)"
        return f"a zip archive without {_JSON_NAME}"
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file (a model file is the zip archive CNN.save writes)"
    if not head:
        return "an empty file"
    return "not a model file"


def check_description(description) -> dict:
    """``description`` if it has the keys and types a model description needs.

    Parameters
    ----------
    description : dict
        A parsed ``opso_model.json``.

    Raises
    ------
    OpsoValueError
        It is not a model description, a key is missing or has the wrong type, or a newer opso wrote it.
    """
    def bad(what):
        return OpsoValueError(f"its description ({_JSON_NAME}) is damaged: {what}; save the model again with "
                              "CNN.save(path)")

    if not isinstance(description, dict) or description.get("format") != FORMAT_NAME:
        raise bad(f"it is not an {FORMAT_NAME} description")
    if description.get("format_version", 0) > FORMAT_VERSION:
        raise OpsoValueError(f"it was written by a newer opso (format {description['format_version']}); upgrade opso")
    kinds = {"classes": list, "sample_duration": int | float, "preprocessor": dict, "architecture": dict,
             "sample_shape": list, "training": dict}
    for key, kind in kinds.items():
        if not isinstance(description.get(key), kind):
            raise bad(f"{key!r} is missing or not a {kind.__name__ if hasattr(kind, '__name__') else 'number'}")
    pre = description["preprocessor"]
    if not isinstance(pre.get("class"), str) or not isinstance(pre.get("init"), dict) or \
            not isinstance(pre.get("actions"), dict):
        raise bad("the preprocessor needs 'class', 'init' and 'actions'")
    for name, action in pre["actions"].items():
        if not isinstance(action, dict) or not isinstance(action.get("params"), dict) or \
                not isinstance(action.get("bypass"), bool) or not isinstance(action.get("is_augmentation"), bool):
            raise bad(f"action {name!r} needs 'params', 'bypass' and 'is_augmentation'")
    if not isinstance(description["architecture"].get("name"), str):
        raise bad("the architecture has no name")
    return description


def read_description(source) -> dict:
    """The JSON description (classes, preprocessor, architecture; not the weights) of a model file.

    Parameters
    ----------
    source : path, file-like or bytes
        A file written by :func:`save_safe`.

    Raises
    ------
    PickleNotAllowedError
        The file is a pickled model (OpenSoundscape's ``.model``, ``save(..., pickle=True)``).
    OpsoValueError
        Anything else that is not a model in opso's safe format (an audio file, a damaged
        description), with a message saying what the file is.
    """
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    try:
        with zipfile.ZipFile(source) as zf:
            text = zf.read(_JSON_NAME)
    except (zipfile.BadZipFile, KeyError) as exc:
        if hasattr(source, "seek"):
            source.seek(0)
        kind = file_kind(source)
        if "pickle" in kind:
            raise PickleNotAllowedError(f"the file is {kind}, not a model in opso's safe format") from exc
        what = "the file is not" if kind == "not a model file" else f"the file is {kind}, not"
        raise OpsoValueError(f"{what} a model in opso's safe format (written by CNN.save(path))") from exc
    try:
        description = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OpsoValueError(f"its description ({_JSON_NAME}) is not valid JSON ({exc}); save the model again "
                             "with CNN.save(path)") from exc
    return check_description(description)


def describe_preprocessor(preprocessor) -> dict:
    """The JSON description of a preprocessor: class, ``init`` arguments and each action's
    ``params``, ``bypass`` and ``is_augmentation`` (``overlay`` left out: its table is training data).

    Raises
    ------
    UnsafeToDescribeError
        The class is not one of opso's, or an action is not the class's own.
    """
    from opso_core.preprocess import preprocessors as pp

    cls = type(preprocessor)
    if getattr(pp, cls.__name__, None) is not cls:
        raise UnsafeToDescribeError(f"preprocessor class {cls.__name__} is not one of opso's; save with pickle=True")
    reference = cls(**_preprocessor_init_kwargs(preprocessor))
    actions = {}
    for name, action in preprocessor.pipeline.items():
        if name == "overlay":
            continue  # overlay_df is training data, not model state
        if name not in reference.pipeline.index or not pp.is_standard_action(action, reference.pipeline[name]):
            raise UnsafeToDescribeError(f"pipeline action {name!r} is not part of {cls.__name__}'s standard "
                                        "pipeline; save with pickle=True")
        actions[name] = {"params": _json_value(dict(action.params), f"action {name!r}"),
                         "bypass": bool(action.bypass), "is_augmentation": bool(action.is_augmentation)}
    return {"class": cls.__name__, "init": _json_value(_preprocessor_init_kwargs(preprocessor), "preprocessor"),
            "actions": actions}


def _preprocessor_init_kwargs(preprocessor) -> dict:
    kwargs = {"sample_duration": preprocessor.sample_duration}
    if hasattr(preprocessor, "out_shape"):
        kwargs["out_shape"] = tuple(preprocessor.out_shape)
    return kwargs


def build_preprocessor(description: dict):
    """The preprocessor a :func:`describe_preprocessor` description describes (opso's own class and
    actions, with the saved parameters and flags)."""
    from opso_core.preprocess import preprocessors as pp

    cls = getattr(pp, description["class"], None)
    if cls is None:
        raise OpsoValueError(f"unknown preprocessor class {description['class']!r} in the model file")
    preprocessor = cls(**_from_json(description["init"]))
    actions = description["actions"]
    for name in list(preprocessor.pipeline.index):
        if name not in actions:
            preprocessor.remove_action(name)
    for name, saved in actions.items():
        action = preprocessor.pipeline[name]
        params = _from_json(saved["params"])
        action.set(**{k: v for k, v in params.items() if k in action.params.index})
        action.bypass = saved["bypass"]
        action.is_augmentation = saved["is_augmentation"]
    return preprocessor


def describe_architecture(network) -> dict:
    from opso_core.ml import cnn_architectures

    name = getattr(network, "constructor_name", None)
    if name is None or name not in cnn_architectures.ARCH_DICT:
        raise UnsafeToDescribeError(
            f"the architecture ({type(network).__name__}) was not built by a registered function of "
            "opso_core.ml.cnn_architectures, so it cannot be described in JSON; decorate its builder with "
            "register_arch, or save with pickle=True")
    kwargs = dict(network.constructor_kwargs)
    kwargs["weights"] = None  # weights come from the file
    return {"name": name, "kwargs": _json_value(kwargs, "architecture arguments")}


def save_safe(model, path) -> None:
    """Write ``model`` (a CNN) as JSON description + weights (see module docstring)."""
    import torch

    from opso_core import __version__

    description = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "opso_version": __version__,
        "model_class": type(model).__name__,
        "architecture": describe_architecture(model.network),
        "classes": [str(c) for c in model.classes],
        "sample_duration": model.preprocessor.sample_duration,
        "sample_shape": list(model.sample_shape),
        "single_target": bool(model.single_target),
        "preprocessor": describe_preprocessor(model.preprocessor),
        "training": {
            "optimizer_class": model.optimizer_cls.__name__,
            "optimizer_params": _json_value({k: v for k, v in model.optimizer_params.items() if k != "params"}
                                            if "feature" not in model.optimizer_params else
                                            {g: {k: v for k, v in p.items() if k != "params"}
                                             for g, p in model.optimizer_params.items()}, "optimizer_params"),
            "lr_update_interval": model.lr_update_interval,
            "lr_cooling_factor": model.lr_cooling_factor,
            "current_epoch": model.current_epoch,
            "loss_hist": {str(k): float(v) for k, v in model.loss_hist.items()},
            "prediction_threshold": model.prediction_threshold,
            "loss_fn": type(model.loss_fn).__name__,
        },
    }
    weights = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.network.state_dict().items()}, weights)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(_JSON_NAME, json.dumps(description, indent=2))
        zf.writestr(_WEIGHTS_NAME, weights.getvalue())
    tmp.replace(path)


def is_opso_model_file(path) -> bool:
    """True for files written by :func:`save_safe`."""
    try:
        with zipfile.ZipFile(path) as zf:
            return _JSON_NAME in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def check_weights(source) -> None:
    """Check that a model file written by :func:`save_safe` holds whole weights, without torch and without
    loading them: ``weights.pt`` is there, matches its checksum in the model file, and is a whole archive.

    Parameters
    ----------
    source : path, file-like or bytes

    Raises
    ------
    OpsoValueError
        No ``weights.pt``, or one that is cut short or damaged (a partial copy or download).
    """
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    try:
        with zipfile.ZipFile(source) as zf:
            if _WEIGHTS_NAME not in zf.namelist():
                raise OpsoValueError(f"it holds no {_WEIGHTS_NAME}; save the model again with CNN.save(path)")
            weights = zf.read(_WEIGHTS_NAME)  # checked against the CRC save_safe wrote
        # torch saves a zip archive: its directory, at the end, is missing from a weights file cut short (its
        # entries' own CRCs are not checked: torch may write 0 there and still loads the file)
        with zipfile.ZipFile(io.BytesIO(weights)) as inner:
            inner.namelist()
    except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, ValueError) as exc:
        raise OpsoValueError(f"its weights ({_WEIGHTS_NAME}) are damaged or cut short ({exc}); copy the model file "
                             "again, or save it again with CNN.save(path)") from exc


def read_safe(path) -> tuple[dict, dict]:
    """The description and the weights of a file written by :func:`save_safe`; runs no pickled code.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    (dict, dict)
        The checked description (as :func:`read_description`) and the network's ``state_dict``
        (tensors on the CPU, read with ``torch.load(weights_only=True)``).

    Raises
    ------
    PickleNotAllowedError
        The file is a pickled model.
    OpsoValueError
        The file is not a model in the safe format, or has no weights; the message names ``path``.
    """
    import torch

    try:
        description = read_description(path)
    except OpsoValueError as exc:
        raise OpsoValueError(f"{path}: {exc}") from exc
    with zipfile.ZipFile(path) as zf:
        if _WEIGHTS_NAME not in zf.namelist():
            raise OpsoValueError(f"{path} holds no {_WEIGHTS_NAME}; save the model again with CNN.save(path)")
        weights_bytes = zf.read(_WEIGHTS_NAME)
    state = torch.load(io.BytesIO(weights_bytes), map_location="cpu", weights_only=True)
    return description, state


def build_network(description: dict, state=None):
    """The network a model description names (a registered architecture and its arguments), without
    pretrained weights; with ``state`` (a ``state_dict``) loaded into it when given.

    Parameters
    ----------
    description : dict
        A model description (:func:`read_description`).
    state : dict, optional
        The network's ``state_dict`` (:func:`read_safe`).

    Returns
    -------
    torch.nn.Module
    """
    from opso_core.ml.cnn_architectures import build_architecture

    arch = description["architecture"]
    network = build_architecture(arch["name"], **_from_json(arch["kwargs"]))
    if state is not None:
        network.load_state_dict(state)
    return network
