"""CNN: train a convolutional network on labelled audio clips and predict on recordings
(``opensoundscape.ml.cnn``).

The :class:`CNN` class holds the network, the preprocessor and the training settings; the work is
done in :mod:`~opso_core.ml.training`, :mod:`~opso_core.ml.prediction`,
:mod:`~opso_core.ml.persistence` and :mod:`~opso_core.ml.cam`.

Progress is reported through the ``opso_core.ml.cnn`` logger (``logging.basicConfig(level="INFO")``
shows it), and appended to ``model.log_file`` when set; ``model.verbose`` (0-3) sets how much.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from opso_core.errors import OpsoTypeError, OpsoValueError
from opso_core.metrics import multi_target_metrics, single_target_metrics
from opso_core.ml import cnn_architectures
from opso_core.ml.loss import BCEWithLogitsLoss_hot, CrossEntropyLoss_hot, ResampleLoss
from opso_core.ml.persistence import (
    PickleNotAllowedError,
    build_network,
    build_preprocessor,
    check_description,
    file_kind,
    from_json_value,
    is_opso_model_file,
    read_safe,
    save_safe,
)
from opso_core.ml.utils import BaseModule, best_device
from opso_core.preprocess.preprocessors import SpectrogramPreprocessor

__all__ = ["CNN", "InceptionV3", "PickleNotAllowedError", "load_model", "load_outdated_model",
           "separate_resnet_feat_clf", "use_resample_loss"]

logger = logging.getLogger(__name__)


class CNN(BaseModule):
    """A CNN classifier of audio clips with ``train()``, ``predict()``, ``eval()``, ``save()`` and CAMs.

    Parameters
    ----------
    architecture : torch.nn.Module or str
        A network (e.g. from :mod:`~opso_core.ml.cnn_architectures`) or the name of one
        (``list_architectures()``), built with pretrained weights (``weights="DEFAULT"``, which needs
        network access once; build the network yourself with ``weights=None`` offline).
    classes : list of str
    sample_duration : float
        Seconds of audio per sample.
    single_target : bool
        True: exactly one class per sample (softmax, cross entropy); False: any number (sigmoid, BCE).
    preprocessor_class : type
        Preprocessor built with ``(sample_duration, out_shape=sample_shape)``.
    sample_shape : (int, int, int)
        Height, width, channels of the network's input. [default: (224, 224, 3)]
    """

    name = "CNN"

    @property
    def device(self) -> torch.device:
        """Where the network runs; assign a ``torch.device`` or a string (``model.device = "cuda:0"``)."""
        if "_device" not in self.__dict__:  # unpickled from a version that stored a plain attribute
            self.device = self.__dict__.pop("device", None) or best_device()
        return self._device

    @device.setter
    def device(self, value):
        try:
            self._device = torch.device(value)
        except (RuntimeError, TypeError) as exc:
            raise OpsoValueError(f"not a torch device: {value!r} (use e.g. 'cpu', 'cuda', 'cuda:1', 'mps')") from exc

    def __init__(self, architecture, classes, sample_duration, single_target=False,
                 preprocessor_class=SpectrogramPreprocessor, sample_shape=(224, 224, 3)):
        classes = list(classes)
        if not classes:
            raise OpsoValueError("classes must name at least one class")
        if len(set(classes)) != len(classes):
            raise OpsoValueError("class names must be unique")
        self.classes = classes
        self.single_target = bool(single_target)
        self.sample_shape = tuple(sample_shape)
        num_channels = self.sample_shape[2]
        if isinstance(architecture, str):
            self.architecture_name = architecture
            architecture = cnn_architectures.build_architecture(architecture, num_classes=len(classes),
                                                                num_channels=num_channels)
        elif isinstance(architecture, torch.nn.Module):
            self.architecture_name = getattr(architecture, "constructor_name", type(architecture).__name__)
            if num_channels != 3 and getattr(architecture, "constructor_kwargs", {}).get("num_channels", 3) != num_channels:
                warnings.warn(f"make sure the architecture expects {num_channels} input channels", stacklevel=2)
        else:
            raise OpsoTypeError("architecture must be a torch.nn.Module or the name of a registered architecture")
        self.network = architecture
        self.device = best_device()
        self.preprocessor = preprocessor_class(sample_duration=sample_duration, out_shape=self.sample_shape)
        # as 0.9.0: the loss class, instantiated when training starts (replace it before training to change
        # the loss); loss_fn holds an instance of it meanwhile
        self.loss_cls = CrossEntropyLoss_hot if self.single_target else BCEWithLogitsLoss_hot
        self.loss_fn = self.loss_cls()
        self.opt_net = None
        self.scheduler = None
        self.optimizer_cls = torch.optim.SGD
        self.optimizer_params = {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005}
        self.lr_update_interval = 10
        self.lr_cooling_factor = 0.7
        self.prediction_threshold = 0.5
        self.current_epoch = 0
        self.best_score = 0.0
        self.best_epoch = None
        self.train_metrics = {}
        self.valid_metrics = {}
        self.loss_hist = {}
        self.log_interval = 10
        self.save_path = "."
        self.verbose = 1
        self.logging_level = 1
        self.log_file = None
        self.wandb_logging = {"n_preview_samples": 8, "top_samples_classes": None, "n_top_samples": 3}

    def __repr__(self):
        return (f"<{type(self).__name__} {self.architecture_name} classes={self.classes} "
                f"sample_duration={self.preprocessor.sample_duration}>")

    # ------------------------------------------------------------------ logging

    def _log(self, message, level=1):
        if level <= self.verbose:
            logger.info(message)
        else:
            logger.debug(message)
        if self.log_file is not None and level <= self.logging_level:
            with open(self.log_file, "a") as f:
                f.write(message + "\n")

    def _generate_wandb_config(self):
        return {"architecture": self.architecture_name, "sample_duration": self.preprocessor.sample_duration,
                "classes": self.classes, "single_target": self.single_target, "sample_shape": list(self.sample_shape),
                "learning_rate": self.optimizer_params.get("lr", "n/a"),
                "l2_regularization": self.optimizer_params.get("weight_decay", "n/a")}

    # ------------------------------------------------------------------ optimisation

    def _init_optimizer(self):
        """The optimizer for ``.train()`` from ``optimizer_cls`` and ``optimizer_params``.

        ``optimizer_params`` is one dict of settings, or ``{"feature": {...}, "classifier": {...}}``
        for separate settings of the classifier layer (see :func:`separate_resnet_feat_clf`).
        """
        params = dict(self.optimizer_params)
        if "feature" in params and "classifier" in params:
            fc = self.network.get_submodule(getattr(self.network, "classifier_layer", "fc"))
            fc_ids = {id(p) for p in fc.parameters()}
            feature = {k: v for k, v in params["feature"].items() if k != "params"}
            classifier = {k: v for k, v in params["classifier"].items() if k != "params"}
            feature["params"] = [p for p in self.network.parameters() if id(p) not in fc_ids]
            classifier["params"] = list(fc.parameters())
            return self.optimizer_cls([feature, classifier])
        params.pop("params", None)
        return self.optimizer_cls([{"params": self.network.parameters(), **params}])

    # ------------------------------------------------------------------ train / predict / eval

    def train(self, train_df, validation_df=None, epochs=1, batch_size=1, num_workers=0, save_path=".",
              save_interval=1, log_interval=10, validation_interval=1,
              invalid_samples_log="./invalid_training_samples.log", raise_errors=False, wandb_session=None,
              progress_bar=False):
        """Train on labelled samples.

        Parameters
        ----------
        train_df : pandas.DataFrame
            0/1 labels, one column per class (in ``classes`` order), indexed by file or by
            ``(file, start_time, end_time)``.
        validation_df : pandas.DataFrame, optional
            Same form; scored every ``validation_interval`` epochs (MAP for multi-target, F1 for
            single-target); the best model is saved as ``save_path/best.model``.
        epochs, batch_size, num_workers : int
            ``num_workers=0`` preprocesses in this process.
        save_path : str
            Folder for ``epoch-N.model`` (every ``save_interval`` epochs and the last) and ``best.model``.
        log_interval : int
            Log the running loss every this many batches.
        invalid_samples_log : str or None
            File listing samples that failed to preprocess (written only if some did).
        raise_errors : bool
            Raise on a sample that fails instead of substituting another.
        wandb_session : wandb run, optional
        """
        from opso_core.ml.training import train

        train(self, train_df, validation_df=validation_df, epochs=epochs, batch_size=batch_size,
              num_workers=num_workers, save_path=save_path, save_interval=save_interval, log_interval=log_interval,
              validation_interval=validation_interval, invalid_samples_log=invalid_samples_log,
              raise_errors=raise_errors, wandb_session=wandb_session, progress_bar=progress_bar)

    def predict(self, samples, batch_size=1, num_workers=0, activation_layer=None, split_files_into_clips=True,
                overlap_fraction=0, final_clip=None, bypass_augmentations=True, invalid_samples_log=None,
                raise_errors=False, wandb_session=None, return_invalid_samples=False, progress_bar=False):
        """Scores for each sample.

        Parameters
        ----------
        samples : list of paths or pandas.DataFrame
            Files (split into clips of ``sample_duration`` if ``split_files_into_clips``), or a
            DataFrame indexed by file or by ``(file, start_time, end_time)``.
        batch_size, num_workers : int
        activation_layer : {None, "softmax", "sigmoid", "softmax_and_logit"}
            None returns raw logits.
        split_files_into_clips : bool
        overlap_fraction : float
            Overlap of consecutive clips, as a fraction of ``sample_duration``.
        final_clip : {None, "extend", "remainder", "full"}
        bypass_augmentations : bool
        invalid_samples_log : str, optional
            File to list samples that failed to preprocess.
        raise_errors : bool
            Raise on a failing sample; otherwise its scores are NaN.
        return_invalid_samples : bool
            Also return the set of files that failed.

        Returns
        -------
        pandas.DataFrame or (pandas.DataFrame, set)
            One row per sample (index ``(file, start_time, end_time)`` when clips), one column per class.
        """
        from opso_core.ml.prediction import check_activation, predict

        check_activation(activation_layer)
        return predict(self, samples, batch_size=batch_size, num_workers=num_workers,
                       activation_layer=activation_layer, split_files_into_clips=split_files_into_clips,
                       overlap_fraction=overlap_fraction, final_clip=final_clip,
                       bypass_augmentations=bypass_augmentations, invalid_samples_log=invalid_samples_log,
                       raise_errors=raise_errors, wandb_session=wandb_session,
                       return_invalid_samples=return_invalid_samples, progress_bar=progress_bar)

    def embed(self, samples, target_layer=None, avgpool=True, return_preds=False, return_dfs=True, batch_size=1,
              num_workers=0, split_files_into_clips=True, overlap_fraction=0, final_clip=None, progress_bar=False):
        """Embeddings of every sample: a layer's values (by default the input of the classifier layer,
        e.g. ResNet's 512 pooled features), as OpenSoundscape 0.13's ``CNN.embed`` gives them.

        Parameters
        ----------
        samples
            As for :meth:`predict`: files (split into clips), or a clip table.
        target_layer : torch.nn.Module or str, optional
            A layer of ``self.network`` (or its dotted name) whose output is taken; default: the
            classifier layer's input.
        avgpool : bool
            Average a 4-D output (batch, channels, height, width) over height and width.
        return_preds : bool
            Also return the network's outputs (logits), as a second value.
        return_dfs : bool
            DataFrames indexed like :meth:`predict`'s (else numpy arrays).

        Returns
        -------
        pandas.DataFrame or numpy.ndarray, shape (samples, features)
            NaN rows for samples that could not be read; with ``return_preds``, also the logits
            (samples, classes).
        """
        from opso_core.ml.prediction import embed

        return embed(self, samples, target_layer=target_layer, avgpool=avgpool, return_preds=return_preds,
                     return_dfs=return_dfs, batch_size=batch_size, num_workers=num_workers,
                     split_files_into_clips=split_files_into_clips, overlap_fraction=overlap_fraction,
                     final_clip=final_clip, progress_bar=progress_bar)

    def eval(self, targets, scores, logging_offset=0):
        """One summary score and a dictionary of metrics.

        Rows with NaN scores are dropped. The summary is MAP (mean average precision) for
        multi-target models and F1 for single-target ones.

        Returns
        -------
        (float, dict)
        """
        targets = np.asarray(targets, dtype=float)
        scores = np.asarray(scores, dtype=float)
        keep = ~np.isnan(scores).any(axis=1)
        targets, scores = targets[keep], scores[keep]
        if len(scores) == 0:
            warnings.warn("no predictions to evaluate (empty or all NaN)", stacklevel=2)
            return np.nan, {}
        if self.single_target:
            metrics = single_target_metrics(targets, scores)
            score = metrics["f1"]
        else:
            metrics = multi_target_metrics(targets, scores, self.classes, self.prediction_threshold)
            score = metrics["map"]
            self._log(f"\tMAP: {metrics['map']:0.3f} AU_ROC: {metrics['au_roc']:0.3f}", level=1 - logging_offset)
        self._log(f"\tJacc: {metrics['jaccard']:0.3f} Hamm: {metrics['hamming_loss']:0.3f} "
                  f"Prec: {metrics['precision']:0.3f} Rec: {metrics['recall']:0.3f} F1: {metrics['f1']:0.3f}",
                  level=2 - logging_offset)
        return score, metrics

    # ------------------------------------------------------------------ persistence

    def save(self, path, save_train_loader=False, save_hooks=False, as_torch_dict=False, *, pickle=False):
        """Save the model.

        The default file holds a JSON description and the weights; :func:`load_model` rebuilds the
        model from it without unpickling anything. ``as_torch_dict=True`` writes
        :meth:`save_torch_dict`'s dictionary instead (as OpenSoundscape 0.9.0). ``pickle=True`` saves
        the whole object with ``torch.save`` (any custom architecture or action; loading needs
        ``allow_pickle=True``). ``save_train_loader`` and ``save_hooks`` are accepted for
        compatibility: neither loaders nor hooks are ever saved.
        """
        if as_torch_dict:
            self.save_torch_dict(path)
        elif pickle:
            state = {k: v for k, v in self.__dict__.items() if k not in ("opt_net", "scheduler")}
            clone = object.__new__(type(self))
            clone.__dict__.update(state)
            clone.opt_net = None
            clone.scheduler = None
            torch.save(clone, path)
        else:
            save_safe(self, path)

    def save_weights(self, path):
        """Save only the network's ``state_dict``."""
        torch.save(self.network.state_dict(), path)

    def load_weights(self, path, strict=True):
        """Load a ``state_dict`` saved by :meth:`save_weights` (tensors only; nothing else is unpickled)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.network.load_state_dict(state, strict=strict)

    def save_torch_dict(self, path):
        """Save architecture name, weights, classes, sample shape and duration, single_target in one dict.

        Preprocessing and training settings are not included (use :meth:`save` for those).
        """
        torch.save({"weights": self.network.state_dict(), "classes": self.classes,
                    "architecture": self.architecture_name,
                    "architecture_kwargs": getattr(self.network, "constructor_kwargs", None),
                    "sample_duration": self.preprocessor.sample_duration, "single_target": self.single_target,
                    "sample_shape": list(self.sample_shape)}, path)

    @classmethod
    def from_description(cls, description, network, device=None):
        """A model rebuilt from its description (the JSON part of a :meth:`save` file) and its network.

        :func:`load_model` reads both from the file (``persistence.read_safe`` and
        ``persistence.build_network``) and calls this; nothing is unpickled.

        Parameters
        ----------
        description : dict
            A model description, as :func:`opso_core.ml.persistence.read_description` returns it:
            model class, classes, sample duration (s) and shape (height, width, channels),
            single_target, the preprocessor and the training settings.
        network : torch.nn.Module
            The network, weights loaded (``persistence.build_network(description, state)``).
        device : str or torch.device, optional
            Where the model runs (default: the first GPU if available, else the CPU). The network is
            not moved here; ``load_model`` moves it.

        Returns
        -------
        CNN
            Of the class the description names (``CNN``, ``InceptionV3``, or ``cls`` when it names
            ``cls``).

        Raises
        ------
        OpsoValueError
            The description is damaged, or names a model class that is not a CNN opso knows.
        """
        description = check_description(description)
        name = description.get("model_class", "CNN")
        model_cls = cls if name == cls.__name__ else globals().get(name)
        if not (isinstance(model_cls, type) and issubclass(model_cls, CNN)):
            raise OpsoValueError(f"unknown model class {name!r} in the model description")
        model = CNN.__new__(model_cls)
        CNN.__init__(model, network, description["classes"], description["sample_duration"],
                     single_target=description["single_target"], sample_shape=tuple(description["sample_shape"]))
        model.preprocessor = build_preprocessor(description["preprocessor"])
        training = description["training"]
        model.optimizer_cls = getattr(torch.optim, training["optimizer_class"], torch.optim.SGD)
        model.optimizer_params = from_json_value(training["optimizer_params"])
        model.lr_update_interval = training["lr_update_interval"]
        model.lr_cooling_factor = training["lr_cooling_factor"]
        model.current_epoch = training["current_epoch"]
        model.loss_hist = {int(k): v for k, v in training["loss_hist"].items()}
        model.prediction_threshold = training["prediction_threshold"]
        if training.get("loss_fn") == "ResampleLoss":
            model.loss_cls = ResampleLoss
        if device is not None:
            model.device = device
        return model

    @classmethod
    def from_torch_dict(cls, path):
        """A model rebuilt from a file written by :meth:`save_torch_dict` (read with ``weights_only=True``)."""
        d = torch.load(path, map_location="cpu", weights_only=True)
        kwargs = dict(d.get("architecture_kwargs") or {})
        kwargs.update(num_classes=len(d["classes"]), weights=None, num_channels=d["sample_shape"][2])
        network = cnn_architectures.build_architecture(d["architecture"], **kwargs)
        network.load_state_dict(d["weights"])
        return cls(network, d["classes"], d["sample_duration"], single_target=d["single_target"],
                   sample_shape=tuple(d["sample_shape"]))

    # ------------------------------------------------------------------ CAMs

    def generate_cams(self, samples, method="gradcam", classes=None, target_layers=None, guided_backprop=False,
                      split_files_into_clips=True, bypass_augmentations=True, batch_size=1, num_workers=0):
        """Class activation maps for samples; see :func:`opso_core.ml.cam.generate_cams`."""
        from opso_core.ml.cam import generate_cams

        return generate_cams(self, samples, method=method, classes=classes, target_layers=target_layers,
                             guided_backprop=guided_backprop, split_files_into_clips=split_files_into_clips,
                             bypass_augmentations=bypass_augmentations, batch_size=batch_size,
                             num_workers=num_workers)


class InceptionV3(CNN):
    """A CNN with the Inception v3 architecture (299x299 inputs, auxiliary output used in training)."""

    def __init__(self, classes, sample_duration, single_target=False, preprocessor_class=SpectrogramPreprocessor,
                 freeze_feature_extractor=False, weights="DEFAULT", sample_shape=(299, 299, 3)):
        network = cnn_architectures.inception_v3(len(list(classes)), freeze_feature_extractor=freeze_feature_extractor,
                                                 weights=weights, num_channels=sample_shape[2])
        super().__init__(network, classes, sample_duration, single_target=single_target,
                         preprocessor_class=preprocessor_class, sample_shape=sample_shape)
        self.name = "InceptionV3"

    @classmethod
    def from_torch_dict(cls, path):
        d = torch.load(path, map_location="cpu", weights_only=True)
        model = cls(d["classes"], d["sample_duration"], single_target=d["single_target"], weights=None,
                    sample_shape=tuple(d["sample_shape"]))
        model.network.load_state_dict(d["weights"])
        return model


def load_model(path, device=None, *, allow_pickle=False):
    """Load a model saved with :meth:`CNN.save`.

    Files in opso's format (JSON + weights) load without unpickling. A pickled model (OpenSoundscape
    ``.model`` files, ``save(..., pickle=True)``) runs code from the file when loaded, so it loads
    only with ``allow_pickle=True`` — do that only for files you trust.

    Parameters
    ----------
    path : str or path-like
    device : str or torch.device, optional
        Default: the first GPU if available, else the CPU.
    allow_pickle : bool

    Raises
    ------
    PickleNotAllowedError
        The file is a pickle and ``allow_pickle`` is False.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no model file at {path}")
    if is_opso_model_file(path):
        description, state = read_safe(path)
        try:
            model = CNN.from_description(description, build_network(description, state), device=device)
        except OpsoValueError as exc:
            raise OpsoValueError(f"{path}: {exc}") from exc
    else:
        kind = file_kind(path)
        if "pickle" not in kind and kind != "not a model file":
            raise OpsoValueError(f"{path} is {kind}, not a model file (CNN.save writes those)")
        if not allow_pickle:
            raise PickleNotAllowedError(
                f"{path} is a pickled model (not opso's JSON + weights format). Unpickling runs code stored in "
                "the file; if you trust it, call load_model(path, allow_pickle=True), then model.save(new_path) "
                "to convert it to the safe format")
        model = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(model, CNN):
            raise OpsoTypeError(f"{path} holds a {type(model).__name__}, not a CNN")
    model.device = torch.device(device) if device is not None else best_device()
    model.network.to(model.device)
    return model


