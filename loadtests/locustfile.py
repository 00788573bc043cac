"""Load test through the stock OpenAI SDK: chat completions, streamed and not.

    python -m locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 16 -t 30s \\
        --model switchyard-tiny-v1 --slo loadtests/slo.yaml

Run it from the repository root (`python -m` puts the root on the path). Each user is an
OpenAI client with no SDK retries: the gateway's own retries and sheds are what is measured.
Locust's table gets one row per kind of answer:

- `chat` and `chat stream`: whole requests (a stream's time is to its last event);
- `TTFT`: time to the first content event of a stream (a custom metric);
- `shed`: 429/503 answers with Retry-After, the gateway refusing work (not errors of the SLO);
- `warm-up ...`: the same for requests started in the first `--warmup` seconds, while users
  start and clients connect; they are outside the SLO and the report's duration.

A stream counts as failed when it ends with an error event or without a finish reason
(truncated). `--slo FILE` checks p95 TTFT, p99 latency, the error rate and the shed rate
when the run ends, and a breach makes locust exit with status 1. `--report-json FILE`
writes the figures for the benchmark scripts; `--acknowledged FILE` keeps every answered
keyed request (key, body, completion id) so a script can check that none was lost.
"""

import json
import logging
import random
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

import gevent
import httpx
import openai
import yaml
from locust import User, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

from loadtests.slo import SHED, TTFT, WARM_UP, Slo, evaluate

# One line per request from the SDK's HTTP client would drown locust's own output.
for _name in ("httpx", "httpx2", "openai"):
    logging.getLogger(_name).setLevel(logging.WARNING)


_acknowledged: TextIO | None = None
_measured_from = 0.0  # perf_counter() from which requests count: the warm-up is over
# How streams ended; `no_content`: completed with no content at all (an end token first), so no TTFT.
_streams: dict[str, int] = {"completed": 0, "no_content": 0, "error_event": 0, "truncated": 0, "hung": 0}


def _options(parser: Any) -> None:
    parser.add_argument("--model", default="switchyard-tiny-v1", help="model to ask for")
    parser.add_argument("--api-key", default="load-test", help="an access token (`make -s token`)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--stream-share", type=float, default=0.5, help="share of requests streamed (0 to 1)")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s per user, Poisson (0: back to back)")
    parser.add_argument("--idempotency", action="store_true", help="send a new Idempotency-Key per request")
    parser.add_argument("--tenants", type=int, default=1, help="users spread over this many `user` values")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="client timeout, seconds")
    parser.add_argument("--slo", default="", help="YAML file of objectives; a breach exits 1")
    parser.add_argument("--report-json", default="", help="write the run's figures here")
    parser.add_argument("--acknowledged", default="", help="append every answered keyed request here")
    parser.add_argument("--warmup", type=float, default=0.0, help="first seconds, reported apart (`warm-up` rows)")


def _start(environment: Environment, **_: Any) -> None:
    global _acknowledged, _measured_from
    options = environment.parsed_options
    if options is None:
        return
    if options.acknowledged:
        _acknowledged = Path(options.acknowledged).open("a")  # noqa: SIM115 (closed when locust quits)
    _measured_from = time.perf_counter() + options.warmup


