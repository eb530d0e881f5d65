"""Sound source localization from synchronized recorder arrays (``opensoundscape.localization``).

Positions are Cartesian, in metres (e.g. UTM), ``(x, y)`` or ``(x, y, z)``; times in seconds. A
time difference of arrival (TDOA) of receiver ``i`` is its arrival time minus the reference
receiver's (positive: the sound reached ``i`` later).

Solvers, each exact for exact TDOAs in 2-D and 3-D with any reference receiver:

- :func:`gillette_localize`: the linear closed form of Gillette & Silverman (2008), solved for the
  source and its range to the reference receiver (``d + 2`` receivers in ``d`` dimensions).
  OpenSoundscape 0.9.0 used the range differences where the paper has their squares, which put
  sources about 15 m off with exact delays (see ``docs/deviations.md``).
- :func:`soundfinder_localize`: the GPS ("Bancroft") inversion of Sound Finder (Wilson et al. 2014)
  in Lorentz space (``d + 1`` receivers).
- :func:`least_squares_localize`: non-linear least squares on the range differences
  (``scipy.optimize.least_squares``), started from the receivers' centroid and from the closed-form
  solution, whichever ends lower: the most accurate with noisy delays.

:class:`SynchronizedRecorderArray` groups detections of nearby recorders into
:class:`SpatialEvent` objects, estimates their delays by generalized cross correlation and
localizes them.
"""

from __future__ import annotations

import logging

import numpy as np

from opso_core.errors import OpsoError, OpsoValueError

__all__ = [
    "LOCALIZATION_ALGORITHMS",
    "InsufficientReceiversError",
    "SpatialEvent",
    "SynchronizedRecorderArray",
    "calc_speed_of_sound",
    "calculate_tdoa_residuals",
    "delay_between",
    "delay_from_file",
    "gillette_localize",
    "least_squares_localize",
    "localize",
    "lorentz_ip",
    "soundfinder_localize",
    "travel_time",
]

logger = logging.getLogger(__name__)

#: Algorithms accepted by :func:`localize`.
LOCALIZATION_ALGORITHMS = ("gillette", "soundfinder", "least_squares")

SPEED_OF_SOUND = 343.0  # m/s in air at 20 degrees C


class InsufficientReceiversError(OpsoValueError):
    """Too few receivers (or usable delays) to localize an event."""


class _NotImplemented(OpsoError, NotImplementedError):
    """An option OpenSoundscape documents but never implemented."""


def calc_speed_of_sound(temperature=20):
    """Speed of sound in dry air, m/s, at ``temperature`` degrees Celsius: ``331.3 * sqrt(1 + T / 273.15)``.

    Humidity changes it by well under 1 % and is ignored.
    """
    return 331.3 * np.sqrt(1 + temperature / 273.15)


def lorentz_ip(u, v=None):
    """Lorentz inner product of two vectors of shape (3,) or (4,): the Euclidean product of all but
    the last components minus the product of the last ones (``v = u`` when ``v`` is None)."""
    u = np.asarray(u, dtype=float)
    v = u if v is None else np.asarray(v, dtype=float)
    if u.shape != v.shape or u.ndim != 1 or u.shape[0] < 2:
        raise OpsoValueError(f"lorentz_ip takes two vectors of one shape, (3,) or (4,); got {u.shape} and {v.shape}")
    return float(np.dot(u[:-1], v[:-1]) - u[-1] * v[-1])


def travel_time(source, receiver, speed_of_sound):
    """Seconds for sound to travel from ``source`` to ``receiver`` (positions in metres, speed in m/s)."""
    return float(np.linalg.norm(np.asarray(receiver, dtype=float) - np.asarray(source, dtype=float)) / speed_of_sound)


def _positions_and_times(receiver_positions, arrival_times, min_receivers_extra: int, algorithm: str):
    positions = np.asarray(receiver_positions, dtype=float)
    times = np.asarray(arrival_times, dtype=float)
    if positions.ndim != 2 or positions.shape[1] not in (2, 3):
        raise OpsoValueError(f"receiver_positions must be a list of [x, y] or [x, y, z] positions in metres; "
                             f"got an array of shape {positions.shape}")
    if times.shape != (positions.shape[0],):
        raise OpsoValueError(f"{positions.shape[0]} receiver positions but {times.size} arrival times; give one "
                             "time per receiver")
    if not (np.isfinite(positions).all() and np.isfinite(times).all()):
        raise OpsoValueError("receiver positions and arrival times must be finite numbers")
    needed = positions.shape[1] + min_receivers_extra
    if positions.shape[0] < needed:
        raise InsufficientReceiversError(f"{algorithm} needs at least {needed} receivers in {positions.shape[1]}-D; "
                                         f"got {positions.shape[0]}")
    return positions, times


