"""JSON logs: a gateway with `log_format: json` writes its routing decision and its access
line for a request as JSON objects that carry the request's id, tenant and outcome."""

import json
import logging
import sys
from pathlib import Path

import httpx

from app.observability.logs import JsonFormatter
from harness.servers import ServerProcess, free_port


def test_routing_and_access_lines_carry_the_request(log_dir: Path) -> None:
    engine_port, port = free_port(), free_port()
    engine = ServerProcess("harness.counting_engine", ["--port", str(engine_port)], port=engine_port, log_dir=log_dir)
    env = {
        "SWITCHYARD_POOLS": json.dumps([{"name": "p", "region": "eu", "replicas": [engine.url]}]),
        "SWITCHYARD_REGION": "eu",
        "SWITCHYARD_LOG_FORMAT": "json",
        "SWITCHYARD_LOG_LEVEL": "info",
    }
    gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    try:
        engine.wait_ready()
        gateway.wait_ready()
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "user": "tenant-7"}
        response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"x-request-id": "req-42"})
        assert response.status_code == 200
    finally:
        gateway.stop()
        engine.stop()
    lines = [json.loads(line) for line in gateway.log_path.read_text().splitlines() if line.startswith("{")]
    assert lines, gateway.output()
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
