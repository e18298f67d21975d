"""ONNX graphs in the artifact: export round trip, parity record, refusals, backend choice."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from models.artifact import ArtifactError, read_manifest, write_manifest
from models.build.onnx_export import all_logits, export_onnx
from models.loading import BackendChoice, load_text_artifact
from models.onnx_backend import OnnxTextModel
from policies.fit.fit_backend import calibrate_backend
from policies.fit.parity import policy_mismatches


@pytest.fixture()
def art(tiny_artifact: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_artifact, dst)
    return dst


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def test_build_exports_graphs_that_pass_parity_for_every_policy(tiny_artifact: Path) -> None:
    entry = _manifest(tiny_artifact)["onnx"]["fp32"]
    parity = entry["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    assert set(parity["policy_mismatches"]) >= {"beem", "eenet", "maxprob", "none"}
    assert not any(parity["policy_mismatches"].values())
    files = _manifest(tiny_artifact)["files"]
    assert all(g in files for g in entry["graphs"])  # every graph is hashed in the manifest


def test_auto_serves_onnx_with_the_same_answers(tiny_artifact: Path) -> None:
    onnx = load_text_artifact(tiny_artifact, backend="auto")
    torch_ = load_text_artifact(tiny_artifact, backend="torch")
    assert onnx.backend == "onnx" and isinstance(onnx.model, OnnxTextModel)
    assert onnx.manifest["serving"]["calibrated_on"]["parity_with"] == "onnx"
    texts = ["a great film", "dull", "not bad at all , a fine and witty movie"]
    assert torch.allclose(all_logits(onnx.model, texts), all_logits(torch_.model, texts),
                          atol=1e-4)


def test_policies_make_the_same_decisions_on_both_backends(tiny_artifact: Path) -> None:
    from models.build.data import tiny_sentiment

    texts = tiny_sentiment(n=80, seed=7).test.texts + tiny_sentiment(n=80, seed=7).val.texts
    m = read_manifest(tiny_artifact)
    ref = all_logits(load_text_artifact(tiny_artifact).model, texts)
    got = all_logits(load_text_artifact(tiny_artifact, backend="onnx").model, texts)
    alone = torch.cat([all_logits(load_text_artifact(tiny_artifact, backend="onnx").model, [t])
                       for t in texts[:16]])  # rows alone, no padding
    assert policy_mismatches(m, ref, got) == {k: 0 for k in policy_mismatches(m, ref, ref)}
    assert not any(policy_mismatches(m, ref[:16], alone).values())


def _set_onnx(root: Path, **changes: object) -> None:
    m = read_manifest(root, verify=False)
    m["onnx"]["fp32"].update(changes)
    write_manifest(root, m, rehash=False)


def test_tampered_graph_is_refused_in_one_line(art: Path) -> None:
    with open(art / "onnx" / "fp32" / "layer_2.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="layer_2.onnx sha256 mismatch") as e:
        load_text_artifact(art, backend="onnx")
    assert "\n" not in str(e.value)
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        load_text_artifact(art, backend="onnx", verify=False)


def test_missing_graph_is_refused(art: Path) -> None:
    (art / "onnx" / "fp32" / "layer_1.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing ONNX graph onnx/fp32/layer_1.onnx"):
        load_text_artifact(art, backend="onnx", verify=False)


def test_stale_graphs_are_refused_and_auto_falls_back(art: Path) -> None:
    _set_onnx(art, weights_sha256="0" * 64)
    with pytest.raises(ArtifactError, match="exported from other weights"):
        load_text_artifact(art, backend="onnx")
    loaded = load_text_artifact(art, backend="auto")
    assert loaded.backend == "torch" and "stale" in loaded.why


def test_failed_parity_is_never_chosen(art: Path) -> None:
    m = read_manifest(art)
    _set_onnx(art, parity={**m["onnx"]["fp32"]["parity"], "passed": False})
    assert load_text_artifact(art, backend="auto").backend == "torch"
    with pytest.raises(ArtifactError, match="failed the parity check"):
        load_text_artifact(art, backend="onnx")


def test_auto_falls_back_to_torch_without_onnxruntime(
        tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    loaded = load_text_artifact(tiny_artifact, backend="auto")
    assert loaded.backend == "torch" and "not installed" in loaded.why
    with pytest.raises(ArtifactError, match="onnxruntime is not installed"):
        load_text_artifact(tiny_artifact, backend="onnx")


def test_no_graphs_says_how_to_export(art: Path) -> None:
    m = read_manifest(art, verify=False)
    m.pop("onnx")
    shutil.rmtree(art / "onnx")
    write_manifest(art, m)
    with pytest.raises(ArtifactError, match="eeserve export .* --format onnx"):
        load_text_artifact(art, backend="onnx")
    assert load_text_artifact(art, backend="auto").backend == "torch"


def test_int8_needs_its_own_calibration(art: Path) -> None:
    report = export_onnx(art, "int8", progress=False)
    assert report.graphs and 0.0 <= report.parity["final_agreement"] <= 1.0
    with pytest.raises(ArtifactError, match="precision int8 was not calibrated"):
        load_text_artifact(art, backend=BackendChoice("onnx", "int8"))
    with pytest.raises(ArtifactError, match="onnx backend only"):
        load_text_artifact(art, backend=BackendChoice("torch", "int8"))
    entry = calibrate_backend(art, "onnx", "int8")
    assert entry["logits_file"] == "exit_logits.onnx-int8.safetensors"
    assert set(entry["policies"]) >= {"beem", "maxprob"}
    loaded = load_text_artifact(art, backend=BackendChoice("onnx", "int8"))
    assert loaded.model.precision == "int8"
    assert loaded.manifest["policies"] == entry["policies"]  # int8's own operating points
    assert loaded.manifest["serving"]["calibrated_on"] == {"backend": "onnx",
                                                           "precision": "int8"}


def test_reexport_after_new_weights_is_fresh(art: Path) -> None:
    report = export_onnx(art, "fp32", progress=False)
    assert report.parity["passed"] is True or report.parity["max_abs_diff"] <= 1e-4
    assert load_text_artifact(art, backend="onnx").backend == "onnx"
