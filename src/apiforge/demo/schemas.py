"""The request body of ``PUT /v1/users/me`` and its parsing into our own errors.

Parsing is strict end to end: the body must be UTF-8 JSON (orjson), its top level an object, and
its values of the exact JSON type of each field. Pydantic's lax mode would turn ``"30"``, ``30.0``
and ``true`` into the integer 30; a proxy that validates one reading while the app stores another
is a bypass, so only real integers are ages here.

Every failure becomes a :class:`~apiforge.errors.ApiError` whose messages are fixed text chosen
per kind of error: never a parser's message, never the client's input.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

import nh3
import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from apiforge.errors import BadRequest, FieldError, ValidationFailed

__all__ = [
    "AGE_MAX",
    "AGE_MIN",
    "BIO_MAX_LENGTH",
    "EMAIL_MAX_LENGTH",
    "ProfileUpdate",
    "parse_profile_update",
    "sanitize_bio",
]

EMAIL_MAX_LENGTH: Final = 254  # RFC 5321 section 4.5.3.1.3: the longest usable forward-path
BIO_MAX_LENGTH: Final = 500
AGE_MIN: Final = 13
AGE_MAX: Final = 120

# Tags whose text is dropped along with them: a script's source is never useful profile text.
_CONTENT_DROPPED_TAGS: Final = frozenset({"script", "style"})

# Unicode category Cc (C0, DEL, C1) except the newline and tab a multi-line biography holds,
# and lone surrogates, which are not text at all. A character class, not a tag stripper.
_FORBIDDEN_CHARS: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _check_email_length(value: object) -> object:
    # Runs before EmailStr so that an overlong address gets the length message, and the email
    # parser (and its regexes) never sees more than 254 characters.
    if isinstance(value, str):
        if len(value) > EMAIL_MAX_LENGTH:
            raise PydanticCustomError(
                "string_too_long", "too long", {"max_length": EMAIL_MAX_LENGTH}
            )
        # EmailStr would reduce the display-name form "Name <a@b.example>" to the bare address;
        # a profile stores an address, so that form is refused rather than rewritten.
        if "<" in value or ">" in value:
            raise PydanticCustomError("value_error", "not an address")
    return value


def sanitize_bio(text: str) -> str:
    """Remove every HTML tag from ``text`` with nh3 and an empty allowlist.

    The result is safe to place in HTML text content. ``<script>`` and ``<style>`` elements are
    removed with their content; every other tag is removed and its text kept; comments are
    removed. In the remaining text nh3 (0.3.8) escapes ``&`` as ``&amp;``, a lone ``<`` as
    ``&lt;`` and ``>`` as ``&gt;``, and leaves existing entities such as ``&amp;`` as they are.
    Quotes are kept: ``'`` and ``"`` are not escaped, so ``O'Brien`` and
    ``'; DROP TABLE users; --`` are stored byte for byte.

    Args:
        text: the validated biography (no control characters but newline and tab).

    Returns:
        The stored form of the biography. Escaping can make it longer than the input.
    """
    return nh3.clean(
        text,
        tags=set(),
        attributes={},
        clean_content_tags=set(_CONTENT_DROPPED_TAGS),
        strip_comments=True,
    )


class ProfileUpdate(BaseModel):
    """The editable fields of one's own profile; ``PUT`` replaces all of them.

    Attributes:
        email: required; a valid address of at most 254 characters, stored normalized (the
            domain lower-cased and IDNA-decoded, surrounding spaces dropped). The display-name
            form ``Name <address>`` is refused.
        age: an integer from 13 to 120, or ``null``; omitted means ``null``. Only JSON integers
            are accepted: ``"30"``, ``30.0`` and ``true`` are refused.
        bio: at most 500 characters, default empty. NUL and control characters other than
            newline and tab are refused. The stored form is the output of
            :func:`sanitize_bio`: every HTML tag removed, ``&``, ``<`` and ``>`` escaped as
            ``&amp;``, ``&lt;`` and ``&gt;``, quotes (``'`` and ``"``) unchanged.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    email: Annotated[
        EmailStr, BeforeValidator(_check_email_length), Field(max_length=EMAIL_MAX_LENGTH)
    ]
    age: int | None = Field(default=None, ge=AGE_MIN, le=AGE_MAX)
    bio: str = Field(default="", max_length=BIO_MAX_LENGTH)

    @field_validator("bio")
    @classmethod
    def _sanitize_bio(cls, value: str) -> str:
        if _FORBIDDEN_CHARS.search(value) is not None:
            raise PydanticCustomError("control_character", "control character")
        return sanitize_bio(value)


