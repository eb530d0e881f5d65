import numpy as np
import pytest
import soundfile

from opso_core.audio_info import audio_file_info, wav_data_chunk
from opso_core.errors import AudioFileNotFoundError, AudioFormatError, AudioReadError
from opso_core.testing import tone, write_bad_files


def test_header_facts(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, np.zeros((16000, 2), dtype=np.float32), 8000, subtype="PCM_24")
    info = audio_file_info(path)
    assert (info.sample_rate_hz, info.channels, info.frames) == (8000, 2, 16000)
    assert info.duration_s == 2.0 and info.subtype == "PCM_24" and info.format == "WAV"
    assert info.size_bytes == path.stat().st_size
    assert info.declared_frames == 16000 and not info.truncated
    md = info.soundfile_metadata()
    assert md["samplerate"] == 8000 and md["filesize"] == info.size_bytes


def test_bad_files(tmp_path):
    bad = write_bad_files(tmp_path)
    for key in ("empty", "not_audio", "bad_header"):
        with pytest.raises(AudioFormatError):
            audio_file_info(bad[key])
    info = audio_file_info(bad["truncated"])
    assert info.truncated and info.declared_frames == 16000 and info.frames == 8000
    with pytest.raises(AudioFileNotFoundError):
        audio_file_info(tmp_path / "nope.wav")
    with pytest.raises(AudioReadError):
        audio_file_info(tmp_path)  # a folder


def test_wav_chunk_walk(tmp_path):
    path = tmp_path / "t.wav"
    tone(440, 1.0, 8000).save(path, metadata_format=None, soundfile_subtype="PCM_16")
    with open(path, "rb") as f:
        chunk = wav_data_chunk(f)
    assert chunk.block_align_bytes == 2 and chunk.declared_data_bytes == 16000
    tone(440, 1.0, 8000).save(tmp_path / "t.flac")
    with open(tmp_path / "t.flac", "rb") as f:
        assert wav_data_chunk(f) is None


def test_remote_url():
    tone(440, 1.5, 8000).save("memory://info/a.wav")
    info = audio_file_info("memory://info/a.wav")
    assert info.frames == 12000 and info.path == "memory://info/a.wav"
