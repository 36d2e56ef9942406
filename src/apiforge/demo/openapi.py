"""The OpenAPI 3.1 description of the demo users API, served at ``/openapi.json``.

The request schema comes from :class:`~apiforge.demo.schemas.ProfileUpdate` itself, so the
document and the validation cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Final

from apiforge.demo.schemas import AGE_MAX, AGE_MIN, ProfileUpdate

__all__ = ["OPENAPI_VERSION", "build_openapi"]

OPENAPI_VERSION: Final = "3.1.0"

_REF = "#/components/schemas/{model}"
_PROBLEM_TYPE = "application/problem+json"


def _user_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "User",
        "description": "A user profile. `bio` is in its stored form: HTML removed, "
        "`&`, `<` and `>` escaped as entities.",
        "additionalProperties": False,
        "required": ["id", "username", "email", "age", "bio", "role", "status"],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "username": {"type": "string"},
            "email": {"type": "string", "format": "email"},
            "age": {
                "anyOf": [
                    {"type": "integer", "minimum": AGE_MIN, "maximum": AGE_MAX},
                    {"type": "null"},
                ]
            },
            "bio": {"type": "string"},
            "role": {"type": "string", "enum": ["user", "support", "admin"]},
            "status": {"type": "string"},
        },
    }


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "title": "Problem",
        "description": "RFC 9457 problem details. Titles and messages are fixed text.",
        "required": ["type", "title", "status", "code", "request_id"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string"},
            "request_id": {"type": "string"},
            "errors": {
                "type": "array",
                "description": "Field errors, on `validation_failed` only. `field` is the "
                "dotted path of the field, or empty for the body as a whole.",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {
                        "field": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {_PROBLEM_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}},
    }


def _user_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="User")}}},
    }


def build_openapi() -> dict[str, Any]:
    """Build the OpenAPI 3.1 document of the demo users API.

    Returns:
        A fresh JSON-ready dict; the app serializes it once at start-up.
    """
    profile_update = ProfileUpdate.model_json_schema(ref_template=_REF)
    not_found = _problem("No such user, or the id is not a positive integer of 1 to 18 digits.")
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "APIForge demo users API",
            "version": "1.0.0",
            "description": "The reference service protected by APIForge.",
        },
        "paths": {
            "/v1/users/me": {
                "get": {
                    "operationId": "getMe",
                    "summary": "The caller's profile.",
                    "responses": {"200": _user_response("The caller's profile."), "404": not_found},
                },
                "put": {
                    "operationId": "updateMe",
                    "summary": "Replace the caller's email, age and bio.",
                    "description": "HTML is removed from `bio` (no tag is kept); omitted `age` "
                    "and `bio` are cleared.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": _REF.format(model="ProfileUpdate")}
                            }
                        },
                    },
                    "responses": {
                        "200": _user_response("The updated profile."),
                        "400": _problem("The body is not UTF-8 JSON."),
                        "404": not_found,
                        "413": _problem("The body is too large."),
                        "415": _problem("The body is not application/json."),
                        "422": _problem("A field is invalid; see `errors`."),
                    },
                },
            },
            "/v1/users/{id}": {
                "get": {
                    "operationId": "getUser",
                    "summary": "A profile by id.",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"},
                        }
                    ],
                    "responses": {"200": _user_response("The profile."), "404": not_found},
                },
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document.",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "ProfileUpdate": profile_update,
                "User": _user_schema(),
                "Problem": _problem_schema(),
            },
        },
    }
