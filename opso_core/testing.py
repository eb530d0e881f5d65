"""Deterministic synthetic signals, AudioMoth-style files and small archives for tests and demos.

Everything here is reproducible: random parts take a ``seed``. Levels are linear amplitudes in
[-1, 1] unless a name says dBFS.

Examples
--------
>>> from opso_core import testing
>>> frog = testing.pulse_train(pulse_rate_hz=12, carrier_hz=2000, duration_s=3.0, sample_rate_hz=22050)
>>> round(frog.duration, 3)
3.0
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from opso_core.audio import Audio
from opso_core.errors import OpsoValueError

__all__ = [
    "SPEED_OF_SOUND_M_S",
    "ArchiveEvent",
    "SyntheticArchive",
    "audiomoth_comment",
    "audiomoth_file_name",
    "clicks",
    "fm_sweep",
    "make_archive",
    "noise",
    "pulse_train",
    "tone",
    "write_audiomoth_wav",
    "write_bad_files",
]

#: Speed of sound (m/s) used to delay events between recorders.
SPEED_OF_SOUND_M_S = 343.0


def _n_samples(duration_s, sample_rate_hz) -> int:
    if duration_s < 0 or sample_rate_hz <= 0:
        raise OpsoValueError("duration_s must be >= 0 and sample_rate_hz > 0")
    return int(round(duration_s * sample_rate_hz))


def tone(frequency_hz, duration_s, sample_rate_hz, amplitude=0.5, phase_rad=0.0) -> Audio:
    """A pure sine tone ``amplitude * sin(2π f t + phase)``."""
    t = np.arange(_n_samples(duration_s, sample_rate_hz)) / sample_rate_hz
    return Audio((amplitude * np.sin(2 * np.pi * frequency_hz * t + phase_rad)).astype(np.float32),
                 sample_rate_hz)


def pulse_train(pulse_rate_hz, carrier_hz, duration_s, sample_rate_hz, amplitude=0.5, duty_cycle=0.5,
                start_s=0.0) -> Audio:
    """A tone gated on and off ``pulse_rate_hz`` times per second (a pulsed "frog" call).

    Each pulse has a raised-cosine (Hann) envelope lasting ``duty_cycle / pulse_rate_hz`` seconds,
    so the amplitude envelope repeats exactly at ``pulse_rate_hz`` — the quantity RIBBIT measures.
    The first pulse starts at ``start_s``.
    """
    if pulse_rate_hz <= 0 or not 0 < duty_cycle <= 1:
        raise OpsoValueError("pulse_rate_hz must be > 0 and duty_cycle in (0, 1]")
    n = _n_samples(duration_s, sample_rate_hz)
    t = np.arange(n) / sample_rate_hz
    phase = ((t - start_s) * pulse_rate_hz) % 1.0  # position within the pulse period, 0..1
    envelope = np.where((t >= start_s) & (phase < duty_cycle),
                        0.5 - 0.5 * np.cos(2 * np.pi * phase / duty_cycle), 0.0)
    samples = amplitude * envelope * np.sin(2 * np.pi * carrier_hz * t)
    return Audio(samples.astype(np.float32), sample_rate_hz)


def fm_sweep(start_hz, end_hz, duration_s, sample_rate_hz, amplitude=0.5, method="linear") -> Audio:
    """A frequency sweep from ``start_hz`` to ``end_hz`` (``scipy.signal.chirp`` methods)."""
    from scipy.signal import chirp

    n = _n_samples(duration_s, sample_rate_hz)
    t = np.arange(n) / sample_rate_hz
    samples = amplitude * chirp(t, f0=start_hz, t1=max(duration_s, 1e-12), f1=end_hz, method=method)
    return Audio(samples.astype(np.float32), sample_rate_hz)


def clicks(times_s: Sequence[float], duration_s, sample_rate_hz, amplitude=0.9, click_samples=8) -> Audio:
    """Silence with short broadband clicks (``click_samples`` samples of a decaying impulse) at ``times_s``."""
    n = _n_samples(duration_s, sample_rate_hz)
    samples = np.zeros(n, dtype=np.float32)
    shape = amplitude * np.exp(-np.arange(click_samples) / max(click_samples / 4, 1))
    for t in times_s:
        i = int(round(t * sample_rate_hz))
        if 0 <= i < n:
            seg = samples[i : i + click_samples]
            seg += shape[: len(seg)].astype(np.float32)
    return Audio(samples, sample_rate_hz)


def noise(duration_s, sample_rate_hz, color="pink", dBFS=-40, seed=0) -> Audio:
    """Coloured noise (white, pink, brown, blue, violet) at an RMS level of ``dBFS``."""
    return Audio.noise(duration_s, sample_rate_hz, color=color, dBFS=dBFS, seed=seed)


def audiomoth_comment(start_time: datetime.datetime, device_id="24F319055FDF2D37", gain="medium",
                      battery_v=4.2, temperature_c=None) -> str:
    """The comment-tag sentence AudioMoth firmware 1.6+ writes, for an aware ``start_time``.

    ``gain`` may be a word ("medium") or a number (old "gain setting 2" firmware phrasing).
    """
    if start_time.tzinfo is None:
        raise OpsoValueError("start_time must be time-zone aware")
    offset = start_time.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    if minutes == 0:
        zone = "UTC"
    else:
        sign = "+" if minutes > 0 else "-"
        h, m = divmod(abs(minutes), 60)
        zone = f"UTC{sign}{h}" + (f":{m:02d}" if m else "")
    gain_text = f"gain setting {gain}" if isinstance(gain, int) else f"{gain} gain"
    text = (f"Recorded at {start_time:%H:%M:%S %d/%m/%Y} ({zone}) by AudioMoth {device_id} at "
            f"{gain_text} while battery was {battery_v:.1f}V")
    if temperature_c is not None:
        text += f" and temperature was {temperature_c:.1f}C"
    return text + "."


def audiomoth_file_name(start_time: datetime.datetime, extension=".WAV") -> str:
    """AudioMoth file name ``YYYYMMDD_HHMMSS.WAV`` for ``start_time`` in UTC."""
    if start_time.tzinfo is not None:
        start_time = start_time.astimezone(datetime.UTC)
    return f"{start_time:%Y%m%d_%H%M%S}{extension}"


def write_audiomoth_wav(path, audio: Audio, start_time: datetime.datetime, device_id="24F319055FDF2D37",
                        gain="medium", battery_v=4.2, temperature_c=15.0, subtype="PCM_16") -> Path:
    """Write ``audio`` as an AudioMoth-style WAV: ``artist`` and ``comment`` tags as the firmware writes them."""
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with soundfile.SoundFile(path, "w", samplerate=audio.sample_rate, channels=1, subtype=subtype,
                             format="WAV") as sf:
        sf.artist = f"AudioMoth {device_id}"
        sf.comment = audiomoth_comment(start_time, device_id, gain, battery_v, temperature_c)
        sf.write(np.clip(audio.samples, -1, 1))
    return path


def write_bad_files(folder) -> dict[str, Path]:
    """Write one file of each kind that must not crash a reader, into ``folder``.

    Returns
    -------
    dict
        ``empty`` (0 bytes), ``truncated`` (WAV cut to half its declared data), ``not_audio`` (a
        text file named .wav), ``bad_header`` (RIFF header with a corrupt fmt chunk).
    """
    import soundfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["empty"] = folder / "empty.wav"
    files["empty"].write_bytes(b"")
    full = folder / "_full.wav"
    soundfile.write(full, tone(1000, 2.0, 8000).samples, 8000, subtype="PCM_16")
    data = full.read_bytes()
    full.unlink()
    files["truncated"] = folder / "truncated.wav"
    files["truncated"].write_bytes(data[: 44 + (len(data) - 44) // 2])
    files["not_audio"] = folder / "not_audio.wav"
    files["not_audio"].write_text("this is a field note, not a recording\n" * 20)
    files["bad_header"] = folder / "bad_header.wav"
    files["bad_header"].write_bytes(b"RIFF" + data[4:12] + b"fmt " + b"\xff" * 24 + data[36:200])
    return files


@dataclasses.dataclass(frozen=True, slots=True)
class ArchiveEvent:
    """One synthetic call: ``kind`` at ``source_xyz_m``, emitted at ``time_utc``."""

    event_id: int
    kind: str
    time_utc: datetime.datetime
    duration_s: float
    source_xyz_m: tuple[float, float, float]
    pulse_rate_hz: float | None = None
    carrier_hz: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SyntheticArchive:
    """A generated archive and its ground truth.

    Attributes
    ----------
    root : Path
    files : pandas.DataFrame
        One row per file: ``file, recorder, start_time_utc, duration_s, sample_rate_hz``.
    recorders : pandas.DataFrame
        ``recorder, x, y, z`` (metres).
    events : pandas.DataFrame
        One row per (event, file) the event is heard in: ``event_id, kind, file, recorder,
        start_time, end_time`` (s from the file start, after propagation delay),
        ``time_utc, delay_s, pulse_rate_hz, carrier_hz, source_x, source_y, source_z``.
    """

    root: Path
    files: pd.DataFrame
    recorders: pd.DataFrame
    events: pd.DataFrame


def make_archive(root, n_recorders=3, files_per_recorder=2, file_duration_s=30.0, sample_rate_hz=16000,
                 start_time_utc=datetime.datetime(2024, 5, 1, 6, 0, tzinfo=datetime.UTC),
                 frog_calls_per_file=2, frog_pulse_rate_hz=12.0, frog_carrier_hz=2000.0,
                 frog_duration_s=3.0, other_sounds=True, noise_dBFS=-50, spacing_m=50.0,
                 layout="line", frog_pulse_jitter=0.0, seed=0) -> SyntheticArchive:
    """Generate a multi-recorder archive of AudioMoth-style WAV files with known events.

    Recorders sit ``spacing_m`` apart on a line (``layout="line"``) or on a square grid filled row by
    row (``layout="grid"``, for localization in 2-D); sub-folders ``rec00``, ``rec01``, ..., all
    recording the same consecutive files (``YYYYMMDD_HHMMSS.WAV``, UTC). Each file period holds
    ``frog_calls_per_file`` pulsed frog calls from random positions near the array (on a grid: inside
    it), heard by each recorder after the travel delay and attenuated with distance (1/r beyond 10 m);
    ``frog_pulse_jitter`` (0-1) varies the loudness of each pulse at random, the same at every recorder,
    as real calls vary (an exactly periodic call correlates equally well at every pulse period); ``other_sounds`` adds FM sweeps
    (bird-like) and clicks that are *not* frogs; pink noise is everywhere.

    Returns
    -------
    SyntheticArchive
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    if layout == "line":
        positions = np.array([[i * spacing_m, 0.0, 0.0] for i in range(n_recorders)])
    elif layout == "grid":
        cols = int(np.ceil(np.sqrt(n_recorders)))
        positions = np.array([[(i % cols) * spacing_m, (i // cols) * spacing_m, 0.0] for i in range(n_recorders)])
    else:
        raise OpsoValueError(f"layout must be 'line' or 'grid', got {layout!r}")
    if not 0 <= frog_pulse_jitter <= 1:
        raise OpsoValueError(f"frog_pulse_jitter must be in [0, 1], got {frog_pulse_jitter}")
    pulse_gains = {}
    recorders = pd.DataFrame({"recorder": [f"rec{i:02d}" for i in range(n_recorders)],
                              "x": positions[:, 0], "y": positions[:, 1], "z": positions[:, 2]})
    # events per file period (the same for all recorders)
    events = []
    eid = 0
    for k in range(files_per_recorder):
        period_start = start_time_utc + datetime.timedelta(seconds=k * file_duration_s)
        slots = np.linspace(1.0, file_duration_s - frog_duration_s - 1.5, max(frog_calls_per_file, 1))
        for j in range(frog_calls_per_file):
            t0 = float(slots[j] + rng.uniform(-0.3, 0.3)) if frog_calls_per_file > 1 else float(slots[0])
            if layout == "grid":
                src = (float(rng.uniform(0, positions[:, 0].max())), float(rng.uniform(0, positions[:, 1].max())), 0.0)
            else:
                src = (float(rng.uniform(0, max(spacing_m * (n_recorders - 1), 1))), float(rng.uniform(-20, 20)), 0.0)
            if frog_pulse_jitter:  # drawn only then: archives without jitter stay as they were
                pulse_gains[eid] = 1.0 - frog_pulse_jitter * rng.uniform(0, 1, int(frog_duration_s * frog_pulse_rate_hz) + 2)
            events.append(ArchiveEvent(eid, "frog", period_start + datetime.timedelta(seconds=t0),
                                       frog_duration_s, src, frog_pulse_rate_hz, frog_carrier_hz))
            eid += 1
        if other_sounds:
            t0 = float(rng.uniform(0.5, file_duration_s - 2.0))
            src = (float(rng.uniform(0, spacing_m)), float(rng.uniform(-20, 20)), 0.0)
            events.append(ArchiveEvent(eid, "bird", period_start + datetime.timedelta(seconds=t0), 1.0, src,
                                       None, 4000.0))
            eid += 1

    file_rows, event_rows = [], []
    for r, rec in enumerate(recorders["recorder"]):
        for k in range(files_per_recorder):
            period_start = start_time_utc + datetime.timedelta(seconds=k * file_duration_s)
            audio_noise = Audio.noise(file_duration_s, sample_rate_hz, color="pink", dBFS=noise_dBFS,
                                      seed=int(rng.integers(1 << 31)))
            samples = audio_noise.samples.astype(np.float64)
            for ev in events:
                offset_s = (ev.time_utc - period_start).total_seconds()
                if not 0 <= offset_s < file_duration_s:
                    continue
                dist = float(np.linalg.norm(positions[r] - np.array(ev.source_xyz_m)))
                delay_s = dist / SPEED_OF_SOUND_M_S
                gain = 0.5 / max(dist / 10.0, 1.0)
                if ev.kind == "frog":
                    sound = pulse_train(ev.pulse_rate_hz, ev.carrier_hz, ev.duration_s, sample_rate_hz,
                                        amplitude=gain)
                    if frog_pulse_jitter:
                        pulse = (np.arange(len(sound.samples)) / sample_rate_hz * ev.pulse_rate_hz).astype(int)
                        sound = Audio((sound.samples * pulse_gains[ev.event_id][pulse]).astype(np.float32),
                                      sample_rate_hz)
                else:
                    sound = fm_sweep(3000, 6000, ev.duration_s, sample_rate_hz, amplitude=gain)
                start = int(round((offset_s + delay_s) * sample_rate_hz))
                piece = sound.samples[: max(0, len(samples) - start)]
                samples[start : start + len(piece)] += piece
                event_rows.append(dict(
                    event_id=ev.event_id, kind=ev.kind, recorder=rec,
                    start_time=(offset_s + delay_s), end_time=min(offset_s + delay_s + ev.duration_s,
                                                                  file_duration_s),
                    time_utc=ev.time_utc, delay_s=delay_s, pulse_rate_hz=ev.pulse_rate_hz,
                    carrier_hz=ev.carrier_hz, source_x=ev.source_xyz_m[0], source_y=ev.source_xyz_m[1],
                    source_z=ev.source_xyz_m[2], file_index=k))
            if other_sounds:
                click_times = rng.uniform(0, file_duration_s, size=3)
                samples += clicks(click_times, file_duration_s, sample_rate_hz, amplitude=0.3).samples
            path = root / rec / audiomoth_file_name(period_start)
            write_audiomoth_wav(path, Audio(np.clip(samples, -1, 1).astype(np.float32), sample_rate_hz),
                                period_start, device_id=f"24F3190{r:09X}")
            file_rows.append(dict(file=os.fspath(path), recorder=rec, start_time_utc=period_start,
                                  duration_s=file_duration_s, sample_rate_hz=sample_rate_hz,
                                  file_index=k))
    files = pd.DataFrame(file_rows)
    events_df = pd.DataFrame(event_rows)
    if len(events_df):
        events_df = events_df.merge(files[["recorder", "file_index", "file"]], on=["recorder", "file_index"])
        events_df = events_df.drop(columns="file_index").sort_values(["file", "start_time"]).reset_index(drop=True)
    return SyntheticArchive(root=root, files=files.drop(columns="file_index"), recorders=recorders,
                            events=events_df)
