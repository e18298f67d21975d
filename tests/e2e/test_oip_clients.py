"""The real Open Inference Protocol clients against a live eeserve: tritonclient and kserve."""

from __future__ import annotations

import numpy as np
import pytest

from tests.e2e.server import Server

TEXTS = ["a great film", "dull and boring", "wonderful acting"]


def _texts() -> np.ndarray:
    return np.array([t.encode() for t in TEXTS], dtype=np.object_)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer(server: Server, binary: bool) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny-text")
    meta = client.get_model_metadata("tiny-text")
    assert meta["inputs"][0]["name"] == "TEXT"
    inp = httpclient.InferInput("TEXT", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(_texts(), binary_data=binary)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary)
            for n in ("LABEL", "PROBS", "EXIT_LAYER")]
    res = client.infer("tiny-text", [inp], outputs=outs, parameters={"policy": "none"})
    assert res.as_numpy("EXIT_LAYER").tolist() == [3, 3, 3]
    probs = res.as_numpy("PROBS")
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert {x.decode() if isinstance(x, bytes) else x for x in res.as_numpy("LABEL")} <= \
        {"negative", "positive"}
    assert res.get_response()["parameters"]["mean_exit_layer"] == 3


def test_tritonclient_default_outputs_and_errors(server: Server) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    inp = httpclient.InferInput("TEXT", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(_texts())
    res = client.infer("tiny-text", [inp])  # binary_data_output=True, every output
    assert res.as_numpy("EXIT_LAYER").shape == (3,)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [inp])
    bad = httpclient.InferInput("TEXT", [1], "FP32")
    bad.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    with pytest.raises(InferenceServerException, match="BYTES"):
        client.infer("tiny-text", [bad])
    assert client.is_server_live()


async def test_kserve_rest_client_v2(server: Server) -> None:
    kserve = pytest.importorskip("kserve")
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        assert await client.is_server_live(server.url)
        assert await client.is_server_ready(server.url)
        assert await client.is_model_ready(server.url, "tiny-text")
        inp = InferInput("TEXT", [len(TEXTS)], "BYTES")
        inp.set_data_from_numpy(_texts(), binary_data=False)
        req = InferRequest(model_name="tiny-text", infer_inputs=[inp],
                           parameters={"policy": "none"})
        res = await client.infer(server.url, req, model_name="tiny-text")
        outs = {o.name: o for o in res.outputs}
        assert outs["EXIT_LAYER"].as_numpy().tolist() == [3, 3, 3]
        assert outs["PROBS"].as_numpy().shape == (3, 2)
    finally:
        await client.close()
    assert kserve is not None
