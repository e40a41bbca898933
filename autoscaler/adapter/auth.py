"""Authentication and authorisation of adapter requests, as an aggregated API server does them.

Callers authenticate, in this order, with:
1. a front-proxy client certificate issued by the requestheader CA (the kube-aggregator's),
   whose CN is an allowed name; the user then comes from the username headers
   (X-Remote-User), the groups from the group headers (X-Remote-Group) and extra values
   from X-Remote-Extra-<key>;
2. a client certificate issued by the client CA: the user is the CN, the groups are the Os;
3. a bearer token, checked by a TokenReview.

Each metric read is then authorised by a SubjectAccessReview for verb `get` on resource
<metric name> in group external.metrics.k8s.io and the request's namespace. Review results,
allowed and denied alike, are cached for `cache_ttl_seconds`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, Mapping, Protocol, TypeVar

import urllib3
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID
from kubernetes import client
from kubernetes.client.rest import ApiException

from autoscaler.adapter.tls import load_certificates

logger = logging.getLogger(__name__)

API_GROUP = "external.metrics.k8s.io"
API_VERSION = "v1beta1"
# NOTE: kube-apiserver would name a GET of this collection path `list`, but `get` is checked here.
# The HPA controller's bootstrap role grants both verbs on external.metrics.k8s.io.
VERB = "get"

AUTHENTICATION_CONFIGMAP = ("kube-system", "extension-apiserver-authentication")
CERTIFICATE_CACHE_SECONDS = 300.0


class Unauthenticated(Exception):
    """No valid credentials (HTTP 401)."""


class Forbidden(Exception):
    """Valid credentials without permission for the request (HTTP 403)."""


class AuthorizationFailed(Exception):
    """The SubjectAccessReview request failed (HTTP 500). Nothing is allowed without a review."""


class HeaderSource(Protocol):
    """Request headers with every value of a repeated header (as `http.client.HTTPMessage`)."""

    def get_all(self, name: str, failobj: None = None) -> list[str] | None: ...


@dataclass(frozen=True)
class UserInfo:
    """An authenticated caller; `method` is requestheader, client-certificate or token."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    method: str = ""


@dataclass(frozen=True)
class RequestHeaderConfig:
    """Front-proxy authentication: the CA, the allowed CNs (empty allows any) and header names."""

    client_ca_pem: bytes
    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_header_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)

    def __post_init__(self) -> None:
        load_certificates(self.client_ca_pem)
        if not self.username_headers:
            raise ValueError("requestheader authentication needs at least one username header")

    @classmethod
    def from_file(cls, client_ca_file: str, *, allowed_names: tuple[str, ...] = ()) -> RequestHeaderConfig:
        """Load the requestheader CA from a PEM file, with the default header names."""
        with open(client_ca_file, "rb") as ca_file:
            return cls(ca_file.read(), allowed_names=allowed_names)


@dataclass(frozen=True)
class ClusterAuthentication:
    """The contents of ConfigMap kube-system/extension-apiserver-authentication."""

    requestheader: RequestHeaderConfig | None
    client_ca_pem: bytes | None


def read_cluster_authentication(api_client: client.ApiClient) -> ClusterAuthentication:
    """Read ConfigMap kube-system/extension-apiserver-authentication.

    The list-valued keys hold JSON arrays, as kube-apiserver writes them. Raise ValueError
    naming the key when one cannot be parsed.
    """
    namespace, name = AUTHENTICATION_CONFIGMAP
    configmap = client.CoreV1Api(api_client).read_namespaced_config_map(name, namespace)
    data = configmap.data or {}

    requestheader = None
    requestheader_ca = data.get("requestheader-client-ca-file")
    if requestheader_ca:
        requestheader = RequestHeaderConfig(
            requestheader_ca.encode("ascii"),
            allowed_names=_json_list(data, "requestheader-allowed-names"),
            username_headers=_json_list(data, "requestheader-username-headers") or ("X-Remote-User",),
            group_headers=_json_list(data, "requestheader-group-headers") or ("X-Remote-Group",),
            extra_header_prefixes=_json_list(data, "requestheader-extra-headers-prefix") or ("X-Remote-Extra-",),
        )
    client_ca = data.get("client-ca-file")
    return ClusterAuthentication(requestheader, client_ca.encode("ascii") if client_ca else None)