def load_outdated_model(path, architecture, sample_duration, model_class=CNN, device=None, *, allow_pickle=False):
    """Load a model saved by OpenSoundscape 0.4.x-0.6.0: a dict with ``model_state_dict`` and ``classes``
    (or ``labels_yaml``), weights named as those versions named them.

    As in 0.9.0, keys are renamed to torchvision's (``feature.`` prefix dropped, ``classifier.`` ->
    ``fc.``) and loaded with ``strict=False``; keys that still do not match are logged (warning).
    A model without ``single_target`` is single-target (0.4.x). The file is read with torch's
    weights-only unpickler (tensors and plain containers); anything else needs ``allow_pickle=True``.
    Check afterwards that ``model.preprocessor`` matches the settings the model was trained with.

    Parameters
    ----------
    path : str or path-like
    architecture : str or torch.nn.Module or None
        The network to load the weights into: a registered name (built without pretrained
        weights), a module, or None for classes that build their own (e.g. InceptionV3).
    sample_duration : float
        Seconds.
    model_class : type
        Normally :class:`CNN`.
    device : str or torch.device, optional
        Default: CUDA if available, else the CPU.
    allow_pickle : bool
        Needed when the file holds more than tensors and plain containers.

    Returns
    -------
    CNN
    """
    try:
        contents = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler rejects anything but tensors and containers
        if not allow_pickle:
            raise PickleNotAllowedError(f"{path} needs full unpickling (it holds objects, not just tensors); "
                                        "pass allow_pickle=True if you trust the file") from exc
        contents = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(contents, dict):
        raise OpsoValueError(f"{path} holds a complete model object, not a dictionary of weights; "
                             "use load_model() instead")
    state = contents.get("model_state_dict")
    if state is None:
        state = contents.get("state_dict", contents.get("weights"))
    if "classes" in contents:
        classes = list(contents["classes"])
    elif "labels_yaml" in contents:
        classes = _classes_from_labels_yaml(contents["labels_yaml"])
    else:
        raise OpsoValueError(f"{path}: could not get a list of classes from the saved model")
    if state is None:
        raise OpsoValueError(f"{path} holds no 'model_state_dict'")
    if architecture is None:
        model = model_class(classes=classes, sample_duration=sample_duration, weights=None)
    else:
        if isinstance(architecture, str):  # the weights come from the file: no pretrained download
            architecture = cnn_architectures.build_architecture(architecture, num_classes=len(classes), weights=None)
        model = model_class(architecture, classes, sample_duration)
    state = {k.replace("classifier.", "fc.").replace("feature.", ""): v for k, v in state.items()}
    mismatched = model.network.load_state_dict(state, strict=False)
    if mismatched.missing_keys or mismatched.unexpected_keys:
        logger.warning("%s: weights not loaded into the network: missing %s, unexpected %s", path,
                       mismatched.missing_keys, mismatched.unexpected_keys)
    model.single_target = bool(contents.get("single_target", True))
    model.device = torch.device(device) if device is not None else best_device()
    warnings.warn("After loading a model, you still need to ensure that your preprocessing "
                  "(model.preprocessor) matches the settings used to create the original model.", stacklevel=2)
    return model


