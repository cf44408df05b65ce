"""One handler per API operation, registered in ``core.OPERATIONS`` on import."""

from kms.service import (  # noqa: F401  (registration)
    aliases,
    asymmetric_ops,
    crypto_ops,
    grant_ops,
    import_ops,
    kem_ops,
    keys,
    lifecycle_ops,
    policy_ops,
    region_ops,
    usage_ops,
)
from kms.service.core import OPERATIONS, Caller, Service

__all__ = ["OPERATIONS", "Caller", "Service"]
