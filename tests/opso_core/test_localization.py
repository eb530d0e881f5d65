import numpy as np
import pandas as pd
import pytest

from opso_core import localization as loc
from opso_core.errors import OpsoValueError

ALGORITHMS = ["gillette", "soundfinder", "least_squares"]


def exact_tdoas(receivers, source, reference=0, c=343.0):
    arrival = np.linalg.norm(receivers - source, axis=1) / c
    return arrival - arrival[reference]


def test_speed_of_sound_lorentz_and_travel_time():
    assert loc.calc_speed_of_sound(20) == pytest.approx(343.2, abs=0.1)
    assert loc.calc_speed_of_sound(0) == pytest.approx(331.3)
    assert loc.lorentz_ip([1, 1, 2], [1, 1, 2]) == -2
    assert loc.lorentz_ip([1, 1, 1, 2]) == -1
    assert loc.travel_time([0, 0, 0], [3, 4, 0], 343) == pytest.approx(5 / 343)
    with pytest.raises(OpsoValueError):
        loc.lorentz_ip([1, 2, 3], [1, 2])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dims", [2, 3])
def test_exact_tdoas_give_the_exact_source_for_every_reference(algorithm, dims):
    rng = np.random.default_rng(dims)
    n_receivers = dims + 3
    for _ in range(20):
        receivers = rng.uniform(-50, 50, size=(n_receivers, dims))
        source = rng.uniform(-60, 60, size=dims)
        for reference in range(n_receivers):
            tdoas = exact_tdoas(receivers, source, reference)
            estimate = loc.localize(receivers, tdoas, algorithm)
            np.testing.assert_allclose(estimate, source, atol=1e-5)
            residuals = loc.calculate_tdoa_residuals(receivers, tdoas, estimate, 343)
            np.testing.assert_allclose(residuals, 0, atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_minimal_receiver_counts(dims):
    rng = np.random.default_rng(10 + dims)
    source = rng.uniform(-20, 20, size=dims)
    gillette_receivers = rng.uniform(-50, 50, size=(dims + 2, dims))
    np.testing.assert_allclose(
        loc.gillette_localize(gillette_receivers, exact_tdoas(gillette_receivers, source)), source, atol=1e-6)
    with pytest.raises(loc.InsufficientReceiversError):
        loc.gillette_localize(gillette_receivers[:-1], exact_tdoas(gillette_receivers[:-1], source))
    with pytest.raises(loc.InsufficientReceiversError):
        loc.soundfinder_localize(gillette_receivers[: dims], exact_tdoas(gillette_receivers[: dims], source))


def test_gillette_needs_a_reference_time_and_soundfinder_lstsq_is_not_implemented():
    with pytest.raises(ValueError, match="relative to one receiver"):
        loc.gillette_localize([[100, 0], [100, 20], [120, 20], [120, 0]], [1, 1, 1, 1])
    with pytest.raises(NotImplementedError):
        loc.soundfinder_localize([[0, 0, 0], [0, 20, 1], [20, 20, -1], [20, 0, 0.1]], [1, 1, 1, 1], invert_alg="lstsq")
    with pytest.raises(OpsoValueError, match="unknown localization algorithm"):
        loc.localize([[0, 0], [1, 1], [2, 0]], [0, 0, 0], "magic")


def test_equal_arrival_times_put_the_source_in_the_middle():
    square = [[0, 0], [0, 20], [20, 20], [20, 0]]
    np.testing.assert_allclose(loc.soundfinder_localize(square, [1, 1, 1, 1]), [10, 10], atol=1e-9)
    shifted = [[100, 0, 0], [100, 20, 1], [120, 20, -1], [120, 0, 0.1]]
    for center in (True, False):
        for pseudo in (True, False):
            estimate = loc.soundfinder_localize(shifted, [1, 1, 1, 1], center=center, pseudo=pseudo)
            assert np.linalg.norm(estimate - [110, 10, 0]) < 0.1


def test_least_squares_is_most_accurate_with_noisy_delays():
    rng = np.random.default_rng(3)
    receivers = np.array([[0, 0], [40, 0], [0, 40], [40, 40], [20, 60]], dtype=float)
    errors = {a: [] for a in ALGORITHMS}
    for _ in range(200):
        source = rng.uniform(0, 40, size=2)
        tdoas = exact_tdoas(receivers, source) + rng.normal(0, 2e-5, size=len(receivers))  # ~1 sample at 48 kHz
        tdoas -= tdoas[0]
        for algorithm in ALGORITHMS:
            errors[algorithm].append(np.linalg.norm(loc.localize(receivers, tdoas, algorithm) - source))
    medians = {a: np.median(e) for a, e in errors.items()}
    assert medians["least_squares"] < 0.05
    assert medians["least_squares"] <= min(medians.values()) + 1e-9


def _synchronized_array(tmp_path, source, receivers, sample_rate=32000, duration_s=4.0, call_at_s=1.5):
    """Files of a click train heard at each receiver with its propagation delay and 1/r attenuation."""
    from opso_core.audio import Audio

    rng = np.random.default_rng(0)
    call = rng.standard_normal(int(0.05 * sample_rate)) * np.hanning(int(0.05 * sample_rate))
    files = []
    for i, position in enumerate(receivers):
        distance = np.linalg.norm(position - source)
        samples = rng.normal(0, 0.002, int(duration_s * sample_rate))
        start = int(round((call_at_s + distance / 343.0) * sample_rate))
        samples[start:start + len(call)] += 0.3 * call / max(distance, 1.0)
        path = tmp_path / f"rec{i}.wav"
        Audio(samples.astype(np.float32), sample_rate).save(path)
        files.append(str(path))
    return files


def test_spatial_event_and_recorder_array_end_to_end(tmp_path):
    receivers = np.array([[0, 0], [40, 0], [0, 40], [40, 40]], dtype=float)
    source = np.array([12.0, 27.0])
    files = _synchronized_array(tmp_path, source, receivers)
    coords = pd.DataFrame(receivers, index=files, columns=["x", "y"])
    array = loc.SynchronizedRecorderArray(coords)
    nearby = array.make_nearby_files_dict(45)
    assert nearby[files[0]] == [files[1], files[2]]  # the diagonal (56.6 m) is farther
    assert len(array.make_nearby_files_dict(60)[files[0]]) == 3

    index = pd.MultiIndex.from_tuples([(f, 1.0, 3.0) for f in files] + [(files[0], 0.0, 1.0)],
                                      names=["file", "start_time", "end_time"])
    detections = pd.DataFrame({"frog": [1, 1, 1, 1, 1], "owl": [0, 0, 0, 0, 1]}, index=index)
    localized, unlocalized = array.localize_detections(detections, max_receiver_dist=60, min_n_receivers=4,
                                                       localization_algorithm="least_squares", max_delay=0.2)
    assert len(localized) == 4 and not unlocalized  # one per reference receiver; owl: one receiver only
    for event in localized:
        assert event.class_name == "frog"
        assert np.linalg.norm(event.position_estimate - source) < 0.3
        assert event.residual_rms < 0.3
        expected = exact_tdoas(coords.loc[event.receiver_files].to_numpy(), source)
        np.testing.assert_allclose(event.tdoas, expected, atol=2 / 32000)

    # a cross-correlation threshold that no delay reaches leaves too few receivers
    event = loc.SpatialEvent(files, receivers, start_time=1.0, duration=2.0, max_delay=0.2)
    event.estimate_delays(bandpass_range=[500, 10000])
    with pytest.raises(loc.InsufficientReceiversError):
        event.estimate_location(cc_threshold=np.inf, min_n_receivers=3)
    assert event.calculate_residual_rms() is None


def test_delay_between_reads_widened_segments():
    rng = np.random.default_rng(4)
    reference = rng.standard_normal(1000)
    other = np.concatenate([rng.standard_normal(100), reference])[:1100]  # the sound 100 samples later
    delay, _ = loc.delay_between(other, reference, 1000, offset_s=0.0)
    assert delay == pytest.approx(0.1)
    wide = np.concatenate([rng.standard_normal(50), other])  # read from 50 samples earlier
    delay, _ = loc.delay_between(wide, reference, 1000, offset_s=-0.05, max_delay=0.2)
    assert delay == pytest.approx(0.1)
