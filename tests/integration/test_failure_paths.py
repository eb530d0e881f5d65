"""The failure paths of a run, through the ``opso`` command: nothing lost, nothing stuck, one clear line.

Each case is a user mistake; each must end with ``opso: error: ...`` (or the documented status),
the documented exit code, no traceback, no deleted file, and no ``running`` state left behind.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from opso_core.testing import make_archive, write_bad_files
from pipelines.cli import main

SR = 8000
FROG = {"name": "frog", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15], "threshold": 0.02}


@pytest.fixture(scope="module")
def source_archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    make_archive(root, n_recorders=2, files_per_recorder=1, file_duration_s=8, sample_rate_hz=SR, seed=2)
    return root


@pytest.fixture
def work(tmp_path, source_archive):
    shutil.copytree(source_archive, tmp_path / "archive")
    return tmp_path


def write_config(work, name="run.yaml", *, input_url=None, output_url=None, **sections):
    cfg = {"input": {"url": str(input_url or work / "archive")}, "output": {"url": str(output_url or work / "out")},
           "spectrogram": {"sample_rate": SR, "clips_per_chunk": 4, "task_audio_s": 8.0}, "ribbit": [FROG],
           "cluster": {"n_workers": 1, "processes": False}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = work / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def opso(capsys, *args):
    """Run the command in this process; (exit code, stderr)."""
    capsys.readouterr()
    rc = main(["-q", *map(str, args)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_overwrite_with_output_equal_to_input_deletes_nothing(work, capsys):
    before = files_under(work / "archive")
    for out in (work / "archive", work / "archive" / "results"):
        rc, err = opso(capsys, "run", write_config(work, output_url=out), "--overwrite")
        assert rc == 2 and err.startswith("opso: error: output.url") and "input.url" in err
        assert err.count("\n") == 1
        assert files_under(work / "archive") == before


def test_overwrite_keeps_foreign_files_and_replaces_the_run(work, capsys):
    config = write_config(work)
    assert opso(capsys, "run", config)[0] == 0
    (work / "out" / "notes.txt").write_text("site visits")
    (work / "out" / "scores" / "my-summary.csv").write_text("a,b")
    first = json.loads((work / "out" / "run.json").read_text())
    # the same archive with other settings: updated in place, what depends on the change recomputed
    changed = write_config(work, clips={"duration": 1.0})
    assert opso(capsys, "run", changed)[0] == 0
    second = json.loads((work / "out" / "run.json").read_text())
    assert second["fingerprint"] != first["fingerprint"] and second["status"] == "complete"
    assert second["summary"]["n_clips"] == 2 * first["summary"]["n_clips"]  # 1 s clips now, none left over
    assert len(pd.read_parquet(work / "out" / "scores" / "detector=ribbit:frog")) == second["summary"]["n_clips"]
    # another archive: refused, naming the key, unless --overwrite
    other = write_config(work, "other.yaml", clips={"duration": 1.0}, input={"pattern": "rec00/*.WAV"})
    rc, err = opso(capsys, "run", other)
    assert rc == 2 and "another archive" in err and "input.pattern" in err and "--overwrite" in err
    # the archive's keys are what is named; other settings are only counted
    third_try = write_config(work, "third.yaml", clips={"duration": 0.5}, input={"pattern": "rec00/*.WAV"},
                             ribbit=[{**FROG, "threshold": 0.5}])
    rc, err = opso(capsys, "run", third_try)
    assert rc == 2 and "changed: input.pattern **/*.[wW][aA][vV] → rec00/*.WAV; and 2 other setting(s);" in err, err
    assert opso(capsys, "run", other, "--overwrite")[0] == 0
    assert (work / "out" / "notes.txt").read_text() == "site visits"
    assert (work / "out" / "scores" / "my-summary.csv").exists()
    third = json.loads((work / "out" / "run.json").read_text())
    assert third["summary"]["n_clips"] == second["summary"]["n_clips"] // 2  # one of the two recorders
    assert len(pd.read_parquet(work / "out" / "scores" / "detector=ribbit:frog")) == third["summary"]["n_clips"]


def test_overwrite_with_a_bad_input_keeps_the_previous_results(work, capsys):
    assert opso(capsys, "run", write_config(work))[0] == 0
    before = {p: (work / "out" / p).read_bytes() for p in files_under(work / "out")}
    rc, err = opso(capsys, "run", write_config(work, input_url=work / "archive-typo"), "--overwrite")
    assert rc == 2 and "input location does not exist" in err
    assert {p: (work / "out" / p).read_bytes() for p in files_under(work / "out")} == before


def test_overwrite_with_an_error_found_after_the_inventory_keeps_the_previous_results(work, capsys):
    """With sample_rate: null a band is checked only after the inventory: --overwrite deletes nothing
    before that check has passed, and the previous run still reads as complete."""
    assert opso(capsys, "run", write_config(work))[0] == 0
    before = {p: (work / "out" / p).read_bytes() for p in files_under(work / "out") if not p.startswith("_lock/")}
    wrong = write_config(work, spectrogram={"sample_rate": None}, ribbit=[{**FROG, "signal_band": [5000, 6000]}])
    rc, err = opso(capsys, "run", wrong, "--overwrite")
    assert rc == 2 and "ribbit.0.signal_band" in err and err.count("\n") == 1
    after = {p: (work / "out" / p).read_bytes() for p in files_under(work / "out")
             if not p.startswith(("_lock/", "_inventory/"))}  # the failed run's inventory parts: removed next run
    assert after == before
    assert json.loads((work / "out" / "run.json").read_text())["status"] == "complete"


def test_an_overwrite_cut_short_is_finished_by_the_next_run(work, capsys, monkeypatch):
    """A storage failure while --overwrite deletes the previous run's files: run.json says so, and the
    next run (without --overwrite) removes the rest first instead of trusting the old markers."""
    from pipelines.errors import StorageError
    from pipelines.outputs.location import OutputLocation

    assert opso(capsys, "run", write_config(work))[0] == 0
    other = write_config(work, "other.yaml", input={"pattern": "rec00/*.WAV"})
    real = OutputLocation.remove_files

    def fails_on_outputs(self, rels):
        if any(r.startswith("scores/") for r in rels):
            raise StorageError("simulated: 503 Slow Down")
        return real(self, rels)

    monkeypatch.setattr(OutputLocation, "remove_files", fails_on_outputs)
    rc, err = opso(capsys, "run", other, "--overwrite")
    assert rc == 4 and "503 Slow Down" in err
    status = json.loads((work / "out" / "run.json").read_text())
    assert status["clearing"] is True and status["status"] == "failed"
    assert not (work / "out" / "_progress").exists()  # the markers went first
    capsys.readouterr()
    assert main(["status", str(work / "out")]) == 0
    assert "stopped while removing the previous run's outputs" in capsys.readouterr().out
    monkeypatch.setattr(OutputLocation, "remove_files", real)
    assert opso(capsys, "run", other)[0] == 0
    status = json.loads((work / "out" / "run.json").read_text())
    assert status["status"] == "complete" and "clearing" not in status
    scores = pd.read_parquet(work / "out" / "scores" / "detector=ribbit:frog")
    assert len(scores) == status["summary"]["n_clips"] > 0 and set(scores.recorder) == {"rec00"}


def test_an_overwrite_that_fails_after_its_clear_records_the_failure(work, capsys, monkeypatch):
    """Past the clear, run.json is this run's: an error is recorded there (failed, with the message),
    not left saying running."""
    import pipelines.driver.run as driver_run
    from pipelines.errors import StorageError

    assert opso(capsys, "run", write_config(work))[0] == 0

    def storage_down(*args, **kwargs):
        raise StorageError("simulated: the bucket went away")

    monkeypatch.setattr(driver_run, "run_tasks", storage_down)
    rc, err = opso(capsys, "run", write_config(work), "--overwrite")
    assert rc == 4 and "the bucket went away" in err and "untouched" not in err
    status = json.loads((work / "out" / "run.json").read_text())
    assert status["status"] == "failed" and "the bucket went away" in status["error"]["message"]
    assert "clearing" not in status and not (work / "out" / "scores").exists()


def test_files_added_to_the_archive_after_the_run_are_named_not_ignored_silently(work, capsys, caplog):
    """A run keeps the inventory it began with (its clips and outputs stay the same): recordings added
    since are not analysed, and both --dry-run and the run say so, with what to do."""
    config = write_config(work)
    assert opso(capsys, "run", config)[0] == 0
    shutil.copy(work / "archive" / "rec00" / "20240501_060000.WAV", work / "archive" / "rec00" / "20240502_060000.WAV")
    capsys.readouterr()
    assert main(["run", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 input files" in out and "1 input file(s) appeared since this run made its inventory" in out
    assert "rec00/20240502_060000.WAV" in out and "--overwrite" in out
    caplog.clear()
    assert opso(capsys, "run", config)[0] == 0
    assert "1 input file(s) appeared since" in caplog.text and "NOT analysed" in caplog.text
    (work / "archive" / "rec01" / "20240501_060000.WAV").unlink()
    capsys.readouterr()
    assert main(["run", str(config), "--dry-run"]) == 0
    assert "1 file(s) of this run's inventory are no longer under input.url" in capsys.readouterr().out


@pytest.mark.parametrize(("sections", "needle"), [
    ({"ribbit": [{**FROG, "noise_bands": [[1000, 0]]}]}, "ribbit.0.noise_bands"),
    ({"spectrogram": {"window_type": "hannn"}}, "unknown window_type 'hannn'"),
    ({"ribbit": [{**FROG, "signal_band": [19000, 25000]}]}, "above the Nyquist frequency (4000 Hz)"),
    ({"ribbit": [{**FROG, "pulse_rate_range": [40, 80]}]}, "pulse_rate_range: [40, 80] lies entirely above"),
    ({"ribbit": [{**FROG, "name": "f" * 240}]}, "ribbit.0.name: at most 64 characters"),
    ({"cluster": {"n_workers": 100_000, "processes": False}}, "cluster.n_workers: 100000 local workers of 1 thread"),
])
def test_configuration_errors_stop_before_anything_is_written(work, capsys, sections, needle):
    rc, err = opso(capsys, "run", write_config(work, **sections))
    assert rc == 2 and needle in err and err.count("\n") == 1
    assert not (work / "out").exists()


def test_an_error_found_after_the_inventory_leaves_a_failed_run_and_the_fix_proceeds(work, capsys):
    """With sample_rate: null the rate is known only after the inventory; the band check fails the
    run there (run.json says failed), and the corrected configuration then runs without --overwrite."""
    wrong = write_config(work, spectrogram={"sample_rate": None}, ribbit=[{**FROG, "signal_band": [5000, 6000]}])
    rc, err = opso(capsys, "run", wrong)
    assert rc == 2 and "ribbit.0.signal_band" in err and "the archive's commonest sample rate, 8000 Hz" in err
    status = json.loads((work / "out" / "run.json").read_text())
    assert status["status"] == "failed" and "Nyquist" in status["error"]["message"]
    rc, err = opso(capsys, "status", work / "out")
    assert "failed" in capsys.readouterr().out or rc == 0
    fixed = write_config(work, spectrogram={"sample_rate": None})
    assert opso(capsys, "run", fixed)[0] == 0
    assert json.loads((work / "out" / "run.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("problem", ["missing", "empty"])
def test_missing_or_empty_input(work, capsys, problem):
    (work / "empty").mkdir()
    rc, err = opso(capsys, "run", write_config(work, input_url=work / problem))
    assert rc == 2 and ("does not exist" in err if problem == "missing" else "no files match" in err)
    assert not (work / "out").exists()


def test_all_files_failing_leaves_readable_empty_tables(work, capsys, monkeypatch):
    bad = work / "bad"
    write_bad_files(bad / "rec")
    (bad / "rec" / "truncated.wav").unlink()
    rc, err = opso(capsys, "run", write_config(work, input_url=bad, spectrogram={"sample_rate": None}))
    assert rc == 1 and "no clip could be analysed" in err
    detections = pd.read_parquet(work / "out" / "detections")
    assert len(detections) == 0
    assert list(detections.columns) == ["detector", "class", "file", "recorder", "start_time", "end_time",
                                        "start_time_utc", "score", "common_name"]
    scores = pd.read_parquet(work / "out" / "scores" / "detector=ribbit:frog")
    assert len(scores) == 0 and list(scores.columns)[-1] == "frog"
    failures = pd.read_parquet(work / "out" / "failures.parquet")
    assert set(failures.item.str.split("/").str[-1]) == {"empty.wav", "not_audio.wav", "bad_header.wav"}
    assert json.loads((work / "out" / "run.json").read_text())["status"] == "complete_with_failures"


def test_each_detector_is_read_with_one_call(work, capsys):
    from pipelines.outputs.results import list_detectors, read_detections, read_scores

    config = write_config(work, ribbit=[FROG, {**FROG, "name": "toad", "pulse_rate_range": [3, 8]}])
    assert opso(capsys, "run", config)[0] == 0
    out = str(work / "out")
    assert list_detectors(out) == ["ribbit:frog", "ribbit:toad"]
    for name in ("frog", "toad"):
        scores = read_scores(out, f"ribbit:{name}")
        assert list(scores.columns) == ["file", "recorder", "start_time", "end_time", "start_time_utc", name]
        pd.testing.assert_frame_equal(
            scores, pd.read_parquet(f"{out}/scores/detector=ribbit:{name}").sort_values(["file", "start_time"])
            .reset_index(drop=True))
    assert set(read_detections(out).detector) <= {"ribbit:frog", "ribbit:toad"}
    with pytest.raises(Exception, match=r"has no scores of detector 'ribbit:owl'; it has \['ribbit:frog'"):
        read_scores(out, "ribbit:owl")


@pytest.mark.parametrize(("args", "rc_expected", "needle"), [
    (["run", "{work}"], 2, "is a folder; give the path of a YAML configuration file"),
    (["run", "{config}", "--cluster", "gateway://host:80"], 2, "is not a Dask scheduler address"),
    (["run", "{config}", "--cluster", "kubernetes"], 2, "unknown cluster kind"),
    (["run", "{config}", "--cluster", "slurm"], 2, "cluster.memory_limit: set the memory of one slurm job"),
    (["run", "{dupes}"], 2, "key 'clips' is repeated"),
    (["status", "{work}/nothing"], 2, "no opso run at"),
    (["status", "{work}/x", "--storage-options", "{{not json"], 2, "--storage-options is not valid JSON"),
    (["status", "{work}/x", "--storage-options", "[1]"], 2, "--storage-options must be a JSON object"),
])
def test_user_errors_end_in_one_line(work, capsys, args, rc_expected, needle):
    config = write_config(work)
    dupes = work / "dupes.yaml"
    dupes.write_text(config.read_text() + "clips: {duration: 3}\nclips: {duration: 4}\n")
    args = [a.format(work=work, config=config, dupes=dupes) for a in args]
    rc, err = opso(capsys, *args)
    assert rc == rc_expected and err.startswith("opso: error: ") and needle in err and err.count("\n") == 1


def test_unreachable_scheduler_is_exit_code_3(work, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, err = opso(capsys, "run", write_config(work, cluster={"connect_timeout_s": 1}), "--cluster",
                   f"tcp://127.0.0.1:{port}")
    assert rc == 3 and "cannot reach the Dask scheduler" in err
    assert not (work / "out").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("opso 0.")


def test_status_reads_a_config_or_a_url(work, capsys):
    config = write_config(work)
    assert opso(capsys, "run", config)[0] == 0
    assert opso(capsys, "status", config)[0] == 0
    assert "complete" in capsys.readouterr().out or True
    capsys.readouterr()
    assert main(["status", str(work / "out"), "--json", "--storage-options", "{}"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "complete"


@pytest.mark.s3
def test_wrong_s3_secret_and_unreachable_endpoint(work, capsys, s3_server_with_auth):
    import s3fs

    endpoint, key, secret = s3_server_with_auth
    good = {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint}}
    fs = s3fs.S3FileSystem(**good, skip_instance_cache=True)
    fs.mkdir("field-2024")
    fs.put(str(work / "archive") + "/", "field-2024/archive/", recursive=True)
    ok = write_config(work, "ok.yaml", input_url="s3://field-2024/archive", output_url="s3://field-2024/runs/a",
                      input={"storage_options": good}, output={"storage_options": good})
    assert opso(capsys, "run", ok)[0] == 0

    wrong = {**good, "secret": "not-the-secret"}
    bad_secret = write_config(work, "bad.yaml", input_url="s3://field-2024/archive",
                              output_url="s3://field-2024/runs/b", input={"storage_options": wrong},
                              output={"storage_options": good})
    rc, err = opso(capsys, "run", bad_secret)
    assert rc == 2 and err.startswith("opso: error: cannot list s3://field-2024/archive")
    assert "not-the-secret" not in err

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    nowhere = {**good, "client_kwargs": {"endpoint_url": closed}, "config_kwargs": {"retries": {"max_attempts": 1}}}
    unreachable = write_config(work, "nowhere.yaml", input_url="s3://field-2024/archive",
                               output_url="s3://field-2024/runs/c", input={"storage_options": nowhere},
                               output={"storage_options": good})
    rc, err = opso(capsys, "run", unreachable)
    assert rc == 2 and "cannot list s3://field-2024/archive" in err and "Could not connect" in err

    # the output side: a run.json there is read with the given storage options
    rc, err = opso(capsys, "status", "s3://field-2024/runs/a", "--storage-options", json.dumps(good))
    assert rc == 0
    assert opso(capsys, "status", ok)[0] == 0  # or the configuration file's own options
    rc, err = opso(capsys, "status", "s3://field-2024/runs/a", "--storage-options", json.dumps(wrong))
    assert rc == 2 and err.startswith("opso: error: cannot check s3://field-2024/runs/a/run.json")


def test_gaps_show_in_the_summary_and_the_tables(work, capsys):
    """Files that give no clip and AudioMoth copies whose names and comments disagree are counted in the
    summary and named in the tables, instead of 'ok' and nothing anywhere (the tryout's archive)."""
    import datetime

    import numpy as np
    import soundfile

    from opso_core.testing import tone, write_audiomoth_wav

    odd = work / "archive" / "odd"
    odd.mkdir()
    soundfile.write(odd / "five_frames.wav", np.zeros((5, 2), dtype=np.float32), SR)
    tone(1000, 0.14, SR).save(odd / "short.wav", metadata_format=None)
    moth = tone(1000, 2.0, SR)
    moth.samples = moth.samples[:-1]  # 1.999875 s: one sample short of a 2 s clip
    write_audiomoth_wav(odd / "gps.wav", moth, datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC))
    copy = write_audiomoth_wav(work / "archive" / "moth" / "20180504_093200.WAV", tone(1000, 4.0, SR),
                               datetime.datetime(2018, 5, 4, 9, 32, tzinfo=datetime.UTC)).read_bytes()
    for hour in (1, 3):
        (work / "archive" / "moth" / f"20240501_0{hour}0000.WAV").write_bytes(copy)
    capsys.readouterr()
    rc = main(["-q", "run", str(write_config(work, input={"pattern": "**/*.[wW][aA][vV]"})), "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "files:       8 (5 ok, 0 truncated, 3 shorter than one clip, 0 failed)" in printed
    assert "warnings:    2 files whose name and AudioMoth comment disagree on the start time, 3 files sharing " \
           "a start time with another file of their recorder" in printed
    inventory = pd.read_parquet(work / "out" / "inventory.parquet")
    short = inventory[inventory.status == "no_clips"]
    assert sorted(short.file.str.split("/").str[-1]) == ["five_frames.wav", "gps.wav", "short.wav"]
    assert (short.n_clips == 0).all() and inventory[inventory.status == "ok"].n_clips.min() >= 2
    failures = pd.read_parquet(work / "out" / "failures.parquet")
    assert sorted(failures[failures.error_type == "NoClips"].item.str.split("/").str[-1]) == \
        ["five_frames.wav", "gps.wav", "short.wav"]
    summary = json.loads((work / "out" / "run.json").read_text())["summary"]
    assert summary["n_files_no_clips"] == 3 and summary["status"] == "complete_with_failures"


@pytest.mark.parametrize(("sections", "needle"), [
    ({"clips": {"duration": 1e12}}, "clips.duration: Input should be less than or equal to 3600"),
    ({"clips": {"duration": 1e-9}}, "clips.duration: Input should be greater than or equal to 0.01"),
    ({"clips": {"duration": float("inf")}}, "clips.duration: Input should be a finite number"),
    ({"spectrogram": {"sample_rate": 10**12}}, "spectrogram.sample_rate: Input should be less than or equal to"),
    ({"spectrogram": {"clips_per_chunk": 10**12}}, "spectrogram.clips_per_chunk: Input should be less than"),
    ({"spectrogram": {"clips_per_chunk": 50_000, "store": "full"}}, "Zarr chunks of 2.9 GiB (at most 1.0 GiB"),
    ({"spectrogram": {"task_audio_s": 6e5}}, "spectrogram.task_audio_s: tasks of 300,000 clips"),
    ({"clips": {"duration": 0.05}}, "clips.duration: 0.05 s holds 400 samples"),
    ({"ribbit": [{**FROG, "threshold": float("nan")}]}, "ribbit.0.threshold: Input should be a finite number"),
])
def test_numbers_out_of_bounds_stop_before_the_cluster(work, capsys, sections, needle):
    rc, err = opso(capsys, "run", write_config(work, **sections))
    assert rc == 2 and needle in err and err.count("\n") == 1, err
    assert not (work / "out").exists()


def test_yaml_alias_bombs_are_refused_and_plain_aliases_work(work, capsys):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefgh"):
        prev = "abcdefgh"[i]
        bomb.append(f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, "
                    f"*{prev}, *{prev}]")
    text = write_config(work).read_text().replace("input:\n", "input:\n  storage_options:\n    bomb:\n" + "".join(
        f"      {line}\n" for line in bomb), 1)
    config = work / "bomb.yaml"
    config.write_text(text)
    assert len(text) < 2000
    rc, err = opso(capsys, "run", config)
    assert rc == 2 and "holds 1" in err and "values (at most 100,000)" in err and err.count("\n") == 1
    # PyYAML writes an alias for a value used twice; such files load as they are
    shared = [1800, 2200]
    aliased = work / "aliased.yaml"
    aliased.write_text(yaml.safe_dump({**yaml.safe_load(write_config(work).read_text()),
                                       "ribbit": [{**FROG, "signal_band": shared},
                                                  {**FROG, "name": "toad", "signal_band": shared}]}))
    assert "*id001" in aliased.read_text()
    from pipelines.config import load_config

    assert load_config(aliased, environ={}).ribbit[1].signal_band == (1800, 2200)


def test_long_values_are_elided_in_the_error_line(work, capsys):
    rc, err = opso(capsys, "run", write_config(work, output={"url": "/tmp/" + "x" * 10_000_000}))
    assert rc == 2 and "is 10,000," in err and "bytes; opso configurations are a few kB" in err  # refused whole
    long = "y" * 400_000  # within the size limit; echoed in the message whole before
    rc, err = opso(capsys, "run", write_config(work, input_url=work / long, output_url=work / long / "out"))
    assert rc == 2 and err.count("\n") == 1 and len(err) < 5000, len(err)
    assert "output.url" in err and "characters]" in err


def test_the_home_folder_is_not_an_output_folder(work, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(work / "home"))
    (work / "home").mkdir()
    for url in ("~", str(work / "home"), "/"):
        rc, err = opso(capsys, "run", write_config(work, output={"url": url}))
        assert rc == 2 and "your home folder or a folder above it" in err, err
    assert list((work / "home").iterdir()) == []


def test_an_audio_file_given_as_a_model_is_named_as_such(work, capsys):
    wav = next((work / "archive").rglob("*.WAV"))
    rc, err = opso(capsys, "run", write_config(work, cnn=[{"name": "owl", "model": str(wav), "threshold": 0.5}]))
    assert rc == 2 and "is a WAV audio file, not a model in opso's safe format" in err and "pickle" not in err


def test_all_failed_says_what_failed(work, capsys):
    bad = work / "bad"
    write_bad_files(bad / "rec")
    (bad / "rec" / "truncated.wav").unlink()
    rc, err = opso(capsys, "run", write_config(work, input_url=bad, spectrogram={"sample_rate": None}))
    assert rc == 1
    lines = err.strip().splitlines()
    assert lines[0] == "opso: no clip could be analysed: no input file held readable audio (see failures.parquet)"
    assert lines[1].startswith("  inventory: 3 AudioFormatError (e.g. ")


def test_status_prints_a_summary_and_survives_a_closed_pipe(work, capsys):
    import subprocess
    import sys

    config = write_config(work)
    assert opso(capsys, "run", config)[0] == 0
    capsys.readouterr()
    assert main(["status", str(work / "out")]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"run at {work / 'out'}\n  state:       complete\n")
    assert "  lock:        free (released 20" in shown and " by host " in shown
    assert "  files:       2 (2 ok, 0 truncated, 0 shorter than one clip, 0 failed)" in shown
    assert "{" not in shown  # no dictionaries or raw floats
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "status", str(work / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `opso status ... | head -0`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and "Traceback" not in err and "Exception ignored" not in err, err


def test_status_of_a_run_before_its_run_json(work, capsys):
    """A run in its checks or starting its cluster holds the folder but has no run.json yet."""
    from pipelines.outputs.location import OutputLocation
    from pipelines.outputs.run_lock import RunLock

    lock = RunLock(OutputLocation(str(work / "out"))).acquire()
    try:
        capsys.readouterr()
        assert main(["status", str(work / "out")]) == 0
        shown = capsys.readouterr().out
        assert "state:       starting: the run holds the folder" in shown and "lock:        held by host" in shown
    finally:
        lock.release()


def test_an_output_url_that_is_a_file_or_holds_a_huge_number(work, capsys):
    (work / "afile").write_text("x")
    rc, err = opso(capsys, "run", write_config(work, output_url=work / "afile"))
    assert rc == 2 and "is a file; give a folder" in err
    config = write_config(work)
    config.write_text(config.read_text().replace("threshold: 0.02", "threshold: " + "9" * 5000))
    rc, err = opso(capsys, "run", config)
    assert rc == 2 and "an integer of more than 4,300 digits" in err
