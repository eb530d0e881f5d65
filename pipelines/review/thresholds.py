"""Calibrated thresholds in a run: entries with ``calibrated_thresholds: true`` take theirs from
``calibration.parquet`` when the run starts.

The run's configuration is resolved once, before the cluster starts (:func:`calibrated_config`): a
RIBBIT species' ``threshold`` and a CNN's or BirdNET's ``class_thresholds`` get the calibrated value of
every class whose calibration is ``ok``; other classes keep the configured thresholds. The resolved
values are what ``run.json`` records and what the detections' identities hash, so a new calibration
makes the next run in the folder re-derive those detections from the stored scores (no audio read),
and an unchanged one changes nothing.
"""

from __future__ import annotations

import logging

import pandas as pd

from pipelines.errors import ConfigError

__all__ = ["calibrated_config", "calibrated_thresholds", "expected_identities"]

logger = logging.getLogger(__name__)


def calibrated_thresholds(location, expected: dict[str, str] | None = None,
                          detectors=None) -> dict[str, dict[str, float]]:
    """``{detector: {class: threshold}}`` of the ``ok`` rows of the run folder's ``calibration.parquet``
    (empty where there is none).

    ``expected`` (:func:`expected_identities`: the archive's identity and ``{scores:<detector>: identity}``
    of the scores the run will have): a row fitted on other scores (its ``archive_identity`` or
    ``scores_identity`` differs: another archive, or clip or detector settings changed since ``opso
    calibrate``), or on scores that cannot be checked yet, is left out, with a warning for each of
    ``detectors`` (all when None). Calibrations written before these columns existed are used as they are."""
    from pipelines.review.calibrate_run import CALIBRATION_FILE

    if not location.exists(CALIBRATION_FILE):
        return {}
    table = location.read_parquet(CALIBRATION_FILE)
    table = table[table["status"] == "ok"]
    if expected is not None:
        stale = pd.Series(False, index=table.index)
        if "archive_identity" in table.columns:
            stale |= table["archive_identity"].notna() & (table["archive_identity"] != expected.get("archive"))
        if "scores_identity" in table.columns:
            now = table["detector"].map(lambda d: expected.get(f"scores:{d}"))
            stale |= table["scores_identity"].notna() & (table["scores_identity"] != now)
        for detector in sorted(set(table.loc[stale, "detector"])):
            if detectors is None or detector in detectors:
                logger.warning("calibrated_thresholds: the calibration of %s in %s was fitted on scores other than "
                               "those this configuration computes (another archive, or clip or detector settings "
                               "changed since opso calibrate%s): the configured thresholds apply; run, review and "
                               "calibrate again", detector, location.url,
                               "" if f"scores:{detector}" in expected else
                               ", or the archive's sample rate is not known before its inventory")
        table = table[~stale]
    out: dict[str, dict[str, float]] = {}
    for detector, class_name, threshold in table[["detector", "class_name", "threshold"]].itertuples(
            index=False, name=None):
        out.setdefault(detector, {})[class_name] = float(threshold)
    return out


def expected_identities(config, previous) -> dict[str, str]:
    """``{"archive": identity, scores:<detector>: identity}`` that a run of ``config`` gives its archive and
    score tables; without the scores when the archive's sample rate is not known yet (``sample_rate: null``
    and no run of the same archive in the folder has recorded it)."""
    from pipelines.driver.identity import (
        ARCHIVE_KEYS,
        archive_identity,
        config_changes,
        resolve_config_products,
    )

    public = config.public_dict()
    found = {"archive": archive_identity(public)}
    info = previous.info if previous is not None else {}
    same_archive = not any(k in ARCHIVE_KEYS for k in config_changes(info.get("config") or {}, public))
    rate = config.spectrogram.sample_rate or (info.get("sample_rate_hz") if same_archive else None)
    if rate is None:
        return found
    try:
        resolved = resolve_config_products(config, int(rate), bool(info.get("gpu_layout", False)))
    except (ValueError, ConfigError) as exc:  # the run itself reports what is wrong at this rate
        logger.debug("calibrated_thresholds: the scores' identities are unknown: %s", exc)
        return found
    found.update({name: r.identity for name, r in resolved.items() if name.startswith("scores:")})
    return found


def calibrated_config(config, location, previous=None):
    """``config`` with the calibrated thresholds of its ``calibrated_thresholds: true`` entries (see
    the module docstring); ``config`` itself when no entry asks for them. A calibration fitted on
    scores other than those this configuration computes is not applied (:func:`calibrated_thresholds`);
    ``previous`` (the folder's :class:`~pipelines.outputs.run_folder.PreviousRun`) gives the archive's
    sample rate when the configuration leaves it to the inventory.

    Raises
    ------
    ConfigError
        A calibrated BirdNET threshold below the entry's ``score_floor`` (the calibration was made
        with another floor: calibrate again).
    """
    asking = {f"{kind}:{e.name}" for kind, section in (("ribbit", config.ribbit), ("cnn", config.cnn),
                                                       ("birdnet", config.birdnet), ("linear", config.linear))
              for e in section if e.calibrated_thresholds}
    if not asking:
        return config
    found = calibrated_thresholds(location, expected_identities(config, previous), detectors=asking)
    if not found:
        from pipelines.review.calibrate_run import CALIBRATION_FILE

        if not location.exists(CALIBRATION_FILE):  # else the stale rows were named above
            logger.warning("calibrated_thresholds: no calibration in %s yet (opso calibrate writes one from "
                           "reviews); the configured thresholds apply", location.url)
        return config
    applied = []

    def use(detector: str) -> dict[str, float]:
        values = found.get(detector, {})
        applied.extend(f"{detector} / {c}: {t:.4g}" for c, t in sorted(values.items()))
        return values

    ribbit = [s.model_copy(update={"threshold": use(f"ribbit:{s.name}").get(s.name, s.threshold)})
              if s.calibrated_thresholds else s for s in config.ribbit]
    cnn = [m.model_copy(update={"class_thresholds": {**m.class_thresholds, **use(f"cnn:{m.name}")}})
           if m.calibrated_thresholds else m for m in config.cnn]
    linear = [m.model_copy(update={"class_thresholds": {**m.class_thresholds, **use(f"linear:{m.name}")}})
              if m.calibrated_thresholds else m for m in config.linear]
    birdnet = []
    for b in config.birdnet:
        if b.calibrated_thresholds:
            values = use(f"birdnet:{b.name}")
            low = {c: t for c, t in values.items() if t < b.score_floor}
            if low:
                raise ConfigError(f"birdnet.{b.name}: calibrated thresholds {low} lie below score_floor "
                                  f"{b.score_floor}; run opso calibrate again (it keeps thresholds above the floor)")
            b = b.model_copy(update={"class_thresholds": {**b.class_thresholds, **values}})
        birdnet.append(b)
    if applied:
        logger.info("calibrated thresholds from calibration.parquet: %s", "; ".join(applied))
    else:
        logger.warning("calibrated_thresholds: calibration.parquet in %s has no ok calibration of these detectors; "
                       "the configured thresholds apply", location.url)
    return config.model_copy(update={"ribbit": ribbit, "cnn": cnn, "birdnet": birdnet, "linear": linear})
