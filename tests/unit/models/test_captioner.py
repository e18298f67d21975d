"""The multi-exit captioner on tiny random models: HF equivalence, step API, CALM state
propagation, batches that shrink, artifacts, data and training targets."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.artifact import ArtifactError
from models.build.caption_data import (
    generated_scenes,
    load_coco,
    render_scene,
    scene_words,
    word_tokenizer,
)
from models.build.caption_recipes import tiny_ved
from models.build.caption_training import make_targets
from models.caption_loading import (
    captioner_from_ved,
    load_caption_artifact,
    save_caption_artifact,
)
from models.captioner import CaptionerConfig, CaptionState, MultiExitCaptioner
from models.image_encoder import ImageConfig

L = 3


def tiny(seed: int = 0, vocab: tuple[int, ...] | None = None) -> tuple[MultiExitCaptioner, object]:
    torch.manual_seed(seed)
    tok = word_tokenizer(scene_words())
    ved = tiny_ved(len(tok), layers=L).eval()
    cfg = CaptionerConfig(vocab_ids=vocab or tuple(range(len(tok))), bos_token_id=1,
                          eos_token_id=2, max_tokens=8, encoder="hf-vision",
                          image=ImageConfig(size=32))
    model = captioner_from_ved(ved, tok, cfg).eval()
    for head in model.heads:  # random, distinct heads
        torch.nn.init.normal_(head.out.weight, std=0.5)
    return model, ved


def ids_for(b: int, t: int, vocab: int) -> torch.Tensor:
    ids = torch.randint(4, vocab, (b, t))
    ids[:, 0] = 1
    return ids


def run_forced(model: MultiExitCaptioner, px: torch.Tensor, ids: torch.Tensor,
               exit_at: list[int]) -> list[torch.Tensor]:
    """Teacher-forced stepping where row i exits after layer exit_at[i] at every token;
    returns the logits each row exits with, per position (B, V')."""
    state = model.encode_images(px, capacity=ids.shape[1])
    out = []
    for t in range(ids.shape[1]):
        state.last = ids[:, t]
        tb = model.embed(state)
        got = torch.zeros(len(state), len(model.config.vocab_ids))
        for k in range(1, L + 1):
            o = model.step(tb, k)
            tb = o.batch  # type: ignore[assignment]
            here = torch.tensor([exit_at[int(r)] == k for r in tb.rows])
            got[tb.rows[here]] = o.logits[here]
            model.propagate(tb.filter(here))
            tb = tb.filter(~here)
            if len(tb) == 0:
                break
        out.append(got)
        model.advance(state, ids[:, t])
        state.last = ids[:, t]
    return out


def test_full_depth_matches_hugging_face_forward() -> None:
    model, ved = tiny()
    px, ids = torch.randn(2, 3, 32, 32), ids_for(2, 6, len(model.tokenizer))
    with torch.no_grad():
        hf = ved(pixel_values=px, decoder_input_ids=ids).logits  # (2, 6, V)
        mine = model(model.memory(px), ids)  # (2, L, 6, V)
    assert mine.shape == (2, L, 6, len(model.tokenizer))
    torch.testing.assert_close(mine[:, -1], hf, atol=1e-5, rtol=1e-4)
    stepped = run_forced(model, px, ids, [L, L])
    for t in range(6):
        torch.testing.assert_close(stepped[t], hf[:, t], atol=1e-5, rtol=1e-4)


def test_every_exit_of_the_step_api_matches_teacher_forcing() -> None:
    model, _ = tiny(1)
    px, ids = torch.randn(3, 3, 32, 32), ids_for(3, 5, len(model.tokenizer))
    with torch.no_grad():
        ref = model(model.memory(px), ids)  # (3, L, 5, V')
    state = model.encode_images(px, capacity=5)
    for t in range(5):
        state.last = ids[:, t]
        tb = model.embed(state)
        for k in range(1, L + 1):
            o = model.step(tb, k)
            tb = o.batch  # type: ignore[assignment]
            torch.testing.assert_close(o.logits, ref[:, k - 1, t], atol=1e-5, rtol=1e-4)
        model.advance(state, ids[:, t])


def test_state_propagation_fills_the_skipped_layers_kv_from_the_exit_state() -> None:
    model, _ = tiny(2)
    px = torch.randn(2, 3, 32, 32)
    state = model.encode_images(px, capacity=4)
    tb = model.step(model.embed(state), 1).batch  # both rows after layer 1
    assert float(state.keys[1][:, :, 0].abs().sum()) == 0.0  # layer 2 not run yet
    n = model.propagate(tb)  # type: ignore[arg-type]
    assert n == (L - 1) * 2
    h = tb.hidden  # type: ignore[attr-defined]
    for i in range(1, L):
        blk = model.blocks[i]
        with torch.inference_mode():
            _, k, v = blk.attn.c_attn(blk.ln_1(h)).split(model.hidden_size, dim=-1)
        torch.testing.assert_close(state.keys[i][:, :, 0], k.view(2, model.num_heads, -1))
        torch.testing.assert_close(state.values[i][:, :, 0], v.view(2, model.num_heads, -1))
    assert model.propagate(model.step(model.step(tb, 2).batch, 3).batch) == 0  # type: ignore


def test_rows_exiting_at_different_layers_match_running_them_alone() -> None:
    model, _ = tiny(3)
    px, ids = torch.randn(3, 3, 32, 32), ids_for(3, 5, len(model.tokenizer))
    exit_at = [1, 3, 2]
    together = run_forced(model, px, ids, exit_at)
    for r in range(3):
        alone = run_forced(model, px[r:r + 1], ids[r:r + 1], [exit_at[r]])
        for t in range(5):
            torch.testing.assert_close(together[t][r], alone[t][0], atol=1e-5, rtol=1e-4)


def test_early_exit_with_propagation_differs_from_full_depth_only_through_the_cache() -> None:
    model, _ = tiny(4)
    px, ids = torch.randn(1, 3, 32, 32), ids_for(1, 4, len(model.tokenizer))
    full = run_forced(model, px, ids, [L])
    early = run_forced(model, px, ids, [1])
    with torch.no_grad():
        ref = model(model.memory(px), ids)
    torch.testing.assert_close(early[0], ref[:, 0, 0])  # first token: nothing cached yet
    torch.testing.assert_close(full[3], ref[:, -1, 3], atol=1e-5, rtol=1e-4)


def test_restricted_vocabulary_maps_back_to_token_ids() -> None:
    vocab = (2, 4, 7, 9)
    model, _ = tiny(5, vocab)
    state = model.encode_images(torch.randn(2, 3, 32, 32))
    out = model.step(model.embed(state), 1)
    assert out.logits.shape == (2, 4)
    assert model.token_ids(torch.tensor([0, 3])).tolist() == [2, 9]
    assert model.eos_index == 0
    with pytest.raises(ValueError, match="EOS"):
        tiny(5, (4, 7))


def test_caption_state_filter_and_concatenate_keep_shapes() -> None:
    model, _ = tiny(6)
    a = model.encode_images(torch.randn(3, 3, 32, 32), capacity=4)
    b = model.encode_images(torch.randn(2, 3, 32, 32), capacity=6)
    model.advance(a, torch.tensor([4, 5, 6]))
    merged = CaptionState.concatenate([a, b])
    assert len(merged) == 5 and merged.capacity == 6
    assert merged.pos.tolist() == [1, 1, 1, 0, 0]
    assert all(k.shape == (5, model.num_heads, 6, 8) for k in merged.keys)
    kept = merged.filter(torch.tensor([True, False, True, False, True]))
    assert len(kept) == 3 and kept.last.tolist() == [4, 6, 1]
    assert kept.cross_keys[0].shape[0] == 3
    tb = model.embed(kept)
    tb2 = tb.filter(torch.tensor([False, True, True]))
    assert tb2.rows.tolist() == [1, 2] and not tb2.whole and tb2.hidden.shape == (2, 32)
    with pytest.raises(ValueError, match="layer 0"):
        model.step(tb2, 2)


def test_artifact_round_trip_and_tamper_check(tmp_path: Path) -> None:
    model, _ = tiny(7)
    save_caption_artifact(model, tmp_path, {"name": "cap", "policies": {},
                                            "default_policy": "none"})
    loaded = load_caption_artifact(tmp_path)
    assert loaded.kind == "captioner" and loaded.model.num_exits == L
    px, ids = torch.randn(1, 3, 32, 32), ids_for(1, 3, len(model.tokenizer))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(loaded.model.memory(px), ids),
                                   model(model.memory(px), ids))
    (tmp_path / "decoder_config.json").write_text("{}")
    with pytest.raises(ArtifactError, match="sha256"):
        load_caption_artifact(tmp_path)


