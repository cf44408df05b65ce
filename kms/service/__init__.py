"""One handler per API operation, registered in ``core.OPERATIONS`` on import."""

from kms.service import aliases, crypto_ops, keys  # noqa: F401  (registration)
from kms.service.core import OPERATIONS, Caller, Service

__all__ = ["OPERATIONS", "Caller", "Service"]
