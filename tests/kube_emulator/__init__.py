"""An in-process Kubernetes API server for tests, serving the Grove CRDs with an emulated Grove operator.

The real REST protocol over plain HTTP on 127.0.0.1, so the official `kubernetes` client and `kubectl`
talk to it unchanged. Entry point: `KubeEmulator` (see tests/fixtures/kube.py for the pytest fixtures).
"""

from .emulator import KubeEmulator, ReconcileMode
from .errors import ApiError
from .resources import ResourceType, load_crds
from .traffic import Fault, RequestRecord

__all__ = ["ApiError", "Fault", "KubeEmulator", "ReconcileMode", "RequestRecord", "ResourceType", "load_crds"]
