#!/usr/bin/env python
"""A standard `AutoModelForSequenceClassification` directory with the artifact's compute, for
peers that need one (infinity-emb) in speed comparisons.

The artifact's last exit pools by MEAN over tokens; standard BERT classifiers pool the first
token. This twin copies the encoder and the last head's two layers into
`BertForSequenceClassification` (pooler.dense <- head.dense, classifier <- head.out): the same
matrix multiplies per request, but not the same answers (pooling differs). Use it for speed
only; `eeserve export DIR --format hf` is the faithful export where the artifact allows one.

    python scripts/hf_speed_twin.py artifacts/text-default /tmp/text-default-hf
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoModelForSequenceClassification  # noqa: E402

from models.loading import load_text_artifact  # noqa: E402


def main() -> int:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    loaded = load_text_artifact(src)
    m = loaded.model
    cfg = m.backbone.config.__class__.from_dict(m.backbone.config.to_dict())
    cfg.num_labels = m.config.num_labels
    cfg.id2label = dict(enumerate(loaded.manifest.get("labels") or []))
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    twin = AutoModelForSequenceClassification.from_config(cfg)
    base = getattr(twin, twin.base_model_prefix)
    base.embeddings.load_state_dict(m.backbone.embeddings.state_dict())
    base.encoder.load_state_dict(m.backbone.encoder.state_dict())
    head = m.heads[-1]
    base.pooler.dense.load_state_dict(head.dense.state_dict())
    twin.classifier.load_state_dict(head.out.state_dict())
    twin.save_pretrained(dst)
    m.tokenizer.save_pretrained(dst)
    print(f"wrote {dst} (speed twin of {src}: first-token pooling, answers differ)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
