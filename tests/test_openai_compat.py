"""The OpenAI-compatible `/v1` endpoints, driven by the official `openai` client."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import openai
import pytest

from live_server import LiveServer
from memosys.config import Settings
from memosys.interface.server import create_app
from memosys.system import MemOS


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory, embedder) -> Iterator[MemOS]:
    mos = MemOS(Settings.load(tmp_path_factory.mktemp("openai")), embedder=embedder)
    yield mos
    mos.close()


@pytest.fixture(scope="module")
def oai(runtime: MemOS) -> Iterator[openai.OpenAI]:
    with LiveServer(create_app(runtime)) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)


def test_models_lists_the_chat_model_and_the_embedder(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    assert ids == ["memosys", "minilm-l6-v2"]
    assert oai.models.retrieve("memosys").owned_by == "memosys"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-17")


def test_embeddings_match_the_runtime_embedder(oai: openai.OpenAI, runtime: MemOS) -> None:
    texts = ["Alice prefers tea", "Bob adopted a beagle"]
    # the client asks for base64 by default and decodes it; float is the other format
    b64 = oai.embeddings.create(model="minilm-l6-v2", input=texts)
    flt = oai.embeddings.create(model="minilm-l6-v2", input=texts, encoding_format="float")
    expected = runtime.embedder.embed(texts)
    for resp in (b64, flt):
        got = np.asarray([d.embedding for d in resp.data], dtype=np.float32)
        assert got.shape == (2, 384) and [d.index for d in resp.data] == [0, 1]
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert resp.model == "minilm-l6-v2" and resp.usage.prompt_tokens == 7
    single = oai.embeddings.create(model="minilm-l6-v2", input="one text",
                                   encoding_format="float")
    assert len(single.data) == 1
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="minilm-l6-v2", input=["ok", "  "])
    with pytest.raises(openai.BadRequestError):
        oai.embeddings.create(model="minilm-l6-v2", input="x", dimensions=12)
    with pytest.raises(openai.UnprocessableEntityError):
        oai.embeddings.create(model="minilm-l6-v2", input=[[1, 2, 3]])  # token arrays
