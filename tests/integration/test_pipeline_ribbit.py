"""End to end: a synthetic archive with pulsed frog calls and bad files, through `run_pipeline`,
on the local file system and on a local S3 server (the same assertions for both)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from opso_core import Audio, Spectrogram
from opso_core.ribbit import ribbit
from opso_core.utils import generate_clip_times_df
from pipelines.config import load_config
from pipelines.driver.run import read_status, run_pipeline
from pipelines.errors import OutputConflictError

SR = 16000
SPECIES = {"name": "frog12", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15],
           "noise_bands": [[300, 1000], [3000, 3500]], "threshold": 0.02}
QUIET_SPECIES = {"name": "fast", "signal_band": [1800, 2200], "pulse_rate_range": [18, 22], "threshold": 0.02}
# truncated.wav holds 1 s of its declared 2 s: readable, but shorter than one 2 s clip
BAD_FILES = {"empty.wav": "failed", "not_audio.wav": "failed", "bad_header.wav": "failed",
             "truncated.wav": "no_clips"}


def config_for(input_url, output_url, storage_options=None, **overrides):
    cfg = {"input": {"url": input_url, "storage_options": storage_options or {}},
           "output": {"url": output_url, "storage_options": storage_options or {}},
           "clips": {"duration": 2.0},
           "spectrogram": {"sample_rate": SR, "clips_per_chunk": 16},
           "ribbit": [SPECIES, QUIET_SPECIES]}
    cfg.update(overrides)
    return load_config(cfg, environ={})


@dataclasses.dataclass
class Run:
    kind: str
    summary: object
    location: object
    config: object

    def with_output(self, url):
        return self.config.model_copy(update={"output": self.config.output.model_copy(update={"url": url})})


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def run(request, archive, dask_client, tmp_path_factory):
    """The pipeline run once per storage kind; every test below checks it."""
    from pipelines.outputs.location import OutputLocation

    if request.param == "local":
        options = {}
        config = config_for(str(archive.root), str(tmp_path_factory.mktemp("run") / "results"))
    else:
        import s3fs

        options = request.getfixturevalue("s3_storage_options")
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("opso-test")
        fs.put(str(archive.root) + "/", "opso-test/archive/", recursive=True)
        config = config_for("s3://opso-test/archive", "s3://opso-test/runs/r1", options)
    summary = run_pipeline(config, dask_client, progress=False)
    return Run(request.param, summary, OutputLocation(config.output.url, options), config)


class TestPipelineConformance:
    """The output contract, the same on the local file system and on S3."""

    def read(self, run, rel):
        location = run.location
        return location.read_parquet_folder(rel) if not rel.endswith(".parquet") else location.read_parquet(rel)

    def test_summary(self, run):
        summary = run.summary
        assert summary.status == "complete_with_failures"
        assert (summary.n_files, summary.n_files_ok, summary.n_files_truncated, summary.n_files_no_clips,
                summary.n_files_failed) == (11, 7, 0, 1, 3)
        assert summary.n_clips == 100 and summary.n_clips_failed == 0
        assert summary.audio_hours == pytest.approx((6 * 30 + 20 + 1) / 3600)

    def test_inventory_has_every_file_with_its_status(self, run, archive):
        inv = self.read(run, "inventory.parquet")
        names = inv.file.str.split("/").str[-1]
        assert len(inv) == 11
        for name, status in BAD_FILES.items():
            assert inv.status[names == name].item() == status
        good = inv[inv.recorder.str.startswith("rec")]
        assert (good.status == "ok").all() and set(good.recorder) == {"rec00", "rec01", "rec02", "rec22k"}
        assert set(good.sample_rate) == {16000, 22050}
        rec00 = good[good.recorder == "rec00"].sort_values("file")
        assert list(rec00.start_time_utc) == list(pd.to_datetime(["2024-05-01 06:00:00", "2024-05-01 06:00:30"],
                                                                 utc=True))

    def test_every_clip_of_every_readable_file_is_scored(self, run):
        inv = self.read(run, "inventory.parquet")
        scores = self.read(run, "scores/detector=ribbit:frog12")
        expected = sum(len(generate_clip_times_df(d, 2.0)) for d in inv.duration_s[inv.status != "failed"])
        assert len(scores) == expected == 100
        assert not scores.duplicated(["file", "start_time"]).any()
        assert scores.frog12.notna().all()
        assert list(scores.columns[:5]) == ["file", "recorder", "start_time", "end_time", "start_time_utc"]
        fast = self.read(run, "scores/detector=ribbit:fast")
        assert len(fast) == 100

    def test_failures_name_each_bad_file(self, run):
        failures = self.read(run, "failures.parquet")
        assert list(failures.columns) == ["stage", "item", "error_type", "message"]
        named = set(failures.item.str.split("/").str[-1])
        assert named == set(BAD_FILES)
        assert set(failures.stage) == {"inventory"}

    def test_zarr_spectrograms_equal_from_audio(self, run):
        location = run.location
        ds = xr.open_zarr(location.url_of("spectrograms.zarr"), storage_options=location.storage_options or None)
        assert ds.spectrogram.dims == ("clip", "frequency", "time")
        assert ds.sizes["clip"] == 100 and ds.attrs["sample_rate_hz"] == SR
        for clip in (0, 17, 55, 99):  # first, middle, another file, the resampled 22.05 kHz file
            c = ds.isel(clip=clip)
            audio = Audio.from_file(str(c.file.values), offset=float(c.start_time), duration=2.0, sample_rate=SR,
                                    storage_options=location.storage_options)
            spec = Spectrogram.from_audio(audio)
            # the default, compact store keeps dB within half a 0.625 dB step of the computed values
            assert ds.attrs["store"] == "compact" and ds.attrs["precision_db"] == 0.3125
            np.testing.assert_allclose(c.spectrogram.values, spec.spectrogram, atol=0.3125 + 1e-4)
            np.testing.assert_allclose(ds.time.values, spec.times)
            np.testing.assert_allclose(ds.frequency.values, spec.frequencies)
        assert str(ds.isel(clip=99).file.values).endswith("rec22k/20240501_060000.WAV")

    def test_ribbit_scores_equal_the_library(self, run):
        location = run.location
        scores = self.read(run, "scores/detector=ribbit:frog12").sort_values(["file", "start_time"])
        for row in scores.iloc[[0, 3, 40, 77]].itertuples():
            audio = Audio.from_file(row.file, offset=row.start_time, duration=2.0, sample_rate=SR,
                                    storage_options=location.storage_options)
            expected = ribbit(Spectrogram.from_audio(audio), SPECIES["signal_band"], SPECIES["pulse_rate_range"],
                              clip_duration=2.0, final_clip="full", noise_bands=SPECIES["noise_bands"]).score[0]
            assert row.frog12 == pytest.approx(expected, rel=1e-4, abs=1e-9)

    def test_detections_find_the_frog_calls(self, run, archive):
        """Recall: every synthetic call (3 s) has a detection overlapping it by >= 0.5 s.
        Precision: every detection overlaps a call by >= 0.5 s. Both must be >= 0.9."""
        det = self.read(run, "detections")
        assert list(det.columns) == ["detector", "class", "file", "recorder", "start_time", "end_time",
                                     "start_time_utc", "score", "common_name"]
        assert det.common_name.isna().all()  # a BirdNET column: RIBBIT's classes have no common name
        frog = det[det.detector == "ribbit:frog12"]
        assert (frog.score >= SPECIES["threshold"]).all()
        assert len(det[det.detector == "ribbit:fast"]) == 0
        calls = archive.events[archive.events.kind == "frog"].copy()
        calls["file"] = calls.file.str.split("/").str[-2:].str.join("/")
        frog = frog.assign(file=frog.file.str.split("/").str[-2:].str.join("/"))

        def overlap(a0, a1, b0, b1):
            return np.minimum(a1, b1) - np.maximum(a0, b0)

        found = [((frog.file == c.file) & (overlap(frog.start_time, frog.end_time, c.start_time, c.end_time) >= 0.5)).any()
                 for c in calls.itertuples()]
        true_pos = [((calls.file == d.file) & (overlap(calls.start_time, calls.end_time, d.start_time, d.end_time) >= 0.5)).any()
                    for d in frog.itertuples()]
        recall, precision = np.mean(found), np.mean(true_pos)
        assert len(calls) == 12 and len(frog) >= 12
        assert recall >= 0.9 and precision >= 0.9, (recall, precision)
        assert (frog.start_time_utc == pd.to_datetime("2024-05-01 06:00", utc=True)
                + pd.to_timedelta(frog.start_time, unit="s")
                + pd.to_timedelta(np.where(frog.file.str.endswith("060030.WAV"), 30, 0), unit="s")).all()

    def test_run_json(self, run):
        location = run.location
        status = read_status(location.url, location.storage_options)
        assert status["status"] == "complete_with_failures"
        assert status["summary"]["n_clips"] == 100 and status["summary"]["detections"]["ribbit:frog12"] >= 12
        assert "storage_options" not in status["config"]["input"]
        assert "secret" not in str(status)
        assert status["versions"]["numpy"]

    def test_rerun_is_a_no_op_and_another_archive_is_refused(self, run, dask_client):
        before = self.read(run, "detections").sort_values(["detector", "file", "start_time"]).reset_index(drop=True)
        config = run.config
        again = run_pipeline(config, dask_client, progress=False)
        assert again.stage_wall_s.keys() == {"inventory"}  # nothing left to compute
        after = self.read(run, "detections").sort_values(["detector", "file", "start_time"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(before, after)
        # another archive (here: another pattern) in the same folder is refused, naming the key
        changed = config.model_copy(update={"input": config.input.model_copy(update={"pattern": "**/*.wav"})})
        with pytest.raises(OutputConflictError, match=r"another archive \(changed: input.pattern"):
            run_pipeline(changed, dask_client, progress=False)


    def test_outputs_are_objects_in_the_bucket(self, run):
        if run.kind != "s3":
            pytest.skip("S3 only")
        fs = run.location.fs
        names = {k.rsplit("/", 1)[-1] for k in fs.ls("opso-test/runs/r1")}
        assert {"run.json", "inventory.parquet", "failures.parquet", "spectrograms.zarr", "scores",
                "detections"} <= names
        df = pd.read_parquet(io.BytesIO(fs.cat("opso-test/runs/r1/inventory.parquet")))
        assert len(df) == 11
