"""From a request to a routing decision: its key, its adapter, and the errors when nothing can serve it."""

from collections.abc import Collection, Mapping

from app.errors import ModelNotFound, NoEngineAvailable
from app.pools.registry import PoolRegistry, Replica
from protocol import ChatCompletionRequest, CompletionRequest
from router import PROMPT_HEAD_CHARS, Decision, routing_key

__all__ = ["SESSION_HEADER", "chat_key", "choose", "completion_key"]

SESSION_HEADER = "x-session-id"


def chat_key(headers: Mapping[str, str], chat: ChatCompletionRequest) -> str:
    """Session header, else `user`, else the system prompt and first user turn."""
    head = ""
    for message in chat.messages:
        if message.role in ("system", "developer"):
            head += message.text() + "\x1e"
        elif message.role == "user":
            head += message.text()
            break
        if len(head) >= PROMPT_HEAD_CHARS:
            break
    return routing_key(model=chat.model, session_id=headers.get(SESSION_HEADER), user=chat.user, prompt_head=head)


def completion_key(headers: Mapping[str, str], completion: CompletionRequest) -> str:
    prompt = completion.prompt
    head = prompt[:PROMPT_HEAD_CHARS] if isinstance(prompt, str) else repr(prompt)[:PROMPT_HEAD_CHARS]
    return routing_key(
        model=completion.model, session_id=headers.get(SESSION_HEADER), user=completion.user, prompt_head=head
    )


def choose(
    registry: PoolRegistry, model: str, key: str, now: float, *, exclude: Collection[str] = ()
) -> Decision[Replica]:
    """The router's decision, or the error a client should see when there is none.

    ModelNotFound when no replica that has ever answered serves the model, and
    NoEngineAvailable when those that serve it are all down, draining or tried, or none answers.
    """
    adapter = model if registry.is_adapter(model) else None
    decision = registry.router.route(key, model, now, adapter=adapter, exclude=exclude)
    if decision is not None:
        return decision
    if exclude or any(r.serves(model) for r in registry.replicas()) or not registry.any_healthy():
        raise NoEngineAvailable(f"No engine that serves `{model}` is reachable right now; retry shortly.")
    raise ModelNotFound(model)