def _classes_from_labels_yaml(text: str) -> list:
    """Class names of an OpenSoundscape 0.4.x ``labels_yaml`` entry (a mapping index -> class name)."""
    try:
        import yaml

        mapping = yaml.safe_load(text)
    except ImportError:  # the plain "0: name" lines those versions wrote
        mapping = dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)
        mapping = {k.strip(): v.strip() for k, v in mapping.items()}
    if not isinstance(mapping, dict):
        raise OpsoValueError("labels_yaml is not a mapping of index to class name")
    return [str(v) for v in mapping.values()]


def use_resample_loss(model):
    """Train ``model`` with :class:`~opso_core.ml.loss.ResampleLoss` (class frequencies come from train_df)."""
    model.loss_cls = ResampleLoss
    return model


def separate_resnet_feat_clf(model):
    """Separate optimizer settings for a ResNet's feature extractor (lr 0.001) and classifier (lr 0.01).

    Edit ``model.optimizer_params["feature"]`` / ``["classifier"]`` afterwards to change them. Resets
    the optimizer and ``current_epoch``.
    """
    if "resnet" not in getattr(model.network, "constructor_name", type(model.network).__name__).lower():
        raise OpsoValueError("separate_resnet_feat_clf expects a ResNet architecture")
    model.optimizer_params = {"feature": {"lr": 0.001, "momentum": 0.9, "weight_decay": 0.0005},
                              "classifier": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005}}
    model.opt_net = None
    model.scheduler = None
    model.current_epoch = 0
    return model