def gillette_localize(receiver_positions, arrival_times, speed_of_sound=343):
    """Source position from TDOAs by the linear closed form of Gillette & Silverman (2008).

    With the reference receiver ``0`` (the one whose time is 0) at ``x0``, the range differences
    ``d_i = c * t_i`` and the unknown range ``r0`` from the source ``s`` to ``x0``, every other
    receiver gives one linear equation::

        2 (x_i - x0) . s + 2 d_i r0 = |x_i|^2 - |x0|^2 - d_i^2

    solved by least squares for ``(s, r0)``.

    Parameters
    ----------
    receiver_positions : array-like, shape (n, 2) or (n, 3)
        Metres; ``n >= d + 2`` in ``d`` dimensions.
    arrival_times : array-like, shape (n,)
        TDOAs in seconds relative to one of the receivers, whose value is exactly 0.
    speed_of_sound : float
        m/s.

    Returns
    -------
    numpy.ndarray, shape (d,)
        The source position in metres.
    """
    positions, times = _positions_and_times(receiver_positions, arrival_times, 2, "gillette_localize")
    zeros = np.flatnonzero(times == 0)
    if zeros.size == 0:
        raise OpsoValueError("gillette_localize takes time differences relative to one receiver, whose time is 0; "
                             "subtract that receiver's arrival time from every time")
    ref = zeros[0]
    others = np.delete(np.arange(len(times)), ref)
    x0 = positions[ref]
    d = speed_of_sound * times[others]
    xi = positions[others]
    a = np.hstack([2 * (xi - x0), 2 * d[:, None]])
    b = np.sum(xi**2, axis=1) - np.sum(x0**2) - d**2
    solution, *_ = np.linalg.lstsq(a, b, rcond=None)
    return solution[:-1]


def soundfinder_localize(receiver_positions, arrival_times, speed_of_sound=343, invert_alg="gps", center=True,
                         pseudo=True):
    """Source position from arrival times by Sound Finder's GPS inversion (Wilson et al. 2014).

    Each receiver ``i`` is the Lorentz vector ``A_i = (x_i, c t_i)``; the unknown ``u = (s, c t0)``
    (source and emission time) satisfies ``<A_i - u, A_i - u> = 0``, which is linear in ``u`` given
    ``L = <u, u> / 2``: ``u = w + L v``. ``L`` solves a quadratic; of its two roots the one with the
    smaller error is returned.

    Parameters
    ----------
    receiver_positions : array-like, shape (n, 2) or (n, 3)
        Metres; ``n >= d + 1``.
    arrival_times : array-like, shape (n,)
        Arrival times or TDOAs in seconds (any common offset).
    speed_of_sound : float
        m/s.
    invert_alg : {"gps"}
        The inversion; "lstsq" is not implemented (as in OpenSoundscape).
    center : bool
        Solve relative to the receivers' centroid (better conditioned; Sound Finder does).
    pseudo : bool
        Pick the root by pseudorange error (True) or by the sum of squared TDOA discrepancies
        (False, Sound Finder's choice).

    Returns
    -------
    numpy.ndarray, shape (d,)
        The source position in metres.
    """
    if invert_alg != "gps":
        raise _NotImplemented(f"invert_alg={invert_alg!r} is not implemented; use 'gps'")
    positions, times = _positions_and_times(receiver_positions, arrival_times, 1, "soundfinder_localize")
    offset = positions.mean(axis=0) if center else np.zeros(positions.shape[1])
    p = positions - offset
    ranges = speed_of_sound * (times - times.min())
    vectors = np.hstack([p, ranges[:, None]])  # rows A_i
    b = vectors.copy()
    b[:, -1] *= -1  # b @ u = <A_i, u>
    a = 0.5 * (np.sum(p**2, axis=1) - ranges**2)  # <A_i, A_i> / 2
    pinv = np.linalg.pinv(b)
    w, v = pinv @ a, pinv @ np.ones(len(a))
    # <u, u> = 2 L with u = w + L v:  <v,v> L^2 + 2 (<v,w> - 1) L + <w,w> = 0
    qa, qb, qc = lorentz_ip(v), 2 * (lorentz_ip(v, w) - 1), lorentz_ip(w)
    if abs(qa) < 1e-12:
        roots = [-qc / qb] if qb != 0 else [0.0]
    else:
        disc = max(qb * qb - 4 * qa * qc, 0.0)  # noisy delays can make it slightly negative
        roots = [(-qb + np.sqrt(disc)) / (2 * qa), (-qb - np.sqrt(disc)) / (2 * qa)]
    candidates = [w + root * v for root in roots]

    def error(u):
        s, emitted = u[:-1], u[-1]
        if pseudo:
            return float(np.sum((np.linalg.norm(p - s, axis=1) - (ranges - emitted)) ** 2))
        dist = np.linalg.norm(p - s, axis=1)
        return float(np.sum(((dist - dist[0]) - (ranges - ranges[0])) ** 2))

    best = min(candidates, key=error)
    return best[:-1] + offset