def _read_cluster_authentication_or_explain(api_client: client.ApiClient, *, have_file: bool) -> ClusterAuthentication:
    namespace, name = AUTHENTICATION_CONFIGMAP
    try:
        return read_cluster_authentication(api_client)
    except ApiException as error:
        if error.status == 404 and have_file:
            logger.warning("ConfigMap %s/%s not found; using the requestheader CA file only", namespace, name)
            return ClusterAuthentication(None, None)
        hint = {
            403: f"bind Role {name}-reader in {namespace} to the service account",
            404: "give the requestheader CA with --requestheader-client-ca-file",
        }.get(error.status or 0, "check the API server connection")
        raise ValueError(f"cannot read ConfigMap {namespace}/{name}: HTTP {error.status} {error.reason}; {hint}") from error


def _json_list(data: Mapping[str, str], key: str) -> tuple[str, ...]:
    text = data.get(key)
    if not text:
        return ()
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"ConfigMap {'/'.join(AUTHENTICATION_CONFIGMAP)} key {key}: invalid JSON array {text!r}: {error}") from None
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ValueError(f"ConfigMap {'/'.join(AUTHENTICATION_CONFIGMAP)} key {key}: expected a JSON array of strings, got {text!r}")
    return tuple(values)


Value = TypeVar("Value")


