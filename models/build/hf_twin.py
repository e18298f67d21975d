"""A standard `AutoModelForSequenceClassification` twin of a text artifact, for speed only.

Peers that need a standard classifier directory (infinity-emb) get one with the artifact's
compute. The artifact's last exit pools by MEAN over tokens; standard BERT classifiers pool the
first token. This twin copies the encoder and the last head's two layers into
`BertForSequenceClassification` (pooler.dense <- head.dense, classifier <- head.out): the same
matrix multiplies per request, but not the same answers (pooling differs). Use it for speed
only; `eeserve export DIR --format hf` is the faithful export where the artifact allows one.
Needs a backbone whose sequence classifier is pooler + one linear layer (BERT-style) and the
artifact's own last exit head; anything else is refused in one line (exit status 2).

    python -m models.build.hf_twin artifacts/text-default /tmp/text-default-hf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""


class TwinError(ValueError):
    """The artifact has no speed twin (one line, for the command's error message)."""


def write_twin(src: Path, dst: Path) -> Path:
    """Write the speed twin of the text artifact `src` to `dst` (TwinError when it has none)."""
    from torch import nn
    from transformers import AutoModelForSequenceClassification

    from models.artifact import ArtifactError
    from models.loading import load_text_artifact
    from models.text_classifier import ExitHead

    if not (src / "manifest.json").is_file():
        raise TwinError(f"{src}: not an artifact directory (no manifest.json)")
    try:
        loaded = load_text_artifact(src)
    except ArtifactError as e:
        raise TwinError(first_line(e)) from None
    m = loaded.model
    cfg = m.backbone.config.__class__.from_dict(m.backbone.config.to_dict())
    cfg.num_labels = m.config.num_labels
    cfg.id2label = dict(enumerate(loaded.manifest.get("labels") or []))
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    twin = AutoModelForSequenceClassification.from_config(cfg)
    base = getattr(twin, twin.base_model_prefix)
    pooler = getattr(base, "pooler", None)
    classifier = getattr(twin, "classifier", None)
    head = m.heads[-1]
    if pooler is None or not isinstance(getattr(pooler, "dense", None), nn.Linear) \
            or not isinstance(classifier, nn.Linear):
        raise TwinError(f"{src}: a {cfg.model_type} sequence classifier is not pooler + one "
                        "linear layer (the speed twin is BERT-style only)")
    if not isinstance(head, ExitHead) or head.dense.weight.shape != pooler.dense.weight.shape:
        raise TwinError(f"{src}: the last exit head does not fit the pooler "
                        "(a classifier's own head, or a head width other than the hidden size)")
    base.embeddings.load_state_dict(m.backbone.embeddings.state_dict())
    base.encoder.load_state_dict(m.backbone.encoder.state_dict())
    pooler.dense.load_state_dict(head.dense.state_dict())
    classifier.load_state_dict(head.out.state_dict())
    twin.save_pretrained(dst)
    m.tokenizer.save_pretrained(dst)
    return dst


def first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m models.build.hf_twin", description=DESCRIPTION)
    ap.add_argument("artifact", type=Path, help="text artifact directory")
    ap.add_argument("out", type=Path, help="directory to write the twin to")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        write_twin(args.artifact, args.out)
    except TwinError as e:
        print(f"hf_twin: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (speed twin of {args.artifact}: first-token pooling, "
          "answers differ)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
