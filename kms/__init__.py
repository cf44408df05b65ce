"""A self-hosted key service that speaks the AWS KMS API (``kms serve``)."""

from __future__ import annotations

__version__ = "0.1.0"  # the fallback when the kms-selfhosted distribution is not installed
