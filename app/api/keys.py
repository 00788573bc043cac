"""A request's routing key: what keeps one conversation, or one prompt's prefix, on one replica."""

from collections.abc import Mapping

from protocol import ChatCompletionRequest, CompletionRequest
from router import PROMPT_HEAD_CHARS, routing_key

__all__ = ["SESSION_HEADER", "routing_key_of"]

SESSION_HEADER = "x-session-id"


def routing_key_of(headers: Mapping[str, str], request: ChatCompletionRequest | CompletionRequest) -> str:
    """The session header, else `user`, else the head of the prompt."""
    head = _chat_head(request) if isinstance(request, ChatCompletionRequest) else _completion_head(request)
    return routing_key(model=request.model, session_id=headers.get(SESSION_HEADER), user=request.user, prompt_head=head)


def _chat_head(chat: ChatCompletionRequest) -> str:
    """The system prompt and the first user turn."""
    head = ""
    for message in chat.messages:
        if message.role in ("system", "developer"):
            head += message.text() + "\x1e"
        elif message.role == "user":
            head += message.text()
            break
        if len(head) >= PROMPT_HEAD_CHARS:
            break
    return head


def _completion_head(completion: CompletionRequest) -> str:
    prompt = completion.prompt
    return prompt[:PROMPT_HEAD_CHARS] if isinstance(prompt, str) else repr(prompt)[:PROMPT_HEAD_CHARS]