def least_squares_localize(receiver_positions, arrival_times, speed_of_sound=343):
    """Source position minimising the squared range-difference residuals (non-linear least squares).

    Residual ``i``: ``|s - x_i| - |s - x_0| - c (t_i - t_0)`` in metres. Solved with
    ``scipy.optimize.least_squares`` from the receivers' centroid and from the closed-form
    :func:`soundfinder_localize` solution; the lower cost wins.

    Parameters
    ----------
    receiver_positions : array-like, shape (n, 2) or (n, 3)
        Metres; ``n >= d + 1``.
    arrival_times : array-like, shape (n,)
        Arrival times or TDOAs, seconds (any common offset).
    speed_of_sound : float
        m/s.

    Returns
    -------
    numpy.ndarray, shape (d,)
    """
    from scipy.optimize import least_squares

    positions, times = _positions_and_times(receiver_positions, arrival_times, 1, "least_squares_localize")
    centroid = positions.mean(axis=0)
    p = positions - centroid
    scale = max(float(np.max(np.linalg.norm(p, axis=1))), 1.0)
    p = p / scale  # unit-sized problem: tolerances mean the same at any array size
    observed = speed_of_sound * (times - times[0]) / scale

    def residuals(s):
        dist = np.linalg.norm(p - s, axis=1)
        return (dist[1:] - dist[0]) - observed[1:]

    starts = [np.zeros(p.shape[1])]
    try:
        closed = (soundfinder_localize(positions, times, speed_of_sound) - centroid) / scale
        if np.all(np.isfinite(closed)):
            starts.append(closed)
    except OpsoError:
        pass
    fits = [least_squares(residuals, start, method="lm" if len(observed) - 1 >= p.shape[1] else "trf",
                          xtol=1e-14, ftol=1e-14, gtol=1e-14) for start in starts]
    best = min(fits, key=lambda f: f.cost)
    return best.x * scale + centroid


_SOLVERS = {"gillette": gillette_localize, "soundfinder": soundfinder_localize,
            "least_squares": least_squares_localize}


def localize(receiver_positions, tdoas, algorithm, speed_of_sound=343):
    """Source position from TDOAs with one of :data:`LOCALIZATION_ALGORITHMS`.

    Parameters
    ----------
    receiver_positions : array-like, shape (n, 2) or (n, 3)
        Metres.
    tdoas : array-like, shape (n,)
        Seconds, relative to one receiver (whose value is 0).
    algorithm : {"gillette", "soundfinder", "least_squares"}
    speed_of_sound : float
        m/s.

    Returns
    -------
    numpy.ndarray, shape (d,)
        Metres.
    """
    if algorithm not in _SOLVERS:
        raise OpsoValueError(f"unknown localization algorithm {algorithm!r}; use one of {LOCALIZATION_ALGORITHMS}")
    return _SOLVERS[algorithm](receiver_positions, tdoas, speed_of_sound=speed_of_sound)


