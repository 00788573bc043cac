"""JSON logs (app/observability/logs.py): `log_format: json` makes one JSON object a line, and a
gateway's routing decision and access line for a request (through a gateway in process) carry
the request's id, tenant and outcome."""

import json
import logging
import sys
from typing import Any

import pytest

from app.observability.logs import JsonFormatter, configure_logging
from harness.counting_engine import CountingEngine
from harness.inprocess import gateway_in_process, pool_settings

ENGINE = "http://engine"


def test_the_json_format_writes_json_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    configured: dict[str, Any] = {}
    monkeypatch.setattr(logging, "basicConfig", lambda **values: configured.update(values))
    configure_logging("info", "json")
    [handler] = configured["handlers"]
    assert isinstance(handler.formatter, JsonFormatter)
    assert configured["level"] == "INFO"


async def test_routing_and_access_lines_carry_the_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = pool_settings([ENGINE], pool={"region": "eu"}, region="eu")
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as gateway:
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "user": "tenant-7"}
        response = await gateway.client.post("/v1/chat/completions", json=body, headers={"x-request-id": "req-42"})
        assert response.status_code == 200
    lines = [json.loads(JsonFormatter().format(record)) for record in caplog.records]
    assert lines
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    mine = [line for line in lines if line.get("request_id") == "req-42"]
    routed = next(line for line in mine if line["logger"] == "app.route")
    assert routed["tenant"] == "tenant-7"
    assert (routed["region"], routed["replica"], routed["reason"]) == ("eu", "p-0", "affinity")
    access = next(line for line in mine if line["logger"] == "app.access")
    assert (access["status"], access["tenant"], access["model"]) == (200, "tenant-7", "counting")
    assert access["duration_ms"] > 0


def test_an_exception_is_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed here"
    assert "ValueError: boom" in line["exception"]
