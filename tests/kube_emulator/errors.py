"""API errors as the real server reports them: a metav1.Status body with code, reason and details."""

from __future__ import annotations

from typing import Any

from .resources import ResourceType


class ApiError(Exception):
    """An error the server returns as a Status object with the given HTTP code and reason."""

    def __init__(self, code: int, reason: str, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = self.details
        return status


def _details(resource_type: ResourceType, name: str) -> dict[str, Any]:
    return {"name": name, "group": resource_type.group, "kind": resource_type.plural}


def not_found(resource_type: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource_type.qualified_plural} "{name}" not found',
                    details=_details(resource_type, name))


def already_exists(resource_type: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{resource_type.qualified_plural} "{name}" already exists',
                    details=_details(resource_type, name))


def conflict(resource_type: ResourceType, name: str) -> ApiError:
    message = (
        f'Operation cannot be fulfilled on {resource_type.qualified_plural} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    return ApiError(409, "Conflict", message, details=_details(resource_type, name))


def invalid(resource_type: ResourceType, name: str, causes: list[dict[str, str]]) -> ApiError:
    """Return a 422 Invalid error; each cause has `field`, `reason` (FieldValue...) and `message`."""
    summary = ", ".join(f"{cause['field']}: {cause['message']}" for cause in causes)
    details = _details(resource_type, name) | {"kind": resource_type.kind, "causes": causes}
    return ApiError(422, "Invalid", f'{resource_type.kind}.{resource_type.group} "{name}" is invalid: {summary}',
                    details=details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                    f"accepted media types include: application/json-patch+json, application/merge-patch+json, "
                    f"application/apply-patch+yaml (got {content_type!r})")


REASON_BY_CODE = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
