"""The OpenAI error envelope: `{"error": {"message", "type", "param", "code"}}`."""

from pydantic import BaseModel, ValidationError

# An engine's 500 for one request that failed while its batch went on: the request's doing,
# so the gateway never counts it against the replica.
SEQUENCE_FAILED = "sequence_failed"


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_payload(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    """The envelope as a plain dict, for JSON bodies and SSE error events."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# Type names pydantic puts into an error's location for union members; they are not fields.
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """A client-facing message and the offending `param` for a request that failed validation."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"We could not parse the JSON body of your request: {first['msg']}", None
    if first["type"] == "model_type" and not first["loc"]:
        return "The request body must be a JSON object.", None
    param = _param_name(first["loc"])
    if first["type"] == "missing":
        return f"Missing required parameter: '{param}'.", param
    mine = [e for e in errors if _param_name(e["loc"]) == param]
    # A union's members each fail: the one that failed on a bound (not on its type) says what is wrong.
    bounded = [e for e in mine if not e["type"].endswith("_type")]
    reasons = [e["msg"] for e in bounded or mine]
    return f"Invalid value for '{param}': {' or '.join(dict.fromkeys(reasons))}.", param


def _param_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif part in _UNION_TAGS or not part.isidentifier():
            break
        else:
            name += f".{part}" if name else part
    return name
