"""The README's sync-sidecar example ("Adapters across regions"), run as the README has it.

The commands are read from README.md itself: the three server command lines, the Python
heredoc that makes the adapter, `TOKEN=$(make -s token)` (the recipe read from the Makefile)
and the `curl` calls (method, path, headers, body), so an edit that breaks the example breaks
this test. What differs from a user's terminal, and why:

- free ports stand in for 8100 (engine), 8000 (gateway) and 8300 (sidecar), substituted
  everywhere in the block; the gateway, on its default port in the README, gets `--port`, and
  the sidecar, whose issuer defaults to the gateway's on port 8000, gets `--auth-issuer`, as
  the README tells a user with other ports;
- HOME is a fresh folder, so `~/.cache/switchyard` starts empty and the engine builds the
  built-in model there, as on a first run; `/tmp/support-bot` is a folder of the test's own;
- the gateway runs its built-in issuer (the default, which the test harness turns off unless
  asked), and `make -s token` is its recipe run with this interpreter and the gateway's port;
- `curl` calls are sent with httpx, `localhost` as 127.0.0.1; the chat completion is sent as
  written and again at temperature 0 to compare with the base model's answer.
"""

import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.servers import ROOT, ServerProcess, free_port

SECTION = "## Adapters across regions (sync sidecar)"
README_PORTS = {"engine": 8100, "gateway": 8000, "sidecar": 8300}
SERVER_MODULES = {"engine": "engines.transformers", "gateway": "app", "sidecar": "sync"}
ADAPTER = "support-bot"
DEADLINE_S = 30.0  # a reconcile pass (2 s) and the gateway's next look at its engines, with room


@dataclass(frozen=True)
class Curl:
    method: str
    url: str
    headers: dict[str, str]
    body: str | None

    def send(self, token: str, **changes: Any) -> httpx.Response:
        """The call as written (`$TOKEN` filled in); `changes` replace fields of its JSON body."""
        headers = {k: v.replace("$TOKEN", token) for k, v in self.headers.items()}
        content = self.body
        if changes:
            content = json.dumps(json.loads(self.body or "{}") | changes)
        return httpx.request(self.method, self.url, headers=headers, content=content, timeout=60)

    def anonymous(self) -> "Curl":
        return Curl(self.method, self.url, {k: v for k, v in self.headers.items() if "$TOKEN" not in v}, self.body)


@dataclass(frozen=True)
class Example:
    ports: dict[str, int]  # role: the port standing in for the README's
    servers: dict[str, tuple[dict[str, str], list[str]]]  # role: (environment, `python -m` arguments)
    heredoc: str
    token_command: list[str]
    curls: list[Curl]

    def curl(self, method: str, fragment: str) -> Curl:
        found = [c for c in self.curls if c.method == method and fragment in c.url]
        assert len(found) == 1, f"the README's example has {len(found)} `curl` {method} ...{fragment}: {self.curls}"
        return found[0]


def _section_block(readme: str) -> str:
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"no sh block in {SECTION!r}"
    return match.group(1)


def _curl(argv: list[str]) -> Curl:
    method, url, headers, body = "GET", "", {}, None
    words = iter(argv[1:])
    for word in words:
        if word == "-X":
            method = next(words)
        elif word == "-H":
            name, value = next(words).split(":", 1)
            headers[name.strip()] = value.strip()
        elif word in ("-d", "--data"):
            body, method = next(words), "POST" if method == "GET" else method
        else:
            assert not word.startswith("-"), f"a curl option this test does not know: {word}"
            url = word
    return Curl(method, url if "://" in url else "http://" + url, headers, body)


