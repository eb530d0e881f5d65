"""Header-only facts about an audio file: sample rate, channels, frames, tags, truncation.

Nothing here decodes audio samples, so an inventory of thousands of files (local or on object storage)
reads only a few kilobytes per file.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import IO, Any

import soundfile

from opso_core.errors import AudioFileNotFoundError, AudioFormatError, AudioReadError
from opso_core.storage import file_size_bytes, open_binary

__all__ = ["AudioFileInfo", "SOUNDFILE_TAG_FIELDS", "audio_file_info", "wav_data_chunk"]

#: Tag fields that libsndfile reads and writes (``soundfile.SoundFile.copy_metadata``).
SOUNDFILE_TAG_FIELDS = (
    "title",
    "copyright",
    "software",
    "artist",
    "comment",
    "date",
    "album",
    "license",
    "tracknumber",
    "genre",
)

# RIFF/WAVE data chunks whose size field means "unknown" (written while recording, or RF64)
_UNKNOWN_CHUNK_SIZES = (0, 0xFFFFFFFF)
_MAX_CHUNKS = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class WavDataChunk:
    """Where the sample data of a RIFF/WAVE file lies and how long its header says it is."""

    data_offset_bytes: int
    declared_data_bytes: int | None  # None: size field says "unknown"
    block_align_bytes: int


def wav_data_chunk(f: IO[bytes]) -> WavDataChunk | None:
    """Walk the RIFF chunks of a WAV file up to its ``data`` chunk.

    Parameters
    ----------
    f : binary file object
        Positioned anywhere; it is read from offset 0.

    Returns
    -------
    WavDataChunk or None
        None if the file is not a plain RIFF/WAVE file (RF64, AIFF, FLAC, ...).
    """
    f.seek(0)
    riff = f.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        return None
    block_align = 0
    for _ in range(_MAX_CHUNKS):
        header = f.read(8)
        if len(header) < 8:
            return None
        chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk_id == b"fmt ":
            fmt = f.read(size)
            if len(fmt) >= 14:
                block_align = struct.unpack("<H", fmt[12:14])[0]
            if size & 1:
                f.seek(1, os.SEEK_CUR)
            continue
        if chunk_id == b"data":
            declared = None if size in _UNKNOWN_CHUNK_SIZES else size
            return WavDataChunk(f.tell(), declared, block_align)
        f.seek(size + (size & 1), os.SEEK_CUR)
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class AudioFileInfo:
    """What an audio file's header says.

    Attributes
    ----------
    path : str
        Path or URL as given.
    sample_rate_hz : int
    channels : int
    frames : int
        Sample frames actually present (per channel).
    duration_s : float
        ``frames / sample_rate_hz``.
    format, subtype : str
        libsndfile's names, e.g. ``"WAV"``, ``"PCM_16"``.
    sections : int
    size_bytes : int
    tags : dict
        Tag fields present in the file (see :data:`SOUNDFILE_TAG_FIELDS`).
    declared_frames : int or None
        Frames the WAV header declares (None when unknown or not a WAV file).
    """

    path: str
    sample_rate_hz: int
    channels: int
    frames: int
    format: str
    subtype: str
    sections: int
    size_bytes: int
    tags: dict[str, str]
    declared_frames: int | None = None

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate_hz

    @property
    def truncated(self) -> bool:
        """True if the header declares more frames than the file holds (a cut-short file)."""
        return self.declared_frames is not None and self.declared_frames > self.frames

    def soundfile_metadata(self) -> dict[str, Any]:
        """The metadata dictionary OpenSoundscape's ``load_metadata`` returns, plus duration/size."""
        md: dict[str, Any] = dict(self.tags)
        md.update(
            samplerate=self.sample_rate_hz,
            format=self.format,
            frames=self.frames,
            sections=self.sections,
            subtype=self.subtype,
            channels=self.channels,
            duration=self.duration_s,
            filesize=self.size_bytes,
        )
        return md


def _read_info(f: IO[bytes], path: str, size_bytes: int) -> AudioFileInfo:
    chunk = wav_data_chunk(f)
    f.seek(0)
    try:
        with soundfile.SoundFile(f) as sf:
            tags = {k: v for k, v in sf.copy_metadata().items() if v}
            frames = int(sf.frames)
            info = dict(
                sample_rate_hz=int(sf.samplerate),
                channels=int(sf.channels),
                format=str(sf.format),
                subtype=str(sf.subtype),
                sections=int(sf.sections),
            )
    except soundfile.LibsndfileError as exc:
        raise AudioFormatError(f"{path}: not a readable audio file ({exc})") from exc
    except (RuntimeError, TypeError, ValueError) as exc:
        raise AudioFormatError(f"{path}: not a readable audio file ({exc})") from exc
    if info["sample_rate_hz"] <= 0 or info["channels"] <= 0:
        raise AudioFormatError(f"{path}: header has an invalid sample rate or channel count")

    declared_frames = None
    if chunk is not None and chunk.block_align_bytes > 0:
        available = max(0, size_bytes - chunk.data_offset_bytes)
        if chunk.declared_data_bytes is not None:
            declared_frames = chunk.declared_data_bytes // chunk.block_align_bytes
            # libsndfile trusts the header when the file is long enough; cap at what is really there
            frames = min(frames, available // chunk.block_align_bytes)
    return AudioFileInfo(
        path=path,
        frames=frames,
        size_bytes=size_bytes,
        tags=tags,
        declared_frames=declared_frames,
        **info,
    )


def audio_file_info(path, storage_options: dict[str, Any] | None = None) -> AudioFileInfo:
    """Read an audio file's header (and, for WAV, its chunk layout) without decoding samples.

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL.
    storage_options : dict, optional
        fsspec options for remote URLs.

    Returns
    -------
    AudioFileInfo

    Raises
    ------
    AudioFileNotFoundError
        The path does not exist.
    AudioFormatError
        The file is empty, not audio, or its header is invalid.
    AudioReadError
        Any other failure to read the file.
    """
    path = os.fspath(path)
    try:
        size_bytes = file_size_bytes(path, storage_options)
    except FileNotFoundError as exc:
        raise AudioFileNotFoundError(f"{path}: no such audio file") from exc
    except OSError as exc:
        raise AudioReadError(f"{path}: cannot be read ({exc})") from exc
    if size_bytes == 0:
        raise AudioFormatError(f"{path}: file is empty (0 bytes)")
    try:
        with open_binary(path, storage_options) as f:
            return _read_info(f, path, size_bytes)
    except FileNotFoundError as exc:
        raise AudioFileNotFoundError(f"{path}: no such audio file") from exc
    except AudioReadError:
        raise
    except OSError as exc:
        raise AudioReadError(f"{path}: cannot be read ({exc})") from exc
