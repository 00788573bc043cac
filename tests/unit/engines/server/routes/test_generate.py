"""What the engine traces: a generating request opens the engine's span; a probe, a scrape,
the model list and adapter loads open none, and neither does FastAPI's own OpenTelemetry (in
the engine or in the sync sidecar), which would otherwise open a span for every request.

In a process of its own, with an in-memory exporter: OpenTelemetry takes one tracer provider
per process, and the gateway's tracing tests install theirs in the test process."""

import json
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engines.fake import FakeEngine
from engines.server.api import create_app
from harness.servers import ROOT
from protocol import tracing
from sync.app import create_app as create_sidecar_app
from sync.settings import SyncSettings

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
COMPLETION = {"model": "fake-model", "prompt": "hi", "max_tokens": 4}
LOAD = {"lora_name": "a", "lora_path": "/adapters/a"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# (label, app, method, path, body): each request of the run, in this order.
REQUESTS = [
    ("chat", "engine", "POST", "/v1/chat/completions", CHAT),
    ("chat stream", "engine", "POST", "/v1/chat/completions", CHAT | {"stream": True}),
    ("completion", "engine", "POST", "/v1/completions", COMPLETION),
    ("refused chat", "engine", "POST", "/v1/chat/completions", {"model": "fake-model"}),
    ("health", "engine", "GET", "/health", None),
    ("metrics", "engine", "GET", "/metrics", None),
    ("models", "engine", "GET", "/v1/models", None),
    ("load", "engine", "POST", "/v1/load_lora_adapter", LOAD),
    ("unload", "engine", "POST", "/v1/unload_lora_adapter", {"lora_name": "a"}),
    ("unknown path", "engine", "GET", "/nowhere", None),
    ("sidecar health", "sidecar", "GET", "/health", None),
    ("sidecar metrics", "sidecar", "GET", "/metrics", None),
    ("sidecar adapters", "sidecar", "GET", "/adapters", None),
]


def record(data_dir: str) -> None:
    """Make each request with a provider installed; print the spans each one finished, by label."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.install(provider)
    sidecar = create_sidecar_app(SyncSettings(data_dir=Path(data_dir), auth_mode="disabled"))
    spans: dict[str, list[dict[str, object]]] = {}
    with TestClient(create_app(FakeEngine())) as engine, TestClient(sidecar) as sync:
        for label, app, method, path, body in REQUESTS:
            memory.clear()
            client = engine if app == "engine" else sync
            response = client.request(method, path, json=body, headers={"traceparent": TRACEPARENT})
            assert response.status_code < 500, (label, response.text)
            spans[label] = [
                {"name": s.name, "kind": s.kind.name, "parent": f"{s.parent.span_id:016x}" if s.parent else None}
                for s in memory.get_finished_spans()
            ]
    print(json.dumps(spans))


def _recorded(tmp_path: Path) -> dict[str, list[dict[str, object]]]:
    script = f"from {__name__} import record; record({str(tmp_path)!r})"
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    recorded: dict[str, list[dict[str, object]]] = json.loads(run.stdout.splitlines()[-1])
    return recorded


# The requests that open a span, and its name; every other request opens none.
TRACED = {"chat": "engine.chat", "chat stream": "engine.chat", "completion": "engine.completion",
          "refused chat": "engine.chat"}  # fmt: skip


def test_only_generating_requests_open_a_span_and_the_framework_opens_none(tmp_path: Path) -> None:
    spans = _recorded(tmp_path)
    assert set(spans) == {label for label, *_ in REQUESTS}
    caller = TRACEPARENT.split("-")[2]
    for label, name in TRACED.items():
        assert spans[label] == [{"name": name, "kind": "SERVER", "parent": caller}], label
    untraced = {label: found for label, found in spans.items() if label not in TRACED}
    assert untraced == {label: [] for label in untraced}
