"""--from-classifier: a user's sequence classifier is kept exactly as the last exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from models.build.data import DataError, TextDataset, TextSplit, tiny_sentiment
from models.build.from_classifier import align_labels
from models.build.recipes import BuildOptions, build
from models.build.tiny import save_tiny_classifier
from models.loading import load_text_artifact
from models.text_classifier import ExitHead


def write_tiny_data(path: Path, n: int = 150) -> Path:
    ds = tiny_sentiment(n)
    rows = [{"text": t, "label": ds.label_names[y]}
            for s in (ds.train, ds.val, ds.test) for t, y in zip(s.texts, s.labels, strict=True)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data") / "d.jsonl")


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "mpnet", "xlm-roberta",
                                    "electra"])
def test_last_exit_is_the_original_classifier(tmp_path: Path, data_file: Path,
                                              family: str) -> None:
    src = save_tiny_classifier(family, tmp_path / "clf")
    before = {k: v.clone() for k, v in AutoModelForSequenceClassification.from_pretrained(
        str(src)).state_dict().items()}
    out = tmp_path / "art"
    manifest = build("from-classifier", BuildOptions(out=out, source=str(src), device="cpu",
                                                     data_file=str(data_file), progress=False,
                                                     epochs=2))
    assert manifest["last_exit_parity"]["max_abs_diff"] <= 1e-5
    loaded = load_text_artifact(out)
    model = loaded.model
    assert loaded.manifest["head"]["last_head"] == f"hf-{family}"
    assert all(isinstance(h, ExitHead) for h in model.heads[:-1])
    ref = AutoModelForSequenceClassification.from_pretrained(str(src)).eval()
    # the classifier on disk was not touched
    assert all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    texts = ["the film was really great and charming", "dull", "a bit boring but the cast is "
             "superb and the music fresh", "awful awful awful tedious script"]
    enc = model.encode(texts)
    ours = model.all_exit_logits(enc)  # (B, L, C)
    with torch.no_grad():
        theirs = ref(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    assert theirs.abs().max() > 0.1  # a meaningful comparison, not two near-zero tensors
    assert (ours[:, -1] - theirs).abs().max() <= 1e-5
    assert ours.shape == (4, 3, 2)
    assert loaded.manifest["labels"] == ["negative", "positive"]


def test_cached_logits_match_the_stepwise_model(tmp_path: Path, data_file: Path) -> None:
    """Exit logits computed from the feature cache equal a fresh stepwise run of the artifact."""
    from models.artifact import load_exit_logits
    from models.build.data import load_user_file

    src = save_tiny_classifier("bert", tmp_path / "clf")
    out = tmp_path / "art"
    build("from-classifier", BuildOptions(out=out, source=str(src), data_file=str(data_file),
                                          progress=False, epochs=3, device="cpu"))
    model = load_text_artifact(out).model
    cached = load_exit_logits(out, "test")
    test = load_user_file(data_file).test
    fresh = torch.cat([model.all_exit_logits(model.encode([t])) for t in test.texts[:10]])
    assert torch.allclose(cached.logits[:10], fresh, atol=1e-4)


def test_labels_are_aligned_to_the_classifier() -> None:
    split = TextSplit(["a", "b"], [0, 1])
    ds = TextDataset("d", ["negative", "positive"], split, split, split)
    flipped = align_labels(ds, {0: "positive", 1: "negative"}, "d.csv")
    assert flipped.label_names == ["positive", "negative"] and flipped.train.labels == [1, 0]
    ids = TextDataset("d", ["0", "1"], split, split, split)
    assert align_labels(ids, {0: "neg", 1: "pos"}, "d.csv").train.labels == [0, 1]
    with pytest.raises(DataError, match="label 'negative' is not one of the classifier's"):
        align_labels(ds, {0: "LABEL_0", 1: "LABEL_1"}, "d.csv")


def test_needs_data_and_refuses_the_encoder_learning_rate(tmp_path: Path) -> None:
    src = save_tiny_classifier("bert", tmp_path / "clf")
    with pytest.raises(ValueError, match="needs --data FILE"):
        build("from-classifier", BuildOptions(out=tmp_path / "o", source=str(src)))
    with pytest.raises(ValueError, match="--lr: the encoder is frozen"):
        build("from-classifier", BuildOptions(out=tmp_path / "o", source=str(src),
                                              data_file="x.csv", overrides={"lr": 1e-4}))


def test_refuses_a_model_that_is_not_a_sequence_classifier(tmp_path: Path) -> None:
    from transformers import AutoModel

    from models.build.tiny import tiny_backbone_config, tiny_tokenizer

    d = tmp_path / "enc"
    AutoModel.from_config(tiny_backbone_config("bert")).save_pretrained(str(d))
    tiny_tokenizer().save_pretrained(str(d))
    with pytest.raises(ValueError, match="is not a sequence classifier"):
        build("from-classifier", BuildOptions(out=tmp_path / "o", source=str(d),
                                              data_file="x.csv"))


def test_the_seed_option_reaches_the_head_training(tmp_path: Path) -> None:
    """`eeserve train --from-classifier DIR --seed N` trains the exit heads from seed N."""
    from models.build.from_classifier import _config

    assert _config(BuildOptions(out=tmp_path, seed=7)).seed == 7
    assert _config(BuildOptions(out=tmp_path)).seed == 42
