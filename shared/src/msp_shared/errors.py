"""One error shape for the whole API:
{"error": "snake_case_code", "message": "human sentence", "details": {...}}"""
from __future__ import annotations

from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "details": self.details}


def bad_request(message: str, **details: Any) -> ApiError:
    return ApiError(400, "bad_request", message, details)


def unauthenticated(message: str = "Please sign in.") -> ApiError:
    return ApiError(401, "not_signed_in", message)


def forbidden(message: str = "You are not allowed to do this.") -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(message: str = "Not found.") -> ApiError:
    return ApiError(404, "not_found", message)


def conflict(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(409, code, message, details)


def rule_broken(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(422, code, message, details)


def too_large(message: str, **details: Any) -> ApiError:
    return ApiError(413, "too_large", message, details)


def slow_down(message: str = "Too many requests; try again later.", retry_after: int | None = None) -> ApiError:
    return ApiError(429, "rate_limited", message, {"retry_after": retry_after} if retry_after else {})
