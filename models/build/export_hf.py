"""`eeserve export DIR --format hf`: the last exit as a standard transformers classifier.

Writes `AutoModelForSequenceClassification` weights + config + tokenizer that `transformers`
(and servers built on it) load offline with no remote code, then reloads the written directory
and checks that its logits equal eeserve's full-depth (`none`) logits.

Only artifacts whose last exit is a standard classification head can leave this way: those
built with `--from-classifier` (the user's own head). The joint recipes end in a mean-pooling
exit head, which no standard transformers class has, so they are refused with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

from models.artifact import ArtifactError
from models.hf_heads import hf_state_dict
from models.loading import load_text_artifact

PROBE = ["a quiet, moving film with a wonderful cast", "the worst meal I have had in years",
         "it was fine", "great taste, fast delivery, would buy again",
         "nothing but boilerplate and a dull, stale script"]
TOLERANCE = 1e-5


@dataclass(frozen=True)
class HfExport:
    out: Path
    architecture: str
    max_abs_diff: float  # reloaded HF model vs eeserve `none`, on the probe texts

    def summary(self) -> str:
        return (f"wrote {self.out} ({self.architecture}); reloaded with transformers: logits "
                f"equal eeserve's full depth to {self.max_abs_diff:.1e} (limit {TOLERANCE:g})")


def export_hf(root: str | Path, out: str | Path | None = None) -> HfExport:
    """Write the artifact's last exit as a standard HF directory (default `root/hf`)."""
    root = Path(root)
    loaded = load_text_artifact(root)
    model = loaded.model
    kind = model.config.last_head
    if kind == "exit":
        raise ArtifactError(
            f"{root}: its last exit mean-pools tokens, which no standard transformers classifier "
            "does; build with --from-classifier to export as hf, or export --format onnx")
    dest = Path(out) if out else root / "hf"
    cfg = model.backbone.config
    cfg.id2label = dict(enumerate(loaded.manifest["labels"]))
    cfg.label2id = {n: i for i, n in cfg.id2label.items()}
    cfg.num_labels = len(cfg.id2label)
    clf = AutoModelForSequenceClassification.from_config(cfg)
    prefix = clf.base_model_prefix
    state = {f"{prefix}.{k}": v for k, v in model.backbone.state_dict().items()}
    state.update(hf_state_dict(model.heads[-1], prefix))
    missing, unexpected = clf.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{root}: weights do not map onto {type(clf).__name__} (missing "
                            f"{list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    clf.save_pretrained(str(dest))
    model.tokenizer.model_max_length = model.config.max_length  # truncation=True cuts as eeserve
    model.tokenizer.save_pretrained(str(dest))
    diff = _parity(model, dest)
    if diff > TOLERANCE:
        raise ArtifactError(f"{dest}: reloaded logits differ from eeserve's by {diff:.2e} "
                            f"(limit {TOLERANCE:g})")
    return HfExport(dest, type(clf).__name__, diff)


@torch.no_grad()
def _parity(model: torch.nn.Module, dest: Path) -> float:
    """Max |logit difference| between the reloaded directory and eeserve's stepwise last exit."""
    hf = AutoModelForSequenceClassification.from_pretrained(str(dest)).eval()
    enc = model.encode(PROBE)  # type: ignore[operator]
    ours = model.all_exit_logits(enc)[:, -1]  # type: ignore[operator]  # (B, C)
    theirs = hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits  # (B, C)
    return float((ours - theirs).abs().max())