def calculate_tdoa_residuals(receiver_positions, tdoas, position_estimate, speed_of_sound):
    """Distance residuals of a TDOA solution, metres, one per receiver.

    ``speed_of_sound * (expected - observed)``, where ``expected`` is the TDOA (relative to receiver
    0) that ``position_estimate`` implies and ``observed`` is ``tdoas - tdoas[0]``. Zero for exact
    data and the true position.

    Parameters
    ----------
    receiver_positions : array-like, shape (n, d)
    tdoas : array-like, shape (n,)
    position_estimate : array-like, shape (d,)
    speed_of_sound : float

    Returns
    -------
    numpy.ndarray, shape (n,)
    """
    positions = np.asarray(receiver_positions, dtype=float)
    tdoas = np.asarray(tdoas, dtype=float)
    estimate = np.asarray(position_estimate, dtype=float)
    if estimate.shape != positions.shape[1:]:
        raise OpsoValueError(f"position_estimate has {estimate.size} coordinates; the receivers have "
                             f"{positions.shape[1]}")
    arrival = np.linalg.norm(positions - estimate, axis=1) / speed_of_sound
    expected = arrival - arrival[0]
    observed = tdoas - tdoas[0]
    return speed_of_sound * (expected - observed)


class SpatialEvent:
    """One sound event heard by several synchronized receivers, to be localized.

    Parameters
    ----------
    receiver_files : list of str
        Audio files (paths or fsspec URLs), one per receiver; the first is the reference.
        Recordings are taken to be synchronized: time ``t`` in every file is the same instant.
    receiver_positions : array-like, shape (n, 2) or (n, 3)
        Metres.
    start_time : float
        Start of the event's audio in every file, seconds from the file's start.
    duration : float or None
        Seconds of audio to cross-correlate (None: to the end of the reference file).
    class_name : str or None
    bandpass_range : [low_hz, high_hz] or None
        Band-pass before cross correlation.
    cc_threshold : float or None
        Delays whose correlation maximum is below this are not used (None: all are used).
    max_delay : float or None
        Largest delay considered, seconds (None: any).

    Attributes set by the methods: ``tdoas``, ``cc_maxs`` (per receiver, relative to the first),
    ``position_estimate``, ``receivers_used`` (files whose delays went into the estimate),
    ``distance_residuals``, ``residual_rms``.
    """

    def __init__(self, receiver_files, receiver_positions, start_time=0, duration=None, class_name=None,
                 bandpass_range=None, cc_threshold=None, max_delay=None):
        self.receiver_files = list(receiver_files)
        self.receiver_positions = np.asarray(receiver_positions, dtype=float)
        if len(self.receiver_files) != len(self.receiver_positions):
            raise OpsoValueError(f"{len(self.receiver_files)} receiver files but {len(self.receiver_positions)} "
                                 "positions; give one position per file")
        self.start_time = start_time
        self.duration = duration
        self.class_name = class_name
        self.bandpass_range = bandpass_range
        self.cc_threshold = cc_threshold
        self.max_delay = max_delay
        self.tdoas = None
        self.cc_maxs = None
        self.position_estimate = None
        self.receivers_used = None
        self.distance_residuals = None
        self.residual_rms = None
        self._used = None  # boolean mask of the receivers behind position_estimate

    def __repr__(self):
        return (f"SpatialEvent(class_name={self.class_name!r}, start_time={self.start_time}, "
                f"receivers={len(self.receiver_files)}, position_estimate={self.position_estimate})")

    def estimate_delays(self, bandpass_range=None, cc_filter="phat", max_delay=None):
        """Delays of every receiver relative to the first, by generalized cross correlation.

        The reference (first) file's audio from ``start_time`` for ``duration`` is correlated with
        each other file's audio over the same span widened by ``max_delay`` at both ends, so a sound
        delayed by up to ``max_delay`` is whole in both; only delays within ``+-max_delay`` are
        considered.

        Parameters
        ----------
        bandpass_range : [low_hz, high_hz] or None
            Defaults to ``self.bandpass_range``.
        cc_filter : str
            See :func:`opso_core.signal_processing.gcc`.
        max_delay : float or None
            Seconds; defaults to ``self.max_delay``.

        Returns
        -------
        (numpy.ndarray, numpy.ndarray)
            ``tdoas`` (seconds; 0 for the first receiver) and ``cc_maxs`` (the correlation maxima;
            1 for the first receiver, as in OpenSoundscape 0.9.0), each of shape (n,). Also stored on
            the event.
        """
        from opso_core.audio import Audio

        band = self.bandpass_range if bandpass_range is None else bandpass_range
        max_delay = self.max_delay if max_delay is None else max_delay
        reference = Audio.from_file(self.receiver_files[0], offset=self.start_time, duration=self.duration)
        if band is not None:
            reference = reference.bandpass(band[0], band[1], order=9)
        tdoas, cc_maxs = [0.0], []
        for path in self.receiver_files[1:]:
            delay, cc_max = delay_from_file(reference, path, self.start_time, self.duration, cc_filter=cc_filter,
                                            max_delay=max_delay, bandpass_range=band)
            tdoas.append(delay)
            cc_maxs.append(cc_max)
        self.tdoas = np.asarray(tdoas)
        self.cc_maxs = np.asarray([1.0, *cc_maxs])  # the reference against itself: 1, as 0.9.0 sets it
        return self.tdoas, self.cc_maxs

    def estimate_location(self, algorithm="gillette", cc_threshold=None, min_n_receivers=3, speed_of_sound=343):
        """Position of the event from its delays (estimated first when missing).

        Receivers whose correlation maximum is below ``cc_threshold`` (default
        ``self.cc_threshold``) are left out; the reference always counts.

        Parameters
        ----------
        algorithm : {"gillette", "soundfinder", "least_squares"}
        cc_threshold : float or None
        min_n_receivers : int
            Fewer usable receivers raise :class:`InsufficientReceiversError`.
        speed_of_sound : float
            m/s.

        Returns
        -------
        numpy.ndarray, shape (d,)
            Metres; also ``self.position_estimate``.
        """
        if self.tdoas is None or self.cc_maxs is None:
            self.estimate_delays()
        threshold = self.cc_threshold if cc_threshold is None else cc_threshold
        used = np.ones(len(self.tdoas), dtype=bool)
        if threshold is not None:
            used[1:] = self.cc_maxs[1:] >= threshold
        if used.sum() < min_n_receivers:
            raise InsufficientReceiversError(
                f"{used.sum()} receivers have a cross-correlation maximum of at least {threshold}; "
                f"min_n_receivers is {min_n_receivers}")
        self._used = used
        self.receivers_used = [f for f, u in zip(self.receiver_files, used, strict=True) if u]
        self.position_estimate = localize(self.receiver_positions[used], self.tdoas[used], algorithm,
                                          speed_of_sound=speed_of_sound)
        return self.position_estimate

    def calculate_distance_residuals(self, speed_of_sound=343):
        """Distance residuals (metres) of the receivers used for ``position_estimate``; see
        :func:`calculate_tdoa_residuals`. Also ``self.distance_residuals``."""
        if self.tdoas is None or self.position_estimate is None:
            raise OpsoValueError("estimate the delays and the location first (estimate_location)")
        used = self._used if self._used is not None else np.ones(len(self.tdoas), dtype=bool)
        self.distance_residuals = calculate_tdoa_residuals(self.receiver_positions[used], self.tdoas[used],
                                                           self.position_estimate, speed_of_sound)
        return self.distance_residuals

    def calculate_residual_rms(self, speed_of_sound=343):
        """Root mean square of the distance residuals, metres; None before a location is estimated."""
        if self.tdoas is None or self.position_estimate is None:
            return None
        residuals = self.calculate_distance_residuals(speed_of_sound)
        self.residual_rms = float(np.sqrt(np.mean(residuals**2)))
        return self.residual_rms


