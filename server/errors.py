"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right
status. Anything the server refuses is an `APIError`; the handlers below turn FastAPI's own
refusals (validation, unknown route, wrong method) into the same shape, and anything unexpected
into a 500 that says nothing about internals."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("retserve.errors")


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def not_found(message: str, param: str | None = None, code: str = "not_found") -> APIError:
    return APIError(404, message, "not_found_error", param, code)


def unauthorized(message: str = "invalid API key") -> APIError:
    return APIError(401, message, "authentication_error", None, "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"})


def overloaded(message: str, retry_after: int = 1) -> APIError:
    return APIError(429, message, "rate_limit_error", None, "server_overloaded",
                    {"Retry-After": str(retry_after)})


def unavailable(message: str, retry_after: int = 5) -> APIError:
    return APIError(503, message, "service_unavailable", None, "service_unavailable",
                    {"Retry-After": str(retry_after)})


def timed_out(message: str) -> APIError:
    return APIError(504, message, "timeout", None, "request_timeout")


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


# pydantic names the union member an error came from ("str", "list[ContentPart]", ...): not a
# parameter a client can find in its request
_UNION_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|function-\w+|[a-z-]+\[.*\])$")


_FASTAPI_PARSE_ERROR = "There was an error parsing the body"


def _param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "header", "path")
             and not (isinstance(p, str) and _UNION_TAG.match(p))]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if not errors:
        return bad_request("invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return bad_request("the body is not valid JSON", code="invalid_json")
    param = _param(tuple(first.get("loc", ())))
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        return bad_request("the request body must be a JSON object (Content-Type: "
                           "application/json)", code="invalid_body")
    if first.get("type") == "missing":
        if param is None:  # the body itself
            return bad_request("the request body is missing: send a JSON object "
                               "(Content-Type: application/json)", code="invalid_body")
        return bad_request(f"missing required parameter: {param}", param, "missing_required")
    message = str(first.get("msg", "invalid value"))
    return bad_request(f"{param}: {message}" if param else message, param, "invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == _FASTAPI_PARSE_ERROR:
            # the body's bytes are not UTF-8, or its JSON nests past the parser's depth
            return error_response(bad_request("the body is not valid JSON: not UTF-8, or "
                                              "nested too deeply", code="invalid_json"))
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code,
                                                                          "invalid_request_error")
        return error_response(APIError(exc.status_code, str(exc.detail), kind, None, None,
                                       getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, "internal error", "server_error", None,
                                       "internal_error"))
