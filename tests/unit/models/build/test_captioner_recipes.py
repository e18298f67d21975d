"""Captioning recipes end to end on tiny data: generated scenes and a user's COCO-format file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.artifact import load_exit_logits, read_manifest
from models.build.caption_data import generated_scenes
from models.build.caption_training import caption_scores, small_bleu
from models.build.recipes import BuildOptions, build
from models.caption_loading import load_caption_artifact


def test_tiny_caption_on_a_coco_format_file(tmp_path: Path) -> None:
    scenes = generated_scenes(30, 1, 1, image_size=32).train
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for i in range(len(scenes)):
        scenes.image(i).save(tmp_path / "images" / f"{i:03d}.png")
        images.append({"id": i, "file_name": f"{i:03d}.png"})
        anns.append({"image_id": i, "caption": scenes.captions[i][0]})
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    out = tmp_path / "art"
    build("tiny-caption", BuildOptions(out=out, device="cpu", progress=False,
                                       data_file=str(tmp_path / "captions.json")))
    m = read_manifest(out)
    assert m["kind"] == "captioner" and m["num_exits"] == 3
    assert m["data"]["source"].startswith("COCO-format") and m["data"]["train"] == 24
    val = load_exit_logits(out, "val")
    assert val.logits.shape[1:] == (3, len(m["captioner"]["vocab_ids"]))
    assert len(m["latency"]["per_layer_ms"]["1"]) == 3
    model = load_caption_artifact(out).model
    tok = model.tokenizer
    assert tok.unk_token_id not in tok(scenes.captions[0][0])["input_ids"]
    with torch.inference_mode():
        assert len(model.encode_images(torch.zeros(1, 3, 32, 32))) == 1


def test_caption_scores_agree_on_perfect_and_partial_captions() -> None:
    refs = [["a red circle on the left"], ["two blue squares"]]
    assert small_bleu(["a red circle on the left", "two blue squares"], refs) == 1.0
    assert small_bleu(["a red", "squares"], refs) < 0.5
    scores = caption_scores(["a red circle on the left", "two blue squares"], refs)
    assert scores["bleu4"] > 0.99
