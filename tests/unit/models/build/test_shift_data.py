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