def parse_example(readme: str, makefile: str, ports: dict[str, int], adapter_dir: Path) -> Example:
    """The README's example with `ports` for the README's and `adapter_dir` for /tmp/support-bot."""
    block = _section_block(readme).replace("/tmp/support-bot", str(adapter_dir))
    for role, port in ports.items():
        block = re.sub(rf"\b{README_PORTS[role]}\b", str(port), block)
    block = block.replace("localhost:", "127.0.0.1:")
    heredoc = re.search(r"^python - <<'EOF'\n(.*?)^EOF$", block, re.S | re.M)
    assert heredoc, "no `python - <<'EOF'` heredoc in the example"
    lines = (block[: heredoc.start()] + block[heredoc.end() :]).replace("\\\n", " ").splitlines()
    servers: dict[str, tuple[dict[str, str], list[str]]] = {}
    curls, token_lines = [], []
    for argv in (shlex.split(line, comments=True) for line in lines):
        env = {}
        while argv and re.match(r"^[A-Z_]+=", argv[0]) and not argv[0].startswith("TOKEN="):
            name, value = argv.pop(0).split("=", 1)
            env[name] = value
        if argv[:2] == ["python", "-m"]:
            role = next(r for r, module in SERVER_MODULES.items() if argv[2] == module)
            servers[role] = (env, argv[3:])
        elif argv[:1] == ["curl"]:
            curls.append(_curl(argv))
        elif argv:
            token_lines.append(argv)
    assert set(servers) == set(SERVER_MODULES), f"servers in the example: {servers}"
    assert token_lines == [["TOKEN=$(make", "-s", "token)"]], token_lines  # as shlex splits it
    recipe = re.search(r"^token:.*\n\t@?(.+)$", makefile, re.M)
    assert recipe, "no `token` target in the Makefile"
    token_command = shlex.split(recipe.group(1).replace("$(PORT)", str(ports["gateway"])))
    assert token_command[0] == "$(BIN)/python", token_command
    return Example(ports, servers, heredoc.group(1), [sys.executable, *token_command[1:]], curls)


@pytest.fixture
def example(tmp_path: Path) -> Example:
    ports = {role: free_port() for role in README_PORTS}
    readme, makefile = (ROOT / "README.md").read_text(), (ROOT / "Makefile").read_text()
    return parse_example(readme, makefile, ports, tmp_path / ADAPTER)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def servers(example: Example, home: Path, log_dir: Path) -> Iterator[dict[str, ServerProcess]]:
    started: dict[str, ServerProcess] = {}

    def start(role: str, extra_env: dict[str, str], extra_args: list[str]) -> ServerProcess:
        env, args = example.servers[role]
        port = example.ports[role]
        env = {"HOME": str(home)} | env | extra_env
        started[role] = ServerProcess(SERVER_MODULES[role], [*args, *extra_args], port=port, log_dir=log_dir, env=env)
        return started[role]

    try:
        # The engine first: it builds the built-in model under ~/.cache/switchyard, which the
        # heredoc reads.
        start("engine", {}, []).wait_ready(timeout=60)
        gateway_port = str(example.ports["gateway"])
        gateway = start("gateway", {"SWITCHYARD_AUTH_MODE": "builtin"}, ["--port", gateway_port])
        # The sidecar's default issuer is the gateway's on its default port, 8000.
        sidecar = start("sidecar", {}, ["--auth-issuer", f"http://127.0.0.1:{gateway_port}"])
        gateway.wait_ready(timeout=60)
        sidecar.wait_ready(timeout=60)
        yield started
    finally:
        for server in started.values():
            server.stop()


def _run(command: list[str], home: Path, stdin: str | None = None) -> str:
    done = subprocess.run(
        command, input=stdin, cwd=ROOT, env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{command} exited with {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout.strip()


def _models(gateway: ServerProcess, token: str) -> set[str]:
    answer = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return {m["id"] for m in answer.json()["data"]}


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE_S} s: {what}"
        time.sleep(0.2)


def _answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def test_the_readme_publish_example_runs_as_written(
    example: Example, servers: dict[str, ServerProcess], home: Path
) -> None:
    gateway = servers["gateway"]
    _run([sys.executable, "-"], home, stdin=example.heredoc)
    token = _run(example.token_command, home)
    publish, listing = example.curl("POST", "/adapters"), example.curl("GET", "/adapters")
    chat, retire = example.curl("POST", "/v1/chat/completions"), example.curl("DELETE", f"/adapters/{ADAPTER}")

    (base_model,) = _models(gateway, token)  # the built-in model, before any adapter
    base_answer = _answer(chat.send(token, model=base_model, temperature=0))

    refused = publish.anonymous().send(token)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"] == "missing_token"
    published = publish.send(token)
    assert published.status_code == 201, published.text
    listed = listing.send(token)
    assert listed.status_code == 200, listed.text
    assert ADAPTER in {a["name"] for a in listed.json()["adapters"]}

    _until(lambda: ADAPTER in _models(gateway, token), f"the gateway lists {ADAPTER}")
    as_written = chat.send(token)
    _answer(as_written)
    assert as_written.json()["model"] == ADAPTER, as_written.text
    adapter_answer = _answer(chat.send(token, temperature=0))
    assert adapter_answer != base_answer, "the adapter changed nothing: is it loaded?"

    retired = retire.send(token)
    assert retired.status_code == 200, retired.text
    _until(lambda: ADAPTER not in _models(gateway, token), f"the gateway no longer lists {ADAPTER}")
    assert _models(gateway, token) == {base_model}
