"""`multipart/form-data` bodies read as they arrive: small fields whole (a few KiB at most),
the one file part handed on a piece at a time as it comes, never held whole.

python-multipart's parser does the byte work (boundaries, part headers, with limits on their
count and size); this keeps the parts apart and bounds what is kept of each.
"""

from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import InvalidRequest, UnsupportedMediaType

__all__ = ["Form", "read_form"]

MAX_FIELD_BYTES = 4096
MAX_BOUNDARY = 70  # RFC 2046
MAX_PARTS = 16


@dataclass
class Form:
    """What a form held besides its file: the other fields, and the file's name (None: no file)."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    header_name: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    value: bytearray = field(default_factory=bytearray)


async def read_form(
    content_type: str, body: AsyncIterable[bytes], file_field: str, write: Callable[[bytes], Awaitable[None]]
) -> Form:
    """Parse the body; the data of the part named `file_field` goes to `write` as it arrives.
    Raises UnsupportedMediaType for another media type and InvalidRequest for a malformed body,
    a second file part, too many parts or a field over MAX_FIELD_BYTES."""
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise UnsupportedMediaType(f"Content-Type must be multipart/form-data, not `{media_type.decode('latin-1')}`.")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > MAX_BOUNDARY:
        raise InvalidRequest(
            f"The multipart/form-data Content-Type needs a boundary of 1 to {MAX_BOUNDARY} characters.",
            param="Content-Type",
        )
    form, parts, pending = Form(), [_Part()], []
    done = False

    def part_begin() -> None:
        if len(parts) > MAX_PARTS:
            raise InvalidRequest(f"The form has more than {MAX_PARTS} parts.")
        parts.append(_Part())

    def header_field(data: bytes, start: int, end: int) -> None:
        parts[-1].header_name += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        parts[-1].header_value += data[start:end]

    def header_end() -> None:
        part = parts[-1]
        if part.header_name.lower() == b"content-disposition":
            _, disposition = parse_options_header(bytes(part.header_value))
            part.name = disposition.get(b"name", b"").decode("utf-8", "replace")
            filename = disposition.get(b"filename")
            part.filename = None if filename is None else filename.decode("utf-8", "replace")
        part.header_name.clear()
        part.header_value.clear()

    def headers_finished() -> None:
        part = parts[-1]
        if part.name == file_field:
            if form.filename is not None:
                raise InvalidRequest(f"The form has more than one `{file_field}`.", param=file_field)
            form.filename = part.filename or file_field

    def part_data(data: bytes, start: int, end: int) -> None:
        part = parts[-1]
        if part.name == file_field:
            pending.append(data[start:end])
            return
        part.value += data[start:end]
        if len(part.value) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"The form field `{part.name}` is over {MAX_FIELD_BYTES} bytes.", param=part.name)

    def part_end() -> None:
        part = parts[-1]
        if part.name and part.name != file_field:
            form.fields[part.name] = part.value.decode("utf-8", "replace")

    def end() -> None:
        nonlocal done
        done = True

    callbacks = {
        "on_part_begin": part_begin,
        "on_header_field": header_field,
        "on_header_value": header_value,
        "on_header_end": header_end,
        "on_headers_finished": headers_finished,
        "on_part_data": part_data,
        "on_part_end": part_end,
        "on_end": end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in body:
            parser.write(chunk)
            if pending:
                data = b"".join(pending)
                pending.clear()
                await write(data)
        parser.finalize()
    except FormParserError as error:
        raise InvalidRequest(f"The multipart body is malformed: {error}.") from None
    if not done:
        raise InvalidRequest("The multipart body ended before its closing boundary.")
    return form