def delay_from_file(reference, path, offset_s, duration_s, *, cc_filter="phat", max_delay=None, bandpass_range=None,
                    storage_options=None):
    """Delay (s) of ``reference``'s sound in another synchronized recording, and the correlation maximum.

    ``path``'s audio is read from ``offset_s`` (where ``reference`` starts, in that file's time) for
    ``duration_s``, widened by ``max_delay`` at both ends so that a sound delayed by up to
    ``max_delay`` lies whole in it, resampled to ``reference``'s rate, band-passed like it (order 9),
    and cross-correlated with it (:func:`delay_between`).

    Parameters
    ----------
    reference : Audio
        The reference receiver's audio (already band-passed if ``bandpass_range`` is given).
    path : str
        Local path or fsspec URL of the other receiver's recording.
    offset_s : float
        Seconds from the start of ``path``.
    duration_s : float or None
        Seconds (None: to the end of the file).
    cc_filter : str
    max_delay : float or None
        Seconds.
    bandpass_range : (float, float) or None
        Hz.
    storage_options : dict, optional

    Returns
    -------
    (float, float)
    """
    from opso_core.audio import Audio

    pad = 0.0 if max_delay is None else float(max_delay)
    start = max(0.0, offset_s - pad)
    duration = None if duration_s is None else duration_s + (offset_s - start) + pad
    other = Audio.from_file(path, offset=start, duration=duration, out_of_bounds_mode="ignore",
                            sample_rate=reference.sample_rate, storage_options=storage_options)
    if bandpass_range is not None:
        other = other.bandpass(bandpass_range[0], bandpass_range[1], order=9)
    return delay_between(other.samples, reference.samples, reference.sample_rate, offset_s=start - offset_s,
                         cc_filter=cc_filter, max_delay=max_delay, band_hz=bandpass_range)


