"""Whole-file spectrogram throughput: per-clip ``Spectrogram.from_audio`` vs the batch path.

Splits a synthetic recording into clips and computes every clip's spectrogram three ways, in this
process, and prints audio-hours processed per wall-clock hour and the ratio to the reference
(a Python loop over ``scipy.signal.spectrogram``, i.e. what OpenSoundscape 0.9.0 does per clip).

    python benchmarks/spectrogram_throughput.py [--minutes 10] [--clip 2] [--sr 32000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.signal


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    from opso_core import Audio, Spectrogram
    from opso_core.spectrogram import SpectrogramParams, spectrograms_from_clips

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="audio length [10]")
    parser.add_argument("--clip", type=float, default=2.0, help="clip duration in seconds [2]")
    parser.add_argument("--sr", type=int, default=32000, help="sample rate in Hz [32000]")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions, best kept [3]")
    parser.add_argument("--batch", type=int, default=64, help="clips per batch call [64]")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    audio = Audio((0.1 * rng.standard_normal(int(args.minutes * 60 * args.sr))).astype(np.float32), args.sr)
    clips, _ = audio.split(args.clip)
    batch = np.stack([c.samples for c in clips])
    params = SpectrogramParams.resolve(args.sr)
    hours = len(clips) * args.clip / 3600

    def reference():
        for c in clips:
            _, _, p = scipy.signal.spectrogram(c.samples, args.sr, window="hann", nperseg=512, noverlap=256,
                                               scaling="spectrum")
            with np.errstate(divide="ignore"):
                np.clip(10 * np.log10(p), -100, -20)

    def per_clip():
        for c in clips:
            Spectrogram.from_audio(c)

    def batched():
        for i in range(0, len(batch), args.batch):
            spectrograms_from_clips(batch[i : i + args.batch], args.sr, params=params)

    rows = [("reference: scipy.signal.spectrogram per clip", best_of(reference, args.repeats)),
            ("Spectrogram.from_audio per clip", best_of(per_clip, args.repeats)),
            (f"spectrograms_from_clips, {args.batch} clips per call", best_of(batched, args.repeats))]
    ref_s = rows[0][1]
    print(f"{len(clips)} clips of {args.clip} s at {args.sr} Hz ({hours:.3f} audio hours), "
          f"512-sample windows, 50% overlap, best of {args.repeats}")
    print(f"{'method':<48} {'wall s':>8} {'audio-h/h':>11} {'vs ref':>7}")
    for name, s in rows:
        print(f"{name:<48} {s:8.3f} {hours / (s / 3600):11.0f} {ref_s / s:7.2f}")


if __name__ == "__main__":
    main()