# Our own words per pydantic error type. Anything not listed becomes _INVALID.
_MESSAGES: Final[dict[str, str]] = {
    "missing": "This field is required.",
    "extra_forbidden": "This field is not allowed.",
    "int_type": "Must be an integer.",
    "int_parsing": "Must be an integer.",
    "int_from_float": "Must be an integer.",
    "string_type": "Must be a string.",
    "greater_than_equal": f"Must be between {AGE_MIN} and {AGE_MAX}.",
    "less_than_equal": f"Must be between {AGE_MIN} and {AGE_MAX}.",
    "control_character": "Must not contain control characters.",
}
_INVALID: Final = "Invalid value."
_EMAIL_INVALID: Final = "Must be a valid email address."
_TOO_LONG: Final[dict[str, str]] = {
    "email": f"Must be at most {EMAIL_MAX_LENGTH} characters.",
    "bio": f"Must be at most {BIO_MAX_LENGTH} characters.",
}

_MALFORMED_TITLE: Final = "The request body is not valid JSON."
_NOT_AN_OBJECT: Final = "The body must be a JSON object."


# An unknown key is named back only when it is a plain identifier; any other key is client
# text (markup, SQL, escapes) and is reported against the body ("") instead of echoed.
_SAFE_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _field_error(error: ErrorDetails) -> FieldError:
    loc = error["loc"]
    kind = error["type"]
    if kind == "extra_forbidden" and not all(
        isinstance(part, str) and _SAFE_KEY.fullmatch(part) for part in loc
    ):
        return FieldError("", _MESSAGES[kind])
    field = ".".join(str(part) for part in loc)
    if kind == "string_too_long":
        return FieldError(field, _TOO_LONG.get(field, _INVALID))
    if kind == "value_error" and field == "email":
        return FieldError(field, _EMAIL_INVALID)
    return FieldError(field, _MESSAGES.get(kind, _INVALID))


def parse_profile_update(body: bytes) -> ProfileUpdate:
    """Parse and validate the raw body of ``PUT /v1/users/me``.

    Args:
        body: the request body as received; untrusted.

    Returns:
        The validated update, ``bio`` already sanitized.

    Raises:
        BadRequest: code ``malformed_json``, when the body is not UTF-8 or not JSON.
        ValidationFailed: when the JSON is not an object or a field is invalid; one
            :class:`~apiforge.errors.FieldError` per problem, in fixed words. ``field`` is the
            dotted path of the field, or ``""`` for the body as a whole; an unknown key that is
            not a plain identifier is reported under ``""`` so its text is never sent back.
    """
    try:
        # A strict decode refuses bad UTF-8 and encoded surrogates before orjson sees the text.
        obj = orjson.loads(body.decode("utf-8", "strict"))
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        raise BadRequest("malformed_json", _MALFORMED_TITLE) from None
    if not isinstance(obj, dict):
        raise ValidationFailed(errors=[FieldError("", _NOT_AN_OBJECT)])
    try:
        return ProfileUpdate.model_validate(obj)
    except ValidationError as exc:
        # include_input/include_url/include_context off: the details never carry client text.
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        # dict.fromkeys: several unnamed keys would otherwise repeat one identical error.
        field_errors = dict.fromkeys(_field_error(e) for e in errors)
        raise ValidationFailed(errors=list(field_errors)) from None
