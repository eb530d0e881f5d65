"""Adding up the records of a stage's tasks (the markers' contents) for the run's summary.

The records of the tasks a session runs come back with their results; the records of ranges finished
in an earlier session (a resumed run skips them) are read from their markers by tasks on the workers,
a thousand markers a task (:func:`tally_markers`): the driver lists each stage's markers once and
never reads one marker per task itself, which on object storage would be one request each.
"""

from __future__ import annotations

import dataclasses

from pipelines.outputs.location import OutputLocation

__all__ = ["MARKERS_PER_TASK", "RecordTally", "tally_markers"]

#: markers one tally task reads
MARKERS_PER_TASK = 1000


@dataclasses.dataclass
class RecordTally:
    """The sum of a stage's records.

    Parameters
    ----------
    products : dict
        The stage's ``{product: token}``: a record's detection count of ``detections:<detector>``
        counts only while the record holds that product's current token.
    counts_clips : bool
        Add the records' ``n_ok`` (the stage whose analysed clips the summary counts).
    windows : tuple of (float, float)
        Time windows (Unix seconds) of sessions killed outright: the latest ``finished`` in each is kept.
    """

    products: dict = dataclasses.field(default_factory=dict)
    counts_clips: bool = False
    windows: tuple = ()
    n_records: int = 0
    n_ok: int = 0
    failures: list = dataclasses.field(default_factory=list)
    detections: dict = dataclasses.field(default_factory=dict)
    dropped: dict = dataclasses.field(default_factory=dict)
    last_finished: dict = dataclasses.field(default_factory=dict)

    def add(self, record: dict) -> None:
        """Count one record (a marker's content)."""
        self.n_records += 1
        if self.counts_clips:
            self.n_ok += int(record.get("n_ok", 0))
        self.failures += [tuple(f) for f in record.get("failures", [])]
        held = record.get("products")
        for detector, n in (record.get("detections") or {}).items():
            product = f"detections:{detector}"
            if held is None or product not in self.products or held.get(product) == self.products[product]:
                self.detections[detector] = self.detections.get(detector, 0) + int(n)
        for why, n in (record.get("dropped") or {}).items():
            self.dropped[why] = self.dropped.get(why, 0) + int(n)
        finished = record.get("finished")
        if finished:
            for i, (begin, end) in enumerate(self.windows):
                if begin <= float(finished) <= end:
                    self.last_finished[i] = max(self.last_finished.get(i, 0.0), float(finished))

    def merge(self, other: RecordTally) -> None:
        """Add ``other``'s counts (a tally of the same stage, e.g. from a worker)."""
        self.n_records += other.n_records
        self.n_ok += other.n_ok
        self.failures += other.failures
        for detector, n in other.detections.items():
            self.detections[detector] = self.detections.get(detector, 0) + n
        for why, n in other.dropped.items():
            self.dropped[why] = self.dropped.get(why, 0) + n
        for i, t in other.last_finished.items():
            self.last_finished[i] = max(self.last_finished.get(i, 0.0), t)

    def empty(self) -> RecordTally:
        """A tally with the same settings and no counts."""
        return RecordTally(self.products, self.counts_clips, self.windows)


def tally_markers(location: OutputLocation, markers: list[str], template: RecordTally) -> RecordTally:
    """Read ``markers`` (paths in the run folder) and add them up (runs on a worker)."""
    tally = template.empty()
    for marker in markers:
        tally.add(location.read_json(marker))
    return tally
