"""The routing key: what makes two requests land on the same replica."""

from hashlib import blake2b

__all__ = ["PROMPT_HEAD_CHARS", "routing_key"]

# Enough of a prompt to tell conversations apart and to share a prefix cache.
PROMPT_HEAD_CHARS = 1024


def routing_key(*, model: str, session_id: str | None, user: str | None, prompt_head: str) -> str:
    """`<source>:<digest>`: the session id, else the user, else the head of the prompt.

    The model (an adapter name, when the request names one) is part of the digest, so one
    adapter's traffic concentrates on the replicas that have it loaded. Only a digest is
    kept, so a key can be logged without the prompt or the user's identity.
    """
    if session_id:
        source, material = "session", session_id
    elif user:
        source, material = "user", user
    else:
        source, material = "prompt", prompt_head[:PROMPT_HEAD_CHARS]
    digest = blake2b(f"{model}\x1f{material}".encode(), digest_size=8).hexdigest()
    return f"{source}:{digest}"
