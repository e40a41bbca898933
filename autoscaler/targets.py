"""Identity of a scalable Grove object and the Kubernetes facts the engine needs about it."""

from __future__ import annotations

import enum
from dataclasses import dataclass

GROUP = "grove.io"
VERSION = "v1alpha1"


class Kind(str, enum.Enum):
    """A Grove kind with a `/scale` subresource; the value is the lower-case name used in target ids."""

    PODCLIQUESET = "podcliqueset"
    PODCLIQUESCALINGGROUP = "podcliquescalinggroup"
    PODCLIQUE = "podclique"

    @property
    def plural(self) -> str:
        return self.value + "s"

    @property
    def kind_name(self) -> str:
        return {
            Kind.PODCLIQUESET: "PodCliqueSet",
            Kind.PODCLIQUESCALINGGROUP: "PodCliqueScalingGroup",
            Kind.PODCLIQUE: "PodClique",
        }[self]


@dataclass(frozen=True, order=True)
class TargetRef:
    """A `/scale` object, written `namespace/kind/name` (kind lower-case, as in replay files)."""

    namespace: str
    kind: Kind
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.kind.value}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> TargetRef:
        """Parse `namespace/kind/name`; raise ValueError naming the bad part."""
        parts = text.strip().split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"invalid target {text!r}: expected namespace/kind/name")
        namespace, kind, name = parts
        try:
            parsed_kind = Kind(kind.lower())
        except ValueError:
            allowed = " | ".join(k.value for k in Kind)
            raise ValueError(f"invalid target {text!r}: kind {kind!r} is not one of {allowed}") from None
        return cls(namespace, parsed_kind, name)
