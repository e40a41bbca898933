"""The `external.metrics.k8s.io/v1beta1` adapter: per-tick values served to the HPA over HTTPS.

`MetricStore` caches each tick's decisions, `serve_adapter` serves them, and `Authenticator`
checks callers the way an aggregated API server does.
"""

from autoscaler.adapter.auth import Authenticator, RequestHeaderConfig, UserInfo
from autoscaler.adapter.server import serve_adapter
from autoscaler.adapter.store import DESIRED_REPLICAS_METRIC, MetricStore

__all__ = [
    "DESIRED_REPLICAS_METRIC",
    "Authenticator",
    "MetricStore",
    "RequestHeaderConfig",
    "UserInfo",
    "serve_adapter",
]
