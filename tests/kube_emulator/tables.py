"""Server-side printing: meta.k8s.io/v1 Table responses, as kubectl requests them for `get`."""

from __future__ import annotations

import datetime
import re
from typing import Any

from .resources import ResourceType

_FILTER = re.compile(r'^\[\?\(@\.([A-Za-z0-9_]+)\s*==\s*"([^"]*)"\)\]$')
_SEGMENT = re.compile(r"\.([A-Za-z0-9_-]+)|(\[\?\(@\.[A-Za-z0-9_]+\s*==\s*\"[^\"]*\"\)\])")

NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "priority": 0,
               "description": "Name must be unique within a namespace."}
AGE_COLUMN = {"name": "Age", "type": "date", "format": "", "priority": 0,
              "description": "CreationTimestamp is a timestamp representing the server time when this object was "
                             "created."}


def evaluate_json_path(obj: Any, path: str) -> Any:
    """Evaluate the JSONPath subset CRD printer columns use: `.a.b` and `[?(@.key=="value")]` filters."""
    values = [obj]
    for field_name, filter_text in _SEGMENT.findall(path):
        next_values = []
        for value in values:
            if field_name:
                if isinstance(value, dict) and field_name in value:
                    next_values.append(value[field_name])
            elif isinstance(value, list):
                key, expected = _FILTER.match(filter_text).groups()
                next_values.extend(item for item in value if isinstance(item, dict) and item.get(key) == expected)
        values = next_values
    if not values:
        return None
    return values[0]


def human_duration(seconds: float) -> str:
    """Format an age the way kubectl does (`45s`, `3m20s`, `5h`, `2d3h`)."""
    seconds = max(int(seconds), 0)
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 730:
        return f"{days}d"
    return f"{days // 365}y"


def _cell(column: dict[str, Any], obj: dict[str, Any]) -> Any:
    value = evaluate_json_path(obj, column["jsonPath"])
    if value is None:
        return None
    if column.get("type") == "date" and isinstance(value, str):
        created = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        return human_duration((datetime.datetime.now(datetime.UTC) - created).total_seconds())
    return value


def _column_definition(column: dict[str, Any]) -> dict[str, Any]:
    return {"name": column["name"], "type": column.get("type", "string"), "format": column.get("format", ""),
            "description": column.get("description", ""), "priority": column.get("priority", 0)}


def _row_object(obj: dict[str, Any], include_object: str) -> dict[str, Any] | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def to_table(resource_type: ResourceType, objects: list[dict[str, Any]], resource_version: str | None,
             *, include_object: str = "Metadata") -> dict[str, Any]:
    """Build a Table with the Name column plus the CRD's printer columns (Name and Age for built-in kinds)."""
    columns = list(resource_type.printer_columns) or [{"jsonPath": ".metadata.creationTimestamp", **AGE_COLUMN}]
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"]] + [_cell(column, obj) for column in columns]}
        row_object = _row_object(obj, include_object)
        if row_object is not None:
            row["object"] = row_object
        rows.append(row)
    metadata = {"resourceVersion": resource_version} if resource_version is not None else {}
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": [NAME_COLUMN] + [_column_definition(column) for column in columns],
        "rows": rows,
    }


def wants_table(accept: str | None) -> bool:
    """True when the Accept header requests `as=Table` in JSON, as `kubectl get` does unless -o json/yaml/name."""
    if not accept:
        return False
    for media_range in accept.split(","):
        parameters = [part.strip() for part in media_range.split(";")]
        if parameters[0] == "application/json" and "as=Table" in parameters:
            return True
    return False
