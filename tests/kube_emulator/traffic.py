"""The request log and the faults that tests inject into the emulated API server."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request as the server received it; `body` is parsed JSON, or the raw text if not JSON."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    content_type: str | None
    user_agent: str | None
    status: int


@dataclass
class Fault:
    """A rule that delays, fails or drops matching requests.

    `count` is how many matching requests it still affects (None: all). `status` None means only `delay_seconds`.
    `drop_connection` closes the socket without any response, as a network failure or a crashed server would.
    """

    method: str | None
    path_pattern: re.Pattern[str]
    status: int | None
    count: int | None
    delay_seconds: float = 0.0
    reason: str | None = None
    message: str | None = None
    drop_connection: bool = False
    retry_after_seconds: int | None = None
    hits: int = field(default=0)

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method:
            return False
        if self.count is not None and self.hits >= self.count:
            return False
        return self.path_pattern.search(path) is not None


class Traffic:
    """Thread-safe request log and fault list shared by all request handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._faults: list[Fault] = []

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    @property
    def records(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear_records(self) -> None:
        with self._lock:
            self._records.clear()

    def add_fault(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def take_fault(self, method: str, path: str) -> Fault | None:
        """Return the first fault matching the request and count it as used, or None."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None
