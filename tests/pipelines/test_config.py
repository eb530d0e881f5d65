import pytest

from pipelines.config import load_config
from pipelines.errors import ConfigError

BASE = {"input": {"url": "/data"}, "output": {"url": "/out"}}


def with_(**sections):
    cfg = {k: dict(v) for k, v in BASE.items()}
    for key, value in sections.items():
        cfg[key] = value
    return cfg


def test_defaults():
    cfg = load_config(BASE, environ={})
    assert cfg.clips.duration == 2.0 and cfg.clips.final_clip is None
    assert cfg.spectrogram.window_samples == 512 and cfg.spectrogram.decibel_limits == (-100, -20)
    assert cfg.cluster.kind == "local" and cfg.cluster.threads_per_worker == 1
    assert cfg.ribbit == []


def test_architecture_example(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("""
input:
  url: s3://my-bucket/aru-2024/
  pattern: "**/*.WAV"
  storage_options: {anon: false}
  recorder: parent_dir
  timezone: UTC
output:
  url: s3://my-bucket/runs/frogs-2024/
clips: {duration: 2.0, overlap: 0.0, final_clip: null}
spectrogram: {sample_rate: 32000, window_samples: 512, overlap_fraction: 0.5, decibel_limits: [-100, -20]}
ribbit:
  - {name: gpt, signal_band: [1800, 2400], pulse_rate_range: [8, 15], noise_bands: [[0, 1000], [3000, 3200]], threshold: 1.0e-12}
cluster: {kind: local, n_workers: null, threads_per_worker: 1}
""")
    cfg = load_config(path, environ={})
    assert cfg.ribbit[0].noise_bands == [(0, 1000), (3000, 3200)]
    assert "storage_options" not in cfg.public_dict()["input"]


@pytest.mark.parametrize(("cfg", "needle"), [
    (with_(clips={"duraton": 2}), "clips.duraton: unknown key"),
    (with_(clips={"duration": -1}), "clips.duration"),
    (with_(clips={"duration": 2, "overlap": 2}), "overlap"),
    (with_(clips={"final_clip": "remainder"}), "remainder"),
    (with_(spectrogram={"overlap_fraction": 1.5}), "spectrogram.overlap_fraction"),
    (with_(spectrogram={"decibel_limits": [0, -10]}), "decibel_limits"),
    (with_(ribbit=[{"name": "a b", "signal_band": [1, 2], "pulse_rate_range": [1, 2], "threshold": 1}]),
     "ribbit.0.name"),
    (with_(ribbit=[{"name": "a", "signal_band": [2, 1], "pulse_rate_range": [1, 2], "threshold": 1}]),
     "ribbit.0.signal_band"),
    (with_(ribbit=[{"name": "a", "signal_band": [1, 2], "pulse_rate_range": [1, 2]}]), "ribbit.0.threshold"),
    (with_(ribbit=[{"name": "a", "signal_band": [1, 2], "pulse_rate_range": [1, 2], "threshold": 1}] * 2),
     "unique"),
    (with_(input={"url": "/d", "recorder": "(no group)"}), "input.recorder"),
    (with_(input={"url": "/d", "timezone": "Mars/Base"}), "input.timezone"),
    (with_(cnn=[{"name": "x", "threshold": 0.5}]), "cnn.0.model: required key is missing"),
    (with_(cnn=[{"name": "x", "model": "m", "threshold": 0.5, "activation": "relu"}]), "cnn.0.activation"),
    (with_(localization={"detector": "ribbit:x"}), "localization"),
    ({"output": {"url": "/o"}}, "input: required key is missing"),
    (with_(extra_section={}), "extra_section: unknown key"),
    (with_(ribbit=[{"name": "a", "signal_band": [1, 2], "pulse_rate_range": [1, 2], "threshold": 1,
                    "noise_bands": [[0, 100], [1000, 0]]}]), "ribbit.0.noise_bands: entry 1 ([1000.0, 0.0])"),
    (with_(spectrogram={"window_type": "hannn"}), "unknown window_type 'hannn'"),
    (with_(spectrogram={"window_samples": 512, "fft_size": 256}), "fft_size (256) must be >= window_samples"),
    (with_(spectrogram={"sample_rate": 8000}, ribbit=[{"name": "a", "signal_band": [19000, 25000],
                                                       "pulse_rate_range": [1, 2], "threshold": 1}]),
     "ribbit.0.signal_band: [19000, 25000] lies entirely above the Nyquist frequency (4000 Hz)"),
    (with_(spectrogram={"sample_rate": 8000}, ribbit=[{"name": "a", "signal_band": [100, 200], "threshold": 1,
                                                       "noise_bands": [[5000, 6000]], "pulse_rate_range": [1, 2]}]),
     "ribbit.0.noise_bands.0: [5000, 6000] lies entirely above"),
    (with_(cluster={"kind": "gateway://host:80"}), "cluster.kind: 'gateway://host:80' is not a Dask scheduler"),
    (with_(cluster={"kind": "yarn"}), "cluster.kind: unknown cluster kind 'yarn'"),
    (with_(cluster={"memory_limit": "lots"}), "cluster.memory_limit: 'lots' is not an amount of memory"),
    (with_(cluster={"jobqueue": {"memory": "4GB"}}), "set cluster.memory_limit instead of jobqueue.memory"),
])
def test_errors_name_the_key(cfg, needle):
    with pytest.raises(ConfigError) as info:
        load_config(cfg, environ={})
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_partly_unmeasurable_bands_warn(caplog):
    cfg = with_(spectrogram={"sample_rate": 8000},
                ribbit=[{"name": "a", "signal_band": [3000, 5000], "pulse_rate_range": [9, 20], "threshold": 1}])
    with caplog.at_level("WARNING"):
        load_config(cfg, environ={})
    text = caplog.text
    assert "ribbit.0.signal_band: [3000, 5000] reaches above the Nyquist frequency (4000 Hz)" in text
    assert "ribbit.0.pulse_rate_range: [9, 20] reaches above the highest pulse rate (15.625 Hz)" in text


def test_repeated_keys_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("input: {url: /a}\noutput: {url: /b}\nclips: {duration: 2}\nclips: {duration: 3}\n")
    with pytest.raises(ConfigError, match=r"key 'clips' is repeated; keep one \(line 4, column 1\)"):
        load_config(path, environ={})
    path.write_text("input: {url: /a, url: /c}\noutput: {url: /b}\n")
    with pytest.raises(ConfigError, match="key 'url' is repeated"):
        load_config(path, environ={})


def test_a_folder_is_not_a_configuration(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give the path of a YAML configuration file"):
        load_config(tmp_path, environ={})


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)


def test_environment_overrides():
    cfg = load_config(BASE, environ={"OPSO__OUTPUT__URL": "s3://b/run", "OPSO__CLIPS__DURATION": "5"})
    assert cfg.output.url == "s3://b/run" and cfg.clips.duration == 5.0
    with pytest.raises(ConfigError, match=r"clips.bogus \(set by the environment variable OPSO__CLIPS__BOGUS\): "
                                          "unknown key"):
        load_config(BASE, environ={"OPSO__CLIPS__BOGUS": "1"})
    with pytest.raises(ConfigError, match=r"clips.duration \(set by the environment variable OPSO__CLIPS__DURATION"):
        load_config(BASE, environ={"OPSO__CLIPS__DURATION": "-1"})
    with pytest.raises(ConfigError) as found:  # an error of the file's own keys names no variable
        load_config(with_(clips={"duration": -1}), environ={"OPSO__OUTPUT__URL": "s3://b/run"})
    assert "environment" not in str(found.value)


def test_fingerprint_ignores_credentials_cluster_and_output():
    a = load_config(BASE, environ={})
    b = load_config(with_(input={"url": "/data", "storage_options": {"secret": "x"}},
                          cluster={"kind": "slurm"}, output={"url": "/elsewhere"}), environ={})
    c = load_config(with_(clips={"duration": 3}), environ={})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_cli_reports_config_errors_before_any_work(tmp_path, capsys):
    from pipelines.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(f"input: {{url: {tmp_path}}}\noutput: {{url: {tmp_path / 'out'}}}\nclips: {{duraton: 2}}\n")
    assert main(["run", str(path)]) == 2
    assert "clips.duraton: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_run_with_nothing_to_compute_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="nothing to compute"):
        load_config({"input": {"url": str(tmp_path)}, "output": {"url": str(tmp_path / "out")},
                     "spectrogram": {"store": "none"}}, environ={})


def test_a_negative_ribbit_threshold_is_refused():
    """RIBBIT scores are the peak of a power spectral density (>= 0): a negative threshold would make every
    clip a detection."""
    ribbit = {"name": "frog", "signal_band": [1800, 2200], "pulse_rate_range": [9, 15], "threshold": -1}
    with pytest.raises(ConfigError, match="ribbit.0.threshold: Input should be greater than or equal to 0"):
        load_config(with_(ribbit=[ribbit]), environ={})


def test_a_cnn_device_torch_cannot_name_is_refused_with_the_configuration():
    cnn = {"name": "owl", "model": "owl.model", "threshold": 0.5}
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert load_config(with_(cnn=[{**cnn, "device": device}]), environ={}).cnn[0].device == device
    for device in ("tpu", "gpu", "cuda1", ""):
        with pytest.raises(ConfigError, match="cnn.0.device: String should match pattern"):
            load_config(with_(cnn=[{**cnn, "device": device}]), environ={})
