"""`/v1/fine_tuning/jobs` (app/api/fine_tuning.py) through a gateway in process, its records on
SQLite: the stock OpenAI SDK's calls; jobs refused with the field named when their model,
files or hyperparameters are wrong, and nothing recorded; cancel; each tenant sees only its own."""

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from app.auth.keys import mint
from harness.counting_engine import CountingEngine
from harness.inprocess import InProcessGateway, gateway_in_process, pool_settings
from protocol.fine_tuning import MAX_MODEL_NAME, fine_tuned_name, owner_tag, stacked_name

ENGINE = "http://engine"
BASE = "counting"  # the counting engine's model
EXAMPLE = {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong pong pong"}]}
DATASET = ("\n".join(json.dumps(EXAMPLE) for _ in range(20)) + "\n").encode()


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    settings = pool_settings([ENGINE], data_dir=tmp_path)
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as serving:
        await serving.client.get("/ready")  # the engine's models known
        yield serving


def _sdk(gateway: InProcessGateway, token: str = "unused") -> openai.AsyncOpenAI:
    """The OpenAI SDK, reaching the gateway in process (over httpx2, the SDK's HTTP client)."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app), base_url="http://gateway")
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=token, max_retries=0, http_client=http)


async def _dataset(sdk: openai.AsyncOpenAI) -> str:
    return (await sdk.files.create(file=("train.jsonl", DATASET), purpose="fine-tune")).id


async def test_the_sdk_creates_reads_lists_and_cancels_a_job(gateway: InProcessGateway) -> None:
    sdk = _sdk(gateway)
    training = await _dataset(sdk)
    job = await sdk.fine_tuning.jobs.create(
        model=BASE,
        training_file=training,
        suffix="pong",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4}}},
        metadata={"team": "search"},
    )
    assert job.id.startswith("ftjob-")
    assert (job.status, job.model, job.training_file, job.seed, job.fine_tuned_model) == (
        "validating_files",
        BASE,
        training,
        7,
        None,
    )
    assert job.hyperparameters.n_epochs == 3
    assert job.hyperparameters.batch_size == 4
    assert job.metadata == {"team": "search"}
    assert (await sdk.fine_tuning.jobs.retrieve(job.id)).id == job.id
    assert [j.id async for j in sdk.fine_tuning.jobs.list()] == [job.id]
    [created] = [e async for e in sdk.fine_tuning.jobs.list_events(job.id)]
    assert created.message == f"Created fine-tuning job: {job.id}"
    assert [c async for c in sdk.fine_tuning.jobs.checkpoints.list(job.id)] == []
    cancelled = await sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError):  # as OpenAI answers it
        await sdk.fine_tuning.jobs.cancel(job.id)
    newest_first = [e.message async for e in sdk.fine_tuning.jobs.list_events(job.id)]
    assert newest_first == ["Fine-tuning job cancelled", f"Created fine-tuning job: {job.id}"]


async def test_the_original_platforms_alias_creates_a_job(gateway: InProcessGateway) -> None:
    training = await _dataset(_sdk(gateway))
    response = await gateway.client.post("/fine-tune", json={"model": BASE, "training_file": training})
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "fine_tuning.job"
    assert response.json()["hyperparameters"]["n_epochs"] == "auto"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"training_file": "file-nope"}, "training_file"),
        ({"validation_file": "file-nope"}, "validation_file"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"learning_rate_multiplier": -1.0}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"n_epochs": 2}, "method": {"type": "supervised"}}, "method"),
        ({"method": {"type": "dpo"}}, "method.type"),
        ({"suffix": "has spaces"}, "suffix"),
        ({"seed": -1}, "seed"),
        ({"temperature": 1}, "temperature"),
        ({"integrations": [{"type": "wandb"}]}, "integrations"),
    ],
)
async def test_a_bad_job_is_refused_naming_the_field_and_nothing_is_recorded(
    gateway: InProcessGateway, change: dict[str, Any], param: str
) -> None:
    training = await _dataset(_sdk(gateway))
    response = await gateway.client.post(
        "/v1/fine_tuning/jobs", json={"model": BASE, "training_file": training} | change
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert (await gateway.client.get("/v1/fine_tuning/jobs")).json()["data"] == []


async def test_jobs_list_a_page_at_a_time(gateway: InProcessGateway) -> None:
    training = await _dataset(_sdk(gateway))
    ids = [
        (await gateway.client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": training})).json()[
            "id"
        ]
        for _ in range(3)
    ]
    first = (await gateway.client.get("/v1/fine_tuning/jobs", params={"limit": 2})).json()
    assert (len(first["data"]), first["has_more"]) == (2, True)
    rest = (
        await gateway.client.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": first["data"][-1]["id"]})
    ).json()
    assert (len(rest["data"]), rest["has_more"]) == (1, False)
    assert {j["id"] for j in first["data"] + rest["data"]} == set(ids)
    unknown = await gateway.client.get("/v1/fine_tuning/jobs", params={"after": "ftjob-nope"})
    assert (unknown.status_code, unknown.json()["error"]["param"]) == (400, "after")


async def test_a_tenant_sees_only_its_own_jobs_and_trains_only_its_own_files(tmp_path: Path) -> None:
    settings = pool_settings([ENGINE], data_dir=tmp_path, auth_mode="builtin")
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as gateway:
        await gateway.client.get("/ready")
        alice, bob = (_sdk(gateway, mint(settings, subject=s, scopes=["finetune"], ttl_s=60)) for s in ("alice", "bob"))
        training = await _dataset(alice)
        job = await alice.fine_tuning.jobs.create(model=BASE, training_file=training)
        assert [j.id async for j in bob.fine_tuning.jobs.list()] == []
        for call in (
            bob.fine_tuning.jobs.retrieve(job.id),
            bob.fine_tuning.jobs.cancel(job.id),
            bob.fine_tuning.jobs.list_events(job.id),
            bob.fine_tuning.jobs.checkpoints.list(job.id),
        ):
            with pytest.raises(openai.NotFoundError):
                await call
        with pytest.raises(openai.BadRequestError) as refused:
            await bob.fine_tuning.jobs.create(model=BASE, training_file=training)  # alice's file
        assert refused.value.param == "training_file"
        assert (await alice.fine_tuning.jobs.retrieve(job.id)).status == "validating_files"


async def test_a_fine_tuned_model_is_listed_to_and_usable_by_its_owner_only(tmp_path: Path) -> None:
    """Whose a model is, is told from its name: a stacked name (what regions with their own
    databases publish to) is its owner's as a job's name is, and neither asks the database."""
    settings = pool_settings([ENGINE], data_dir=tmp_path, auth_mode="builtin", health_interval_s=0.05)
    engine = CountingEngine()
    async with gateway_in_process(settings, {ENGINE: engine.app}) as gateway:
        await gateway.client.get("/ready")

        def token(subject: str, *scopes: str) -> str:
            return mint(settings, subject=subject, scopes=list(scopes), ttl_s=60)

        alice, bob = (_sdk(gateway, token(s, "finetune", "chat")) for s in ("alice", "bob"))
        operator = _sdk(gateway, token("ops", "chat", "admin"))
        job = await alice.fine_tuning.jobs.create(model=BASE, training_file=await _dataset(alice), suffix="mine")
        name = fine_tuned_name(BASE, "alice", "mine", job.id)
        stacked = stacked_name(BASE, "alice", "mine")
        nobodys = f"ft:{BASE}:{'a' * 16}:mine"  # an operator's adapter named like one
        assert stacked is not None
        assert name.startswith(f"ft:{BASE}:{owner_tag('alice')}:mine:")
        engine.adapters = [name, stacked, nobodys]
        for _ in range(500):  # until the next health probe has read the engine's list
            if name in [m.id async for m in operator.models.list()]:
                break
            await asyncio.sleep(0.02)
        await gateway.app.state.gateway.finetuning.database.close()  # ownership needs no database
        assert {m.id async for m in alice.models.list()} == {BASE, name, stacked}
        assert (await alice.models.retrieve(name)).id == name
        assert [m.id async for m in bob.models.list()] == [BASE]
        assert {m.id async for m in operator.models.list()} == {BASE, name, stacked, nobodys}
        with pytest.raises(openai.NotFoundError):
            await bob.models.retrieve(name)
        for model in (name, stacked):
            chat = {"model": model, "messages": [{"role": "user", "content": "ping"}]}
            for path, body in (("/v1/chat/completions", chat), ("/predict", {"model": model, "text": "ping"})):
                refused = await gateway.client.post(
                    path, json=body, headers={"authorization": f"Bearer {token('bob', 'chat')}"}
                )
                assert refused.status_code == 404
                assert refused.json()["error"]["code"] == "model_not_found"
            answered = await alice.chat.completions.create(model=model, messages=[{"role": "user", "content": "ping"}])
            assert answered.choices
        with pytest.raises(openai.NotFoundError):
            await alice.chat.completions.create(model=nobodys, messages=[{"role": "user", "content": "ping"}])
        scraped = (await gateway.client.get("/metrics")).text
        assert name not in scraped  # a metric label says `fine-tuned`, not whose model it is
        assert 'model="fine-tuned"' in scraped


async def test_a_suffix_that_would_make_the_name_too_long_is_refused_before_anything_is_recorded(
    tmp_path: Path,
) -> None:
    base = "org/" + "m" * 40  # in the name as `org--mmm...`: 45 characters
    async with gateway_in_process(
        pool_settings([ENGINE], data_dir=tmp_path), {ENGINE: CountingEngine(model=base).app}
    ) as gateway:
        await gateway.client.get("/ready")
        client = _sdk(gateway)
        training = await _dataset(client)
        fixed = len(fine_tuned_name(base, "anonymous", "", "ftjob-" + "a" * 24))
        assert fixed == len("ft:") + 45 + len(":") + 16 + len("::") + 30
        with pytest.raises(openai.BadRequestError) as refused:
            await client.fine_tuning.jobs.create(model=base, training_file=training, suffix="s" * 64)
        assert refused.value.param == "suffix"
        assert f"at most {MAX_MODEL_NAME - fixed} characters" in refused.value.message
        assert [j async for j in client.fine_tuning.jobs.list()] == []
        fits = "s" * (MAX_MODEL_NAME - fixed)
        job = await client.fine_tuning.jobs.create(model=base, training_file=training, suffix=fits)
        assert job.status == "validating_files"
        assert len(fine_tuned_name(base, "anonymous", fits, job.id)) == MAX_MODEL_NAME


async def test_a_tenant_has_at_most_its_share_of_unfinished_jobs(tmp_path: Path) -> None:
    settings = pool_settings([ENGINE], data_dir=tmp_path, auth_mode="builtin", max_active_jobs_per_tenant=2)
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as gateway:
        await gateway.client.get("/ready")
        alice, bob = (_sdk(gateway, mint(settings, subject=s, scopes=["finetune"], ttl_s=60)) for s in ("alice", "bob"))
        training = await _dataset(alice)
        first = await alice.fine_tuning.jobs.create(model=BASE, training_file=training)
        await alice.fine_tuning.jobs.create(model=BASE, training_file=training)
        with pytest.raises(openai.RateLimitError) as refused:
            await alice.fine_tuning.jobs.create(model=BASE, training_file=training)
        assert refused.value.code == "too_many_jobs"
        assert len([j async for j in alice.fine_tuning.jobs.list()]) == 2  # nothing recorded
        await bob.fine_tuning.jobs.create(model=BASE, training_file=await _dataset(bob))  # his own share
        await alice.fine_tuning.jobs.cancel(first.id)
        await alice.fine_tuning.jobs.create(model=BASE, training_file=training)  # a cancelled job is finished


async def test_jobs_created_at_once_cannot_together_pass_a_tenants_share(tmp_path: Path) -> None:
    settings = pool_settings([ENGINE], data_dir=tmp_path, max_active_jobs_per_tenant=2)
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as gateway:
        await gateway.client.get("/ready")
        client = _sdk(gateway)
        training = await _dataset(client)
        answers = await asyncio.gather(
            *(client.fine_tuning.jobs.create(model=BASE, training_file=training) for _ in range(6)),
            return_exceptions=True,
        )
        refused = [a for a in answers if isinstance(a, openai.APIStatusError)]
        assert len(refused) == 4, answers
        assert {(a.status_code, a.code) for a in refused} == {(429, "too_many_jobs")}
        assert len([j async for j in client.fine_tuning.jobs.list()]) == 2


async def test_a_cursor_that_is_not_the_jobs_is_400_and_an_unknown_job_404(gateway: InProcessGateway) -> None:
    training = await _dataset(_sdk(gateway))
    job = (await gateway.client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": training})).json()
    for part in ("events", "checkpoints"):
        for after in ("ftevent-nope", "ftckpt-" + "a" * 24, "\x00"):
            refused = await gateway.client.get(f"/v1/fine_tuning/jobs/{job['id']}/{part}", params={"after": after})
            assert (refused.status_code, refused.json()["error"]["param"]) == (400, "after")
        unknown = await gateway.client.get(f"/v1/fine_tuning/jobs/ftjob-{'a' * 24}/{part}")
        assert (unknown.status_code, unknown.json()["error"]["param"]) == (404, "job_id")