class ChatUser(User):
    """One client: a chat completion at a time, streamed or not by `--stream-share`."""

    def wait_time(self) -> float:
        """With `--rate`, requests start at Poisson arrival times whatever the answers take (a
        late user catches up), so a slow or shedding gateway does not lower the load it is
        offered. Independent users add up to one Poisson stream: no synchronized bursts, as
        users all started at once and paced alike would make."""
        rate = self.options.rate
        if rate <= 0:
            return 0.0
        self._next_at += random.expovariate(rate)
        return max(0.0, self._next_at - time.monotonic())

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.options = options
        if options.rate > 0:  # the first arrival too is a Poisson one, not the moment of spawning
            self._next_at = time.monotonic() + random.expovariate(options.rate)
            gevent.sleep(self._next_at - time.monotonic())
        self.client = openai.OpenAI(
            base_url=f"{self.host}/v1", api_key=options.api_key, max_retries=0, timeout=options.request_timeout
        )
        self.tenant = f"tenant-{random.randrange(options.tenants)}"

    @task
    def chat(self) -> None:
        options = self.options
        stream = random.random() < options.stream_share
        key = uuid.uuid4().hex if options.idempotency else None
        body: dict[str, Any] = {
            "model": options.model,
            "messages": [{"role": "user", "content": f"Say hello to {uuid.uuid4().hex[:8]}."}],
            "max_tokens": options.max_tokens,
            "user": self.tenant,
        }
        headers = {"Idempotency-Key": key, "x-request-id": key} if key else {}
        started = time.perf_counter()
        try:
            if stream:
                self._stream(body, headers, started)
            else:
                completion = self.client.chat.completions.create(**body, extra_headers=headers)
                self._record("chat", started, len(completion.choices[0].message.content or ""))
                if key and _acknowledged is not None:
                    _acknowledged.write(json.dumps({"key": key, "body": body, "id": completion.id}) + "\n")
        except openai.APIStatusError as exc:
            if exc.status_code in (429, 503) and "retry-after" in exc.response.headers:
                self._record(SHED, started, 0)
            else:
                self._record("chat stream" if stream else "chat", started, 0, exc)
        except openai.APIError as exc:  # connection errors, timeouts, an error event mid-stream
            self._record("chat stream" if stream else "chat", started, 0, exc)

    def _stream(self, body: dict[str, Any], headers: dict[str, str], started: float) -> None:
        first: float | None = None
        finish = None
        size = 0
        try:
            for chunk in self.client.chat.completions.create(**body, stream=True, extra_headers=headers):
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if first is None and choice.delta.content:
                    first = time.perf_counter()
                    self._record(TTFT, started, 0, at=first)
                size += len(choice.delta.content or "")
                finish = choice.finish_reason or finish
        except (openai.APIStatusError, openai.APIConnectionError):
            raise  # refused or unreachable: no stream began
        except openai.APIError:
            _streams["error_event"] += 1  # the stream ended with an error event
            raise
        except httpx.TimeoutException as exc:  # no byte for the client's whole timeout: a hang
            _streams["hung"] += 1
            self._record("chat stream", started, size, exc)
            return
        except httpx.HTTPError as exc:  # the connection broke with no error event: truncated
            _streams["truncated"] += 1
            self._record("chat stream", started, size, exc)
            return
        if finish is None:
            _streams["truncated"] += 1
            self._record("chat stream", started, size, RuntimeError("stream ended without a finish reason"))
            return
        _streams["completed"] += 1
        _streams["no_content"] += first is None
        self._record("chat stream", started, size)

    def _record(
        self, name: str, started: float, size: int, error: Exception | None = None, *, at: float | None = None
    ) -> None:
        elapsed_ms = ((at or time.perf_counter()) - started) * 1000
        self.environment.events.request.fire(
            request_type="POST",
            name=name if started >= _measured_from else f"{WARM_UP} {name}",
            response_time=elapsed_ms,
            response_length=size,
            exception=error,
            context={},
        )


def _check(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return
    if _acknowledged is not None:
        _acknowledged.close()
    options = environment.parsed_options
    report = _report(environment)
    if options.report_json:
        Path(options.report_json).write_text(json.dumps(report, indent=2))
    if options.slo:
        slo = Slo(**yaml.safe_load(Path(options.slo).read_text()))
        breaches = evaluate(slo, report)
        for breach in breaches:
            print(f"SLO breached: {breach}")
        if breaches:
            environment.process_exit_code = 1
        else:
            print("SLO met")


def _report(environment: Environment) -> dict[str, Any]:
    stats = environment.stats
    runner = environment.runner
    assert runner is not None
    rows: dict[str, Any] = {}
    for (name, _method), entry in stats.entries.items():
        rows[name] = {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "rps": entry.total_rps,
            "p50_ms": entry.get_response_time_percentile(0.5),
            "p95_ms": entry.get_response_time_percentile(0.95),
            "p99_ms": entry.get_response_time_percentile(0.99),
            "max_ms": entry.max_response_time,
        }
    warmup = environment.parsed_options.warmup if environment.parsed_options else 0.0
    return {
        "duration_s": max(0.0, stats.last_request_timestamp - stats.start_time - warmup)
        if stats.last_request_timestamp
        else 0.0,
        "rows": rows,
        "streams": dict(_streams),
        "errors": {f"{e.name}: {e.error}": e.occurrences for e in stats.errors.values()},
    }


events.init_command_line_parser.add_listener(_options)
events.test_start.add_listener(_start)
events.quitting.add_listener(_check)
