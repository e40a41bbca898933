"""Patch formats the API server accepts: JSON merge patch (RFC 7386) and JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError, bad_request

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer_tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise bad_request(f"invalid JSON pointer {pointer!r}: it must start with /")
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def _resolve_parent(document: Any, tokens: list[str], pointer: str) -> tuple[Any, str]:
    parent = document
    for token in tokens[:-1]:
        if isinstance(parent, dict) and token in parent:
            parent = parent[token]
        elif isinstance(parent, list) and token.isdigit() and int(token) < len(parent):
            parent = parent[int(token)]
        else:
            raise _patch_failed(f"path {pointer!r} does not exist")
    return parent, tokens[-1]


def _patch_failed(message: str) -> ApiError:
    return ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {message}")


def _get(document: Any, pointer: str) -> Any:
    tokens = _pointer_tokens(pointer)
    if not tokens:
        return document
    parent, last = _resolve_parent(document, tokens, pointer)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _patch_failed(f"path {pointer!r} does not exist")


def _remove(document: Any, pointer: str) -> Any:
    parent, last = _resolve_parent(document, _pointer_tokens(pointer), pointer)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _patch_failed(f"unable to remove nonexistent key at {pointer!r}")


def _add(document: Any, pointer: str, value: Any, *, replace: bool) -> Any:
    tokens = _pointer_tokens(pointer)
    if not tokens:
        return value
    parent, last = _resolve_parent(document, tokens, pointer)
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise _patch_failed(f"replace operation does not apply: doc is missing key {pointer!r}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise _patch_failed(f"index out of range at {pointer!r}")
    else:
        raise _patch_failed(f"path {pointer!r} does not point into an object or array")
    return document


def json_patch(target: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch (add, remove, replace, move, copy, test) to a copy of `target`."""
    if not isinstance(operations, list):
        raise bad_request("invalid JSON patch: the body must be a JSON array of operations")
    document = copy.deepcopy(target)
    for index, operation in enumerate(operations):
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise bad_request(f"invalid JSON patch operation {index}: {operation!r} needs op and path")
        op, path = operation["op"], operation["path"]
        if op in ("add", "replace", "test") and "value" not in operation:
            raise bad_request(f"invalid JSON patch operation {index}: {op} at {path!r} needs a value")
        if op == "add":
            document = _add(document, path, copy.deepcopy(operation["value"]), replace=False)
        elif op == "replace":
            document = _add(document, path, copy.deepcopy(operation["value"]), replace=True)
        elif op == "remove":
            _remove(document, path)
        elif op in ("move", "copy"):
            if "from" not in operation:
                raise bad_request(f"invalid JSON patch operation {index}: {op} at {path!r} needs from")
            source = operation["from"]
            value = _remove(document, source) if op == "move" else copy.deepcopy(_get(document, source))
            document = _add(document, path, value, replace=False)
        elif op == "test":
            if _get(document, path) != operation["value"]:
                raise _patch_failed(f"testing value {path!r} failed")
        else:
            raise bad_request(f"invalid JSON patch operation {index}: unknown op {op!r}")
    return document


def apply_patch(target: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    """Apply a patch body of the given media type, handling strategic merge as a JSON merge patch.

    NOTE: strategic merge patch replaces every list here. The real server merges lists of built-in types
    by their patch merge key (for example containers by name).
    """
    if content_type == JSON_PATCH:
        result = json_patch(target, patch)
    elif content_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        if not isinstance(patch, dict):
            raise bad_request(f"invalid {content_type} body: expected a JSON object, got {type(patch).__name__}")
        result = merge_patch(target, patch)
    else:
        raise ValueError(f"unsupported patch type {content_type!r}")
    if not isinstance(result, dict):
        raise _patch_failed("the patched document is not a JSON object")
    return result