def delay_between(signal, reference, sample_rate, offset_s=0.0, cc_filter="phat", max_delay=None, band_hz=None):
    """Delay (s) of a sound in ``signal`` relative to ``reference``, and the correlation maximum.

    ``signal`` starts ``offset_s`` seconds after ``reference`` (negative: before); the returned
    delay is in absolute time (positive: the sound reaches ``signal``'s receiver later), limited to
    ``[-max_delay, max_delay]`` when ``max_delay`` is given.

    Parameters
    ----------
    signal, reference : numpy.ndarray, shape (n,), (m,)
        Samples at ``sample_rate`` Hz.
    sample_rate : float
    offset_s : float
    cc_filter : str
        See :func:`opso_core.signal_processing.gcc`.
    max_delay : float or None
    band_hz : (float, float) or None
        With a weighting other than ``cc``, frequency bins outside this band (Hz) are left out of
        the correlation (:func:`opso_core.signal_processing.band_limited_gcc`): PHAT would otherwise
        give the noise outside a call's band as much weight as the call.

    Returns
    -------
    (float, float)
    """
    from opso_core.signal_processing import band_limited_gcc

    band = band_hz if cc_filter != "cc" else None  # plain cc: the band-passed audio already weights by power
    cc = band_limited_gcc(signal, reference, cc_filter=cc_filter, band_hz=band, sample_rate=sample_rate)
    lags = np.arange(-(len(reference) - 1), len(signal))  # gcc's layout, as scipy.signal.correlate's
    delays = lags / float(sample_rate) + offset_s
    if max_delay is not None:
        allowed = np.abs(delays) <= max_delay + 0.5 / sample_rate
        if not allowed.any():
            raise OpsoValueError(f"no lag within max_delay={max_delay} s of the reference")
        cc = np.where(allowed, cc, -np.inf)
    best = int(np.argmax(cc))
    return float(delays[best]), float(cc[best])


