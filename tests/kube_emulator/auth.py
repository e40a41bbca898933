"""TokenReview and SubjectAccessReview, computed from the tokens and allow rules that tests register."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from .errors import bad_request

WILDCARD = "*"


@dataclass(frozen=True)
class UserInfo:
    username: str
    uid: str
    groups: tuple[str, ...]


@dataclass(frozen=True)
class AllowRule:
    """Allows `verbs` on `resources` (with `/subresource` when given) of `api_group` in `namespace`.

    A rule names a user, a group, or neither (then it applies to everyone); "*" matches any value.
    """

    user: str | None
    group: str | None
    verbs: tuple[str, ...]
    api_group: str
    resources: tuple[str, ...]
    namespace: str

    def matches(self, user: str, groups: list[str], attributes: dict[str, Any]) -> bool:
        if self.user is not None and self.user != user:
            return False
        if self.group is not None and self.group not in groups:
            return False
        resource = attributes.get("resource", "")
        if attributes.get("subresource"):
            resource = f"{resource}/{attributes['subresource']}"
        return (
            _matches(self.verbs, attributes.get("verb", ""))
            and _matches((self.api_group,), attributes.get("group", ""))
            and _matches(self.resources, resource)
            and _matches((self.namespace,), attributes.get("namespace", ""))
        )


def _matches(allowed: tuple[str, ...], value: str) -> bool:
    return WILDCARD in allowed or value in allowed


class AccessControl:
    """Registered bearer tokens and allow rules; everything not allowed is denied."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, UserInfo] = {}
        self._rules: list[AllowRule] = []

    def add_token(self, token: str, user: str, groups: tuple[str, ...] | list[str] = (), *, uid: str = "") -> None:
        with self._lock:
            self._tokens[token] = UserInfo(user, uid or f"uid-{user}", tuple(groups))

    def allow(self, rule: AllowRule) -> None:
        with self._lock:
            self._rules.append(rule)

    def review_token(self, body: dict[str, Any]) -> dict[str, Any]:
        """Fill in status of an authentication.k8s.io/v1 TokenReview."""
        spec = body.get("spec") or {}
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            raise bad_request("invalid TokenReview: spec.token is missing or empty")
        with self._lock:
            user = self._tokens.get(token)
        review = dict(body)
        if user is None:
            review["status"] = {"authenticated": False, "error": "invalid bearer token", "user": {}}
        else:
            review["status"] = {
                "authenticated": True,
                "user": {"username": user.username, "uid": user.uid, "groups": list(user.groups)},
                "audiences": list(spec.get("audiences") or []),
            }
        return review

    def review_access(self, body: dict[str, Any]) -> dict[str, Any]:
        """Fill in status of an authorization.k8s.io/v1 SubjectAccessReview."""
        spec = body.get("spec") or {}
        user = spec.get("user") or ""
        groups = list(spec.get("groups") or [])
        attributes = spec.get("resourceAttributes")
        if not user and not groups:
            raise bad_request("invalid SubjectAccessReview: at least one of spec.user and spec.groups must be set")
        if attributes is None:
            # NOTE: non-resource URLs are never allowed here; no rule type exists for them.
            allowed = False
        else:
            with self._lock:
                allowed = any(rule.matches(user, groups, attributes) for rule in self._rules)
        review = dict(body)
        review["status"] = {"allowed": allowed}
        if not allowed:
            review["status"]["reason"] = "no allow rule matches"
        return review
