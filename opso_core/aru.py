"""AudioMoth and other autonomous recording unit (ARU) metadata (``opensoundscape.aru``).

AudioMoths write the recording start time into the file name (hexadecimal Unix time on old firmware,
``YYYYMMDD_HHMMSS`` on newer firmware) and a sentence into the WAV comment tag, e.g.::

    Recorded at 19:22:55 14/12/2020 (UTC-5) by AudioMoth 24A04F085FDF2793 at medium gain setting
    while battery state was 4.7V and temperature was 11.2C.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opso_core.errors import OpsoValueError, ParseError
from opso_core.utils import hex_to_time, load_metadata

__all__ = [
    "audiomoth_start_time",
    "parse_audiomoth_comment",
    "parse_audiomoth_metadata",
    "parse_audiomoth_metadata_from_path",
    "resolve_timezone",
]

_COMMENT_TIME = re.compile(
    r"Recorded at (?P<H>\d{1,2}):(?P<M>\d{2}):(?P<S>\d{2})(?:\.(?P<ms>\d{1,6}))?\s+"
    r"(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<Y>\d{4})\s*"
    r"\(UTC(?:(?P<sign>[+-])(?P<oh>\d{1,2})(?::?(?P<om>\d{2}))?)?\)"
)
_COMMENT_DEVICE = re.compile(r"\bby (?P<device>AudioMoth\s+[0-9A-Fa-f]+)")
_COMMENT_GAIN_NUMBER = re.compile(r"gain setting (?P<gain>\d+)")
_COMMENT_GAIN_WORD = re.compile(r"(?P<gain>[A-Za-z-]+) gain(?: setting)?\b")
_COMMENT_BATTERY = re.compile(r"battery (?:state )?was (?P<battery>[^V]*?\d(?:\.\d+)?)V")
_COMMENT_TEMPERATURE = re.compile(r"temperature was (?P<t>-?\d+(?:\.\d+)?)C")


def resolve_timezone(timezone) -> datetime.tzinfo:
    """A tzinfo for an IANA name (``"UTC"``, ``"US/Eastern"``) or a tzinfo object (pytz works too)."""
    if isinstance(timezone, datetime.tzinfo):
        return timezone
    if str(timezone).upper() == "UTC":
        return datetime.UTC
    try:
        return ZoneInfo(str(timezone))
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise OpsoValueError(
            f"unknown time zone {timezone!r}; use an IANA name such as 'UTC' or 'America/New_York'"
        ) from exc


def _localize(naive: datetime.datetime, tz: datetime.tzinfo) -> datetime.datetime:
    localize = getattr(tz, "localize", None)  # pytz zones need localize() for the right offset
    if callable(localize):
        return localize(naive)
    return naive.replace(tzinfo=tz)


def audiomoth_start_time(file, filename_timezone="UTC", to_utc=False) -> datetime.datetime:
    """Recording start time encoded in an AudioMoth file name.

    Parameters
    ----------
    file : str or path-like
        Path or file name, e.g. ``20200404_102500.WAV`` or ``5F16A04E.WAV``.
    filename_timezone : str or tzinfo
        Time zone in which the AudioMoth wrote the name (usually ``"UTC"``). Hexadecimal names are
        always UTC. [default: "UTC"]
    to_utc : bool
        If True, return the time converted to UTC; otherwise localized to ``filename_timezone``.

    Returns
    -------
    datetime.datetime
        Time-zone-aware start time.

    Raises
    ------
    ParseError
        The name is neither 8 hexadecimal digits nor ``YYYYMMDD_HHMMSS``.
    """
    name = Path(str(file)).stem
    if len(name) == 8 and re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        if str(filename_timezone).upper() != "UTC":
            raise OpsoValueError('hexadecimal AudioMoth file names are UTC: use filename_timezone="UTC"')
        localized = hex_to_time(name)
    elif len(name) == 15 and re.fullmatch(r"\d{8}_\d{6}", name):
        try:
            naive = datetime.datetime.strptime(name, "%Y%m%d_%H%M%S")
        except ValueError as exc:
            raise ParseError(f"file name {name!r} is not a valid YYYYMMDD_HHMMSS time") from exc
        localized = _localize(naive, resolve_timezone(filename_timezone))
    else:
        raise ParseError(
            f"file had unsupported name format: {name!r} (expected YYYYMMDD_HHMMSS or 8 hex digits)"
        )
    return localized.astimezone(datetime.UTC) if to_utc else localized


def _parse_comment_time(comment: str) -> datetime.datetime:
    m = _COMMENT_TIME.search(comment)
    if m is None:
        raise ParseError(
            f"no 'Recorded at HH:MM:SS DD/MM/YYYY (UTC...)' time in AudioMoth comment: {comment!r}"
        )
    offset = datetime.timedelta(0)
    if m["sign"]:
        offset = datetime.timedelta(hours=int(m["oh"]), minutes=int(m["om"] or 0))
        if m["sign"] == "-":
            offset = -offset
    microseconds = int((m["ms"] or "0").ljust(6, "0"))
    return datetime.datetime(
        int(m["Y"]), int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]), int(m["S"]),
        microseconds, tzinfo=datetime.timezone(offset),
    )


def parse_audiomoth_comment(comment: str) -> dict:
    """Parse the sentence an AudioMoth writes into the WAV comment tag.

    Returns
    -------
    dict
        ``recording_start_time`` (aware datetime), ``gain_setting`` (int or str such as
        ``"medium"``), ``battery_state`` (float volts, or a string like ``"less than 2.5V"``),
        ``device`` (e.g. ``"AudioMoth 24A04F085FDF2793"``, when present) and ``temperature_C``
        (float, firmware >= 1.4.0).
    """
    parsed: dict = {"recording_start_time": _parse_comment_time(comment)}
    m = _COMMENT_GAIN_NUMBER.search(comment)
    if m:
        parsed["gain_setting"] = int(m["gain"])
    else:
        m = _COMMENT_GAIN_WORD.search(comment)
        if m:
            parsed["gain_setting"] = m["gain"]
    m = _COMMENT_BATTERY.search(comment)
    if m:
        battery = m["battery"].strip()
        try:
            parsed["battery_state"] = float(battery)
        except ValueError:
            parsed["battery_state"] = f"{battery}V"
    m = _COMMENT_DEVICE.search(comment)
    if m:
        parsed["device"] = m["device"]
    m = _COMMENT_TEMPERATURE.search(comment)
    if m:
        parsed["temperature_C"] = float(m["t"])
    return parsed


def parse_audiomoth_metadata(metadata: dict) -> dict:
    """Add parsed AudioMoth fields to a metadata dictionary (see :func:`parse_audiomoth_comment`).

    Adds ``recording_start_time``, ``gain_setting``, ``battery_state``, ``device_id`` (the
    ``artist`` tag, or the device named in the comment) and, if logged, ``temperature_C``.
    Firmware 1.2 to 1.8 comment phrasings are handled. Returns a new dictionary.
    """
    if "comment" not in metadata or not metadata["comment"]:
        raise ParseError("metadata has no 'comment' field to parse AudioMoth information from")
    out = dict(metadata)
    parsed = parse_audiomoth_comment(out["comment"])
    device = parsed.pop("device", None)
    out.update(parsed)
    out.setdefault("artist", None)
    out["device_id"] = out["artist"] if out["artist"] else device
    return out


def parse_audiomoth_metadata_from_path(file_path, storage_options=None) -> dict:
    """Read a file's tags and parse its AudioMoth comment.

    Raises
    ------
    OpsoValueError
        The file has no metadata, or its ``artist`` tag does not name an AudioMoth.
    """
    metadata = load_metadata(file_path, storage_options=storage_options)
    if metadata is None:
        raise OpsoValueError(f"{file_path} does not contain readable metadata")
    artist = metadata.get("artist")
    if not artist or "AudioMoth" not in artist:
        raise OpsoValueError(f"{file_path} does not contain AudioMoth metadata (artist={artist!r})")
    return parse_audiomoth_metadata(metadata)