class SynchronizedRecorderArray:
    """Recorders at known positions whose recordings are synchronized.

    Parameters
    ----------
    file_coords : pandas.DataFrame
        Index: audio file (the same strings as in the detections); columns ``x``, ``y`` and
        optionally ``z``, metres.
    """

    def __init__(self, file_coords):
        import pandas as pd

        if not isinstance(file_coords, pd.DataFrame):
            raise OpsoValueError("file_coords must be a pandas DataFrame indexed by file with columns x, y[, z]")
        missing = [c for c in ("x", "y") if c not in file_coords.columns]
        if missing:
            raise OpsoValueError(f"file_coords lacks the columns {missing}; it needs x, y and optionally z (metres)")
        self.file_coords = file_coords
        self._dims = ["x", "y", "z"] if "z" in file_coords.columns else ["x", "y"]

    def _position(self, file):
        try:
            return self.file_coords.loc[file, self._dims].to_numpy(dtype=float)
        except KeyError:
            raise OpsoValueError(f"{file!r} is not in file_coords; add its position") from None

    def make_nearby_files_dict(self, r_max):
        """For each file, the other files whose recorders are within ``r_max`` metres of its own.

        Returns
        -------
        dict
            ``{file: [nearby files]}``.
        """
        coords = self.file_coords[self._dims].to_numpy(dtype=float)
        files = list(self.file_coords.index)
        dist = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
        return {f: [files[j] for j in np.flatnonzero(dist[i] <= r_max) if j != i] for i, f in enumerate(files)}

    def create_candidate_events(self, detections, min_n_receivers, max_receiver_dist, cc_threshold=None,
                                bandpass_ranges=None, max_delay=None):
        """Group simultaneous detections of nearby recorders into candidate events.

        Every detection is a reference once: with the detections of the same class at the same
        ``(start_time, end_time)`` on recorders within ``max_receiver_dist`` metres, it forms one
        :class:`SpatialEvent` (reference first) when at least ``min_n_receivers`` recorders take
        part. The events are therefore redundant: one sound may give several.

        Parameters
        ----------
        detections : pandas.DataFrame
            Index ``(file, start_time, end_time)``; one column per class, 1 for a detection.
            Times are the same instants in every file (synchronized recordings).
        min_n_receivers : int
        max_receiver_dist : float
            Metres.
        cc_threshold, max_delay : float or None
            Passed to each event.
        bandpass_ranges : dict or None
            ``{class: [low_hz, high_hz]}``.

        Returns
        -------
        list of SpatialEvent
        """
        nearby = self.make_nearby_files_dict(max_receiver_dist)
        events = []
        detections = detections.reset_index()
        file_col, start_col, end_col = detections.columns[:3]
        classes = [c for c in detections.columns[3:]]
        for cls in classes:
            hits = detections.loc[detections[cls] == 1, [file_col, start_col, end_col]]
            by_time = {}
            for file, start, end in hits.itertuples(index=False):
                by_time.setdefault((start, end), set()).add(file)
            for (start, end), files in by_time.items():
                for ref in sorted(files):
                    if ref not in nearby:
                        raise OpsoValueError(f"{ref!r} is not in file_coords; add its position")
                    members = [ref] + [f for f in nearby[ref] if f in files]
                    if len(members) < min_n_receivers:
                        continue
                    events.append(SpatialEvent(
                        members, [self._position(f) for f in members], start_time=start, duration=end - start,
                        class_name=cls, bandpass_range=None if bandpass_ranges is None else bandpass_ranges.get(cls),
                        cc_threshold=cc_threshold, max_delay=max_delay))
        return events

    def localize_detections(self, detections, max_receiver_dist, min_n_receivers=3, localization_algorithm="gillette",
                            cc_threshold=0, cc_filter="phat", max_delay=None, bandpass_ranges=None,
                            residual_threshold=np.inf):
        """Localize every candidate event of ``detections``.

        1. :meth:`create_candidate_events`; 2. each event's delays by generalized cross correlation
        (``cc_filter``, optionally band-passed per class, within ``max_delay``); delays with a
        correlation maximum below ``cc_threshold`` are dropped, and an event left with fewer than
        ``min_n_receivers`` receivers is not localized; 3. the position by ``localization_algorithm``;
        4. events whose RMS distance residual exceeds ``residual_threshold`` metres are not kept.

        Returns
        -------
        (list of SpatialEvent, list of SpatialEvent)
            Localized events, and the events that could not be localized.
        """
        if localization_algorithm not in LOCALIZATION_ALGORITHMS:
            raise OpsoValueError(f"unknown localization_algorithm {localization_algorithm!r}; use one of "
                                 f"{LOCALIZATION_ALGORITHMS}")
        candidates = self.create_candidate_events(detections, min_n_receivers, max_receiver_dist,
                                                  cc_threshold=cc_threshold, bandpass_ranges=bandpass_ranges,
                                                  max_delay=max_delay)
        localized, unlocalized = [], []
        for event in candidates:
            event.estimate_delays(cc_filter=cc_filter)
            try:
                event.estimate_location(algorithm=localization_algorithm, min_n_receivers=min_n_receivers)
            except InsufficientReceiversError:
                unlocalized.append(event)
                continue
            rms = event.calculate_residual_rms()
            (localized if rms <= residual_threshold else unlocalized).append(event)
        logger.info("localized %d of %d candidate events", len(localized), len(candidates))
        return localized, unlocalized