def test_generated_scenes_are_deterministic_and_captioned() -> None:
    ds = generated_scenes(6, 2, 2, image_size=48)
    assert len(ds.train) == 6 and all(len(refs) == 1 for refs in ds.train.captions)
    im = ds.train.image(0)
    assert im.size == (48, 48) and im.mode == "RGB"
    assert render_scene(ds.train.images[0], 48).tobytes() == im.tobytes()  # type: ignore[arg-type]
    tok = word_tokenizer(scene_words())
    for refs in ds.train.captions:
        assert 3 not in tok(refs[0])["input_ids"]  # no [UNK]
    assert ds.fingerprint() == generated_scenes(6, 2, 2, image_size=48).fingerprint()


def test_coco_reader_splits_images_and_keeps_all_references(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for i in range(20):
        Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(tmp_path / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png"})
        anns += [{"image_id": i, "caption": f"a red thing {i}"},
                 {"image_id": i, "caption": "something red"}]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    ds = load_coco(tmp_path / "captions.json")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 2, 2)
    assert all(len(r) == 2 for r in ds.train.captions)
    assert ds.train.image(0).size == (8, 8)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a COCO captions file"):
        load_coco(tmp_path / "bad.json")


def test_training_targets_are_shifted_by_one() -> None:
    model, _ = tiny(8)
    tg = make_targets(model, [["a red circle"], ["two blue squares", "a big one"]], 12)
    tok = model.tokenizer
    ids = tok("a red circle", add_special_tokens=False)["input_ids"]
    assert tg.input_ids[0, :4].tolist() == [1, *ids]
    assert tg.labels[0, :4].tolist() == [*ids, 2] and tg.labels[0, 4:].eq(-100).all()
    assert tg.image.tolist() == [0, 1, 1]
    assert base64  # imported for symmetry with the API tests


def test_efficientnet_captioner_shapes_without_downloads() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from models.caption_loading import efficientnet_captioner
    from models.captioner import tiny_decoder_config

    tok = word_tokenizer(scene_words())
    cfg = CaptionerConfig(vocab_ids=tuple(range(len(tok))), bos_token_id=1, eos_token_id=2,
                          max_tokens=4, encoder="efficientnet-lite0", image=ImageConfig(size=64))
    model = efficientnet_captioner(tiny_decoder_config(len(tok), layers=2), tok, cfg).eval()
    with torch.inference_mode():
        feats = model.encoder.features(torch.randn(1, 3, 64, 64))
        assert feats.shape == (1, 4, 1280)  # 64 px → 2×2 tokens of 1280 channels
        state = model.encode_images(torch.randn(2, 3, 64, 64))
        out = model.step(model.embed(state), 1)
    assert out.logits.shape == (2, len(tok)) and state.cross_keys[0].shape[2] == 4
