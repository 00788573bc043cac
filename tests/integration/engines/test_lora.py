"""Multi-LoRA in the Transformers engine: vLLM's endpoints, mixed batches, eviction and refusals."""

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForCausalLM

from harness.adapters import make_foreign_adapter, make_lora_adapter, quiet_peft
from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL

MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def adapters(builtin_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    made = {name: make_lora_adapter(builtin_model, root / name, seed=i) for i, name in enumerate(["a", "b", "c"])}
    made["rank16"] = make_lora_adapter(builtin_model, root / "rank16", rank=16)
    made["foreign"] = make_foreign_adapter(made["a"], root / "foreign")
    return made


@pytest.fixture(scope="module")
def lora_engine(builtin_model: Path, log_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    args = ["--model", str(builtin_model), "--served-model-name", MODEL, "--port", str(port)]
    args += ["--max-loras", "2", "--max-lora-rank", "8"]
    server = ServerProcess("engines.transformers", args, port=port, log_dir=log_dir).wait_ready()
    yield server
    server.stop()


def _load(engine: ServerProcess, name: str, path: Path, **extra: object) -> httpx.Response:
    body = {"lora_name": name, "lora_path": str(path), **extra}
    return httpx.post(engine.url + "/v1/load_lora_adapter", json=body, timeout=60)


def _unload(engine: ServerProcess, name: str) -> httpx.Response:
    return httpx.post(engine.url + "/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)


def _chat(engine: ServerProcess, model: str, max_tokens: int = 16) -> str:
    body = {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0}
    response = httpx.post(engine.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def _models(engine: ServerProcess) -> dict[str, dict[str, object]]:
    return {card["id"]: card for card in httpx.get(engine.url + "/v1/models").json()["data"]}


def _peft_reference(builtin_model: Path, adapter: Path, max_tokens: int) -> str:
    tokenizer = AutoTokenizer.from_pretrained(builtin_model)
    with quiet_peft():
        model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(builtin_model), str(adapter)).eval()
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        output = model.generate(  # type: ignore[no-untyped-call]
            input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_tokens, do_sample=False
        )
    return str(tokenizer.decode(output[0][len(ids) :], skip_special_tokens=True))


@pytest.fixture(scope="module")
def lora_gateway(lora_engine: ServerProcess, log_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    pools = [{"name": "lora", "replicas": [lora_engine.url]}]
    env = {"SWITCHYARD_POOLS": json.dumps(pools), "SWITCHYARD_HEALTH_INTERVAL_S": "0.2"}
    server = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def clean(lora_engine: ServerProcess) -> Iterator[ServerProcess]:
    yield lora_engine
    for name in _models(lora_engine):
        if name != MODEL:
            _unload(lora_engine, name)


def test_load_select_and_unload(clean: ServerProcess, adapters: dict[str, Path], builtin_model: Path) -> None:
    response = _load(clean, "a", adapters["a"])
    assert response.status_code == 200
    assert response.text == "Success: LoRA adapter 'a' added successfully."
    card = _models(clean)["a"]
    assert card["parent"] == MODEL
    assert card["root"] == str(adapters["a"])
    tuned = _chat(clean, "a")
    assert tuned != _chat(clean, MODEL)
    assert tuned == _peft_reference(builtin_model, adapters["a"], 16), "the adapter is applied as PEFT applies it"
    assert _unload(clean, "a").status_code == 200
    assert "a" not in _models(clean)
    gone = httpx.post(clean.url + "/v1/chat/completions", json={"model": "a", "messages": MESSAGES})
    assert gone.status_code == 404


def test_mixed_adapter_batch_matches_each_alone(clean: ServerProcess, adapters: dict[str, Path]) -> None:
    for name in ("a", "b"):
        assert _load(clean, name, adapters[name]).status_code == 200
    alone = {model: _chat(clean, model, 48) for model in (MODEL, "a", "b")}
    together: dict[str, str] = {}

    def run(model: str) -> None:
        together[model] = _chat(clean, model, 48)

    threads = [threading.Thread(target=run, args=(model,)) for model in (MODEL, "a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone
    assert len(set(alone.values())) == 3


def test_least_recently_used_adapter_is_evicted(clean: ServerProcess, adapters: dict[str, Path]) -> None:
    assert _load(clean, "a", adapters["a"]).status_code == 200
    assert _load(clean, "b", adapters["b"]).status_code == 200
    _chat(clean, "a", 2)  # a is now more recent than b
    assert _load(clean, "c", adapters["c"]).status_code == 200
    assert set(_models(clean)) == {MODEL, "a", "c"}


def test_load_in_place_replaces(clean: ServerProcess, adapters: dict[str, Path]) -> None:
    assert _load(clean, "a", adapters["a"]).status_code == 200
    before = _chat(clean, "a")
    assert _load(clean, "a", adapters["b"], load_inplace=True).status_code == 200
    assert _models(clean)["a"]["root"] == str(adapters["b"])
    assert _chat(clean, "a") != before


@pytest.mark.parametrize(
    ("name", "path_key", "status", "fragment"),
    [
        ("missing", None, 400, "No adapter"),
        ("rank16", "rank16", 400, "rank 16"),
        ("foreign", "foreign", 400, "another base model"),
        (MODEL, "a", 400, "conflicts"),
    ],
)
def test_bad_adapters_are_refused_and_the_engine_keeps_serving(
    clean: ServerProcess, adapters: dict[str, Path], name: str, path_key: str | None, status: int, fragment: str
) -> None:
    path = adapters[path_key] if path_key else adapters["a"].parent / "does-not-exist"
    response = _load(clean, name, path)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]
    assert set(_models(clean)) == {MODEL}
    assert _chat(clean, MODEL, 4)


def test_refusals_in_vllm_shapes(clean: ServerProcess, adapters: dict[str, Path], tmp_path: Path) -> None:
    assert _load(clean, "a", adapters["a"]).status_code == 200
    duplicate = _load(clean, "a", adapters["a"])
    assert duplicate.status_code == 400
    assert "already been loaded" in duplicate.json()["error"]["message"]
    unknown = _unload(clean, "nope")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "The lora adapter 'nope' cannot be found."
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    assert _load(clean, "prefix", tmp_path).status_code == 400
    missing_field = httpx.post(clean.url + "/v1/load_lora_adapter", json={"lora_name": "x"})
    assert missing_field.status_code == 400
    assert missing_field.json()["error"]["param"] == "lora_path"


def test_lora_requests_info_metric(clean: ServerProcess, adapters: dict[str, Path]) -> None:
    assert _load(clean, "a", adapters["a"]).status_code == 200
    metrics = httpx.get(clean.url + "/metrics").text
    line = next(line for line in metrics.splitlines() if line.startswith("vllm:lora_requests_info{"))
    assert 'max_lora="2"' in line
    assert 'running_lora_adapters=""' in line


def test_the_gateway_routes_to_a_loaded_adapter(
    clean: ServerProcess, lora_gateway: ServerProcess, adapters: dict[str, Path]
) -> None:
    assert _load(clean, "a", adapters["a"]).status_code == 200
    deadline = time.monotonic() + 5
    while "a" not in _models(lora_gateway):
        assert time.monotonic() < deadline, "the gateway never listed the adapter"
        time.sleep(0.1)
    assert _models(lora_gateway)["a"]["parent"] == MODEL
    assert _chat(lora_gateway, "a") == _chat(clean, "a")