class _TtlCache(Generic[Value]):
    """A small thread-safe cache whose entries expire `ttl` seconds after they were stored."""

    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[Hashable, tuple[float, Value]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Value | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self.clock():
                del self._entries[key]
                return None
            return entry[1]

    def put(self, key: Hashable, value: Value) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            now = self.clock()
            if len(self._entries) >= self.max_entries:
                self._entries = {k: entry for k, entry in self._entries.items() if entry[0] > now}
            while len(self._entries) >= self.max_entries:
                # dicts keep insertion order, so the first key is the oldest entry.
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (now + self.ttl, value)


@dataclass(frozen=True)
class _CertificateIdentity:
    common_name: str
    organizations: tuple[str, ...]
    from_requestheader_ca: bool
    from_client_ca: bool


@dataclass(frozen=True)
class _Review:
    allowed: bool
    reason: str


class Authenticator:
    """Authenticates and authorises adapter requests against the Kubernetes API.

    `api_client` makes the TokenReviews and SubjectAccessReviews. `requestheader` enables
    front-proxy certificates and `client_ca_pem` plain client certificates. The server's TLS
    context must trust the CAs returned by `trusted_ca_pem`.
    """

    def __init__(
        self,
        *,
        api_client: client.ApiClient,
        requestheader: RequestHeaderConfig | None = None,
        client_ca_pem: bytes | None = None,
        cache_ttl_seconds: float = 10.0,
        cache_max_entries: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requestheader = requestheader
        self._authentication_api = client.AuthenticationV1Api(api_client)
        self._authorization_api = client.AuthorizationV1Api(api_client)
        self._requestheader_cas = load_certificates(requestheader.client_ca_pem) if requestheader else []
        self._client_ca_pem = client_ca_pem
        self._client_cas = load_certificates(client_ca_pem) if client_ca_pem else []
        self._tokens: _TtlCache[UserInfo | str] = _TtlCache(cache_ttl_seconds, cache_max_entries, clock)
        self._reviews: _TtlCache[_Review] = _TtlCache(cache_ttl_seconds, cache_max_entries, clock)
        # The TLS handshake already verified each certificate, so only which CA issued it is cached.
        self._certificates: _TtlCache[_CertificateIdentity] = _TtlCache(CERTIFICATE_CACHE_SECONDS, cache_max_entries, clock)

    @classmethod
    def from_cluster(
        cls,
        api_client: client.ApiClient,
        *,
        requestheader_client_ca_file: str | None = None,
        cache_ttl_seconds: float = 10.0,
    ) -> Authenticator:
        """Configure from ConfigMap kube-system/extension-apiserver-authentication.

        A `requestheader_client_ca_file` replaces the ConfigMap's requestheader CA but keeps
        its allowed names and header names; with it, a missing ConfigMap is not an error.
        Raise ValueError when the ConfigMap cannot be read and no file is given.
        """
        cluster = _read_cluster_authentication_or_explain(api_client, have_file=requestheader_client_ca_file is not None)
        requestheader = cluster.requestheader
        if requestheader_client_ca_file is not None:
            from_file = RequestHeaderConfig.from_file(requestheader_client_ca_file)
            if requestheader is None:
                requestheader = from_file
            else:
                requestheader = RequestHeaderConfig(
                    from_file.client_ca_pem,
                    allowed_names=requestheader.allowed_names,
                    username_headers=requestheader.username_headers,
                    group_headers=requestheader.group_headers,
                    extra_header_prefixes=requestheader.extra_header_prefixes,
                )
        if requestheader is None:
            logger.warning("no requestheader CA configured: requests through the kube-aggregator will be rejected")
        return cls(
            api_client=api_client,
            requestheader=requestheader,
            client_ca_pem=cluster.client_ca_pem,
            cache_ttl_seconds=cache_ttl_seconds,
        )

    def trusted_ca_pem(self) -> bytes | None:
        """Return every CA a client certificate may chain to, as one PEM bundle."""
        bundle = b""
        if self.requestheader is not None:
            bundle += self.requestheader.client_ca_pem.rstrip(b"\n") + b"\n"
        if self._client_ca_pem:
            bundle += self._client_ca_pem.rstrip(b"\n") + b"\n"
        return bundle or None

    def authenticate(self, headers: HeaderSource, peer_certificate_der: bytes | None) -> UserInfo:
        """Return the caller; raise Unauthenticated listing why each method failed.

        `peer_certificate_der` must come from a TLS handshake that already verified the
        chain against `trusted_ca_pem`. This method only finds which CA issued it.
        """
        failures: list[str] = []
        if peer_certificate_der is not None:
            certificate = self._identify(peer_certificate_der)
            user = self._from_requestheader(certificate, headers, failures)
            if user is None:
                user = self._from_client_certificate(certificate, failures)
            if user is not None:
                return user

        token = _bearer_token(headers)
        if token is not None:
            return self._from_token(token)

        if not failures:
            failures.append("no client certificate and no bearer token")
        raise Unauthenticated("; ".join(failures))

    def authorize(self, user: UserInfo, *, namespace: str, metric: str) -> None:
        """Raise Forbidden unless a SubjectAccessReview allows `user` to get `metric` in `namespace`."""
        key = (user.name, user.uid, user.groups, tuple(sorted(user.extra.items())), namespace, metric)
        review = self._reviews.get(key)
        if review is None:
            review = self._review_access(user, namespace=namespace, metric=metric)
            self._reviews.put(key, review)
        if not review.allowed:
            detail = f": {review.reason}" if review.reason else ""
            raise Forbidden(
                f'{API_GROUP} "{metric}" is forbidden: User "{user.name}" cannot {VERB} resource "{metric}" '
                f'in API group "{API_GROUP}" in the namespace "{namespace}"{detail}'
            )

    def _identify(self, der: bytes) -> _CertificateIdentity:
        # Parsing and checking the issuer signature costs about 0.1 ms, and a keep-alive
        # connection presents the same certificate on every request.
        identity = self._certificates.get(der)
        if identity is None:
            certificate = x509.load_der_x509_certificate(der)
            identity = _CertificateIdentity(
                common_name=_common_name(certificate),
                organizations=tuple(
                    str(attribute.value) for attribute in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
                ),
                from_requestheader_ca=_issued_by_any(certificate, self._requestheader_cas),
                from_client_ca=_issued_by_any(certificate, self._client_cas),
            )
            self._certificates.put(der, identity)
        return identity

    def _from_requestheader(self, certificate: _CertificateIdentity, headers: HeaderSource, failures: list[str]) -> UserInfo | None:
        config = self.requestheader
        if config is None or not certificate.from_requestheader_ca:
            return None
        common_name = certificate.common_name
        if config.allowed_names and common_name not in config.allowed_names:
            failures.append(f"front-proxy certificate CN {common_name!r} is not one of the allowed names {list(config.allowed_names)}")
            return None

        name = next((value for header in config.username_headers for value in headers.get_all(header) or () if value), None)
        if name is None:
            failures.append(f"front-proxy request without a user header ({', '.join(config.username_headers)})")
            return None
        groups = tuple(value for header in config.group_headers for value in headers.get_all(header) or ())
        return UserInfo(name, groups, extra=_extra_values(headers, config.extra_header_prefixes), method="requestheader")

    def _from_client_certificate(self, certificate: _CertificateIdentity, failures: list[str]) -> UserInfo | None:
        if not certificate.from_client_ca:
            if not failures:
                failures.append("the client certificate was not issued by the requestheader CA or the client CA")
            return None
        if not certificate.common_name:
            failures.append("client certificate without a common name")
            return None
        return UserInfo(certificate.common_name, certificate.organizations, method="client-certificate")

    def _from_token(self, token: str) -> UserInfo:
        key = hashlib.sha256(token.encode("utf-8")).hexdigest()
        cached = self._tokens.get(key)
        if cached is None:
            cached = self._review_token(token)
            self._tokens.put(key, cached)
        if isinstance(cached, str):
            raise Unauthenticated(cached)
        return cached

    def _review_token(self, token: str) -> UserInfo | str:
        review = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        try:
            result = self._authentication_api.create_token_review(review)
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            logger.warning("TokenReview failed: %s", _describe(error))
            # The failure is not cached, so the next request retries the review.
            raise Unauthenticated(f"the TokenReview of the bearer token failed: {_describe(error)}") from error

        status = result.status
        if status is None or not status.authenticated or status.user is None or not status.user.username:
            return f"invalid bearer token: {status.error}" if status is not None and status.error else "invalid bearer token"
        user = status.user
        extra = {key: tuple(values or ()) for key, values in (user.extra or {}).items()}
        return UserInfo(user.username, tuple(user.groups or ()), uid=user.uid or "", extra=extra, method="token")

    def _review_access(self, user: UserInfo, *, namespace: str, metric: str) -> _Review:
        spec = client.V1SubjectAccessReviewSpec(
            user=user.name,
            groups=list(user.groups),
            uid=user.uid or None,
            extra={key: list(values) for key, values in user.extra.items()} or None,
            resource_attributes=client.V1ResourceAttributes(
                group=API_GROUP,
                version=API_VERSION,
                resource=metric,
                namespace=namespace,
                verb=VERB,
            ),
        )
        try:
            result = self._authorization_api.create_subject_access_review(client.V1SubjectAccessReview(spec=spec))
        except (ApiException, urllib3.exceptions.HTTPError) as error:
            logger.error("SubjectAccessReview for user %s on %s/%s failed: %s", user.name, namespace, metric, _describe(error))
            raise AuthorizationFailed(f"authorization failed: the SubjectAccessReview request failed: {_describe(error)}") from error
        status = result.status
        allowed = bool(status is not None and status.allowed and not status.denied)
        return _Review(allowed, (status.reason or "") if status is not None else "")


def _issued_by_any(certificate: x509.Certificate, authorities: list[x509.Certificate]) -> bool:
    for authority in authorities:
        try:
            certificate.verify_directly_issued_by(authority)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _common_name(certificate: x509.Certificate) -> str:
    attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else ""


def _extra_values(headers: HeaderSource, prefixes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    extra: dict[str, list[str]] = {}
    keys = getattr(headers, "keys", lambda: [])()
    for header in dict.fromkeys(keys):
        for prefix in prefixes:
            if header.lower().startswith(prefix.lower()):
                # Kubernetes lower-cases the key and percent-decodes it.
                key = urllib.parse.unquote(header[len(prefix) :].lower())
                extra.setdefault(key, []).extend(headers.get_all(header) or ())
    return {key: tuple(values) for key, values in extra.items()}


def _bearer_token(headers: HeaderSource) -> str | None:
    for value in headers.get_all("Authorization") or ():
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return None


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
