"""The console in a real browser (Debian's Chromium, headless) against a real gateway on the
embedded default: signing in, streaming a chat, steering the fleet, the gateway's own error
for a bad action, an expired session that keeps the page, and every page at desktop and
phone sizes (their screenshots are docs/console.md's)."""

import json
import re
from pathlib import Path

import httpx
from playwright.sync_api import Browser, Locator, Page, expect

from harness.servers import ServerProcess
from tests.integration.console.conftest import DESKTOP, PASSWORDS, PHONE


def sign_in(page: Page, gateway: ServerProcess, user: str, path: str = "/console/") -> None:
    page.goto(gateway.url + path)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/oauth/authorize\?"))
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/console/(?!callback)"))


def test_a_person_signs_in_and_sees_the_pages_their_scopes_allow(page: Page, console_gateway: ServerProcess) -> None:
    page.goto(console_gateway.url + "/console/fleet")
    expect(page.get_by_role("heading", name="Switchyard console")).to_be_visible()
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("User name").fill("ada")
    page.get_by_label("Password").fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("The user name or password is wrong.")
    page.get_by_label("Password").fill(PASSWORDS["ada"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(console_gateway.url + "/console/fleet")  # back where the sign-in began
    nav = page.get_by_role("navigation", name="Pages")
    expect(nav.get_by_role("link")).to_have_text(["Fleet", "Playground", "Adapters", "Fine-tuning", "Usage"])
    expect(page.get_by_text("ada", exact=True)).to_be_visible()
    assert "code=" not in page.url  # the code leaves the address bar and the history

    page.get_by_role("button", name="Sign out").click()
    sign_in(page, console_gateway, "bob")
    page.wait_for_url(console_gateway.url + "/console/playground")  # bob may chat only
    expect(page.get_by_role("navigation", name="Pages").get_by_role("link")).to_have_text(["Playground"])


def test_a_streamed_chat_shows_tokens_as_they_arrive(
    page: Page, console_gateway: ServerProcess, screenshots: Path
) -> None:
    sign_in(page, console_gateway, "ada", "/console/playground")
    expect(page.get_by_label("Model")).to_have_value("switchyard-tiny-v1")
    page.get_by_label("Max tokens").fill("48")
    page.get_by_label("Send an Idempotency-Key").check()
    # every length the answer takes on its way, seen by the page itself
    page.evaluate("""() => {
        window.lengths = [];
        new MutationObserver(() => {
            const answers = document.querySelectorAll('[data-role="assistant"]');
            const last = answers[answers.length - 1];
            if (last) window.lengths.push(last.textContent.length);
        }).observe(document.querySelector('[aria-label="Conversation"]'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    # a slow link (4 kB/s), so that the tiny model's quick answer reaches the page over seconds
    network = page.context.new_cdp_session(page)
    network.send("Network.enable")
    network.send("Network.emulateNetworkConditions",
                 {"offline": False, "latency": 0, "downloadThroughput": 4096, "uploadThroughput": -1})  # fmt: skip
    page.get_by_label("Message").fill("Tell me about regions.")
    page.get_by_label("Message").press("Control+Enter")
    stats = page.get_by_role("definition")
    expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=30_000)  # the stream has ended
    lengths = [n for n in page.evaluate("window.lengths") if n > 1]
    assert len(set(lengths)) >= 3, lengths  # the answer grew in steps, not all at once
    assert lengths == sorted(lengths)
    facts = dict(zip(page.locator(".stats dt").all_text_contents(), stats.all_text_contents(), strict=True))
    assert facts["Region"] == "local"
    assert re.fullmatch(r"\d+ ms", facts["Time to first token"])
    assert float(facts["Tokens/s"]) > 0
    assert int(facts["Tokens"]) > 1
    assert facts["Replica"].startswith("embedded-")
    assert len(facts["Request id"]) >= 8
    assert re.fullmatch(r"[0-9a-f-]{36}", facts["Idempotency-Key"])
    page.screenshot(path=screenshots / "playground.png")


def test_draining_and_undraining_a_replica_shows_on_the_fleet_page(
    page: Page, console_gateway: ServerProcess, screenshots: Path
) -> None:
    sign_in(page, console_gateway, "ada", "/console/fleet")
    region = page.get_by_role("region", name="Region local")
    row = region.get_by_role("row", name="Replica embedded-0")
    expect(row.get_by_text("healthy", exact=True)).to_be_visible()
    page.screenshot(path=screenshots / "fleet.png")

    row.get_by_role("button", name="Drain").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("takes no new requests")
    dialog.get_by_role("button", name="Drain").click()
    expect(dialog).to_be_hidden()
    expect(row.get_by_text("draining", exact=True)).to_be_visible()

    row.get_by_role("button", name="Undrain").click()
    page.get_by_role("dialog").get_by_role("button", name="Undrain").click()
    expect(row.get_by_text("healthy", exact=True)).to_be_visible()

    row.get_by_role("button", name="Remove").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel").click()  # asked first: nothing removed
    expect(row).to_be_visible()


def test_a_bad_action_shows_the_gateway_s_own_error(page: Page, console_gateway: ServerProcess) -> None:
    sign_in(page, console_gateway, "ada", "/console/fleet")
    unreachable = "http://127.0.0.1:9"
    page.get_by_label("Replica URL").fill(unreachable)
    page.get_by_role("button", name="Add replica").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="Add replica").click()
    alert = dialog.get_by_role("alert")
    expect(alert).to_be_visible()
    # the very message the admin API gives for it
    token = page.evaluate("() => window.__token__ ?? null")
    assert token is None  # the token is nowhere in the page's globals
    answer = _as_admin(console_gateway, "POST", "/admin/pools/embedded/replicas", json={"url": unreachable})
    assert answer.status_code >= 400
    expect(alert).to_have_text(answer.json()["error"]["message"])
    dialog.get_by_role("button", name="Cancel").click()


def test_an_expired_session_signs_in_again_and_keeps_the_page(page: Page, console_gateway: ServerProcess) -> None:
    sign_in(page, console_gateway, "ada", "/console/playground")
    page.get_by_label("Max tokens").fill("8")
    page.get_by_label("Message").fill("first")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    first_answer = page.locator('[data-role="assistant"]').first.inner_text()

    # the gateway refuses the next request's token, as it would an expired one
    refused: list[str] = []

    def expire_once(route, request) -> None:  # type: ignore[no-untyped-def]
        refused.append(request.url)
        error = {"message": "The access token expired.", "type": "invalid_request_error", "code": "invalid_token"}
        route.fulfill(status=401, json={"error": error})

    page.route("**/v1/chat/completions", expire_once, times=1)
    page.get_by_label("Message").fill("second")
    page.get_by_role("button", name="Send").click()
    dialog = page.get_by_role("alertdialog", name="Your session has expired")
    expect(dialog).to_be_visible()
    with page.expect_popup() as opened:
        dialog.get_by_role("button", name="Sign in again").click()
    popup = opened.value
    popup.get_by_label("User name").fill("ada")
    popup.get_by_label("Password").fill(PASSWORDS["ada"])
    popup.get_by_role("button", name="Sign in").click()
    popup.wait_for_event("close")
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_visible()  # the refused request went again
    assert len(refused) == 1
    assert page.locator('[data-role="user"]').all_inner_texts() == ["first", "second"]
    assert page.locator('[data-role="assistant"]').first.inner_text() == first_answer
    assert page.locator('[data-role="assistant"]').nth(1).inner_text().strip()
    assert page.url.endswith("/console/playground")


def test_publishing_and_retiring_an_adapter(
    page: Page, console_gateway: ServerProcess, adapter_files: list[Path], screenshots: Path
) -> None:
    sign_in(page, console_gateway, "ada", "/console/adapters")
    form = page.get_by_role("form", name="Publish an adapter")
    form.get_by_label("Name").fill("support-bot")
    form.get_by_label("Weight").fill("0.5")
    form.get_by_label("Adapter files").set_input_files(adapter_files)  # the folder's files: tarred in the page
    form.get_by_role("button", name="Publish").click()
    # trained from the model's folder, its config names a path: the sidecar's own words say so
    expect(form.get_by_role("alert")).to_contain_text("give that name as `base_model`")
    form.get_by_label("Base model").fill("switchyard-tiny-v1")
    form.get_by_role("button", name="Publish").click()
    expect(form.get_by_role("status")).to_contain_text("Published support-bot: version ")
    card = page.get_by_role("article", name="Adapter support-bot")
    expect(card.get_by_text("live", exact=True)).to_be_visible()
    contributions = card.get_by_role("table", name="Contributions")
    expect(contributions.get_by_role("row", name=re.compile(r"^local "))).to_contain_text("0.5")
    listed = _as_admin(console_gateway, "GET", "/sync/adapters").json()["adapters"]
    [published] = [a for a in listed if a["name"] == "support-bot"]
    assert published["contributions"]["local"]["weight"] == 0.5
    expect(card).to_contain_text(published["served"]["digest"][:12])
    card.get_by_role("button", name="Audit log").click()
    expect(page.get_by_role("region", name="Audit log")).to_contain_text("local serves")
    page.screenshot(path=screenshots / "adapters.png", full_page=True)

    card.get_by_role("button", name="Retire").click()
    page.get_by_role("dialog").get_by_role("button", name="Retire").click()
    expect(card.get_by_text("retired", exact=True)).to_be_visible()
    [retired] = [a for a in _as_admin(console_gateway, "GET", "/sync/adapters").json()["adapters"]
                 if a["name"] == "support-bot"]  # fmt: skip
    assert retired["live"] is False


PING = {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong pong pong"}]}


def _signed_in_with_a_dataset(page: Page, gateway: ServerProcess, dataset: Path, examples: int) -> Locator:
    """Signs ada in on the fine-tuning page and uploads `examples` PINGs as `dataset`; the
    "Start a job" form."""
    dataset.write_text("".join(json.dumps(PING) + "\n" for _ in range(examples)))
    sign_in(page, gateway, "ada", "/console/fine-tuning")
    upload = page.get_by_role("form", name="Upload a dataset")
    upload.get_by_label("Dataset file").set_input_files(dataset)
    upload.get_by_role("button", name="Upload").click()
    expect(upload.get_by_role("status")).to_contain_text(f"Uploaded {dataset.name} as file-")
    return page.get_by_role("form", name="Start a job")


def test_fine_tuning_from_upload_to_a_chat_with_the_result(
    page: Page, console_gateway: ServerProcess, tmp_path: Path, screenshots: Path
) -> None:
    start = _signed_in_with_a_dataset(page, console_gateway, tmp_path / "ping.jsonl", 32)
    expect(start.get_by_label("Training file")).to_contain_text("ping.jsonl")
    start.get_by_label("Suffix").fill("pong")
    start.get_by_label("Epochs").fill("2")
    start.get_by_label("Learning rate multiplier").fill("10")
    start.get_by_role("button", name="Start job").click()
    detail = page.get_by_role("region", name=re.compile(r"^Job ftjob-"))
    expect(detail.get_by_role("status", name="Job status")).to_have_text("succeeded", timeout=240_000)
    loss = detail.get_by_role("img", name="Training loss")
    expect(loss).to_be_visible()
    assert loss.locator("polyline").get_attribute("points")
    page.screenshot(path=screenshots / "fine-tuning.png", full_page=True)

    detail.get_by_role("link", name="Open in playground").click()
    page.wait_for_url(re.compile(r"/console/playground\?model=ft%3A"))
    model = page.get_by_label("Model").input_value()
    assert model.startswith("ft:switchyard-tiny-v1:")
    assert model.endswith(":pong:" + re.sub(r"^.*:", "", model))
    page.get_by_label("Message").fill("ping")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=30_000)
    assert page.locator('[data-role="assistant"]').first.inner_text().strip()
    expect(page.get_by_role("alert")).to_have_count(0)


def test_cancelling_a_job_from_the_page(page: Page, console_gateway: ServerProcess, tmp_path: Path) -> None:
    start = _signed_in_with_a_dataset(page, console_gateway, tmp_path / "many.jsonl", 512)
    chosen = start.get_by_label("Training file").locator("option", has_text="many.jsonl").get_attribute("value")
    start.get_by_label("Training file").select_option(chosen)
    start.get_by_label("Epochs").fill("20")
    start.get_by_role("button", name="Start job").click()
    detail = page.get_by_role("region", name=re.compile(r"^Job ftjob-"))
    detail.get_by_role("button", name="Cancel job").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel job").click()
    expect(detail.get_by_role("status", name="Job status")).to_have_text("cancelled", timeout=60_000)


def test_usage_and_slos_show_each_tenant_s_answers(
    page: Page, console_gateway: ServerProcess, screenshots: Path
) -> None:
    sign_in(page, console_gateway, "bob", "/console/playground")
    page.get_by_label("Max tokens").fill("4")
    page.get_by_label("Message").fill("count me")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Sign out").click()

    sign_in(page, console_gateway, "ada", "/console/usage")
    bob = page.get_by_role("row", name="Tenant bob")
    expect(bob).to_be_visible(timeout=15_000)
    requests, tokens = (int(cell) for cell in bob.get_by_role("cell").all_text_contents()[:2])
    assert requests >= 1
    assert tokens >= 1
    availability = page.get_by_role("row", name="SLO availability")
    expect(availability).to_contain_text("99.9 % of API requests answered without a 5xx")
    expect(page.get_by_role("row", name="SLO time to first token")).to_be_visible()
    expect(page.get_by_role("img", name="Requests per minute")).to_be_visible()
    page.screenshot(path=screenshots / "usage.png", full_page=True)


def test_the_pages_work_from_the_keyboard_and_fit_a_phone(
    browser: Browser, console_gateway: ServerProcess, screenshots: Path
) -> None:
    context = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    page = context.new_page()
    page.goto(console_gateway.url + "/console/")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/oauth/authorize\?"))
    page.screenshot(path=screenshots / "sign-in.png")
    page.keyboard.type("ada")  # the user name has the focus
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORDS["ada"])
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/fleet"))
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Playground":
            break
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/playground$"))
    expect(page.get_by_role("link", name="Playground")).to_have_attribute("aria-current", "page")

    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    for name in ("fleet", "playground", "adapters", "fine-tuning", "usage"):
        page.get_by_role("link", name=name.capitalize()).click()
        page.wait_for_url(re.compile(rf"/console/{name}$"))
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways on a phone by {overflow} px"
        page.screenshot(path=screenshots / f"{name}-phone.png", full_page=True)
    context.close()


def _as_admin(gateway: ServerProcess, method: str, path: str, **kwargs: object) -> httpx.Response:
    """The admin API called directly, with a token of ada's own (signed in as the console does)."""
    import base64
    import hashlib
    import secrets
    from urllib.parse import parse_qs, urlsplit

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    callback = gateway.url + "/console/callback"
    params = {"response_type": "code", "client_id": "switchyard-console", "redirect_uri": callback, "state": "s",
              "code_challenge": challenge, "code_challenge_method": "S256", "scope": "admin"}  # fmt: skip
    form = params | {"username": "ada", "password": PASSWORDS["ada"]}
    answer = httpx.post(gateway.url + "/oauth/authorize", data=form)
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    exchange = {"grant_type": "authorization_code", "code": code, "client_id": "switchyard-console",
                "redirect_uri": callback, "code_verifier": verifier}  # fmt: skip
    token = httpx.post(gateway.url + "/oauth/token", data=exchange)
    headers = {"authorization": f"Bearer {token.json()['access_token']}"}
    return httpx.request(method, gateway.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]
