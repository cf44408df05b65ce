"""``--dev`` only: a request may act as an AWS service principal, as a service calls KMS with
its own credentials (for a grant to ``GranteeServicePrincipal``, or a key policy naming
``{"Service": ...}``), and may say which resource it acts for (``aws:SourceArn``).

Rules: never consulted by a node that checks signatures; a malformed value is refused,
never ignored (ignoring it would leave the caller acting as the account root).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from kms.domain.errors import ValidationException
from kms.service.core import Caller

SERVICE_HEADER = "X-Kms-Service-Principal"  # e.g. logs.amazonaws.com
SOURCE_ARN_HEADER = "X-Kms-Source-Arn"  # e.g. arn:aws:logs:us-east-1:111122223333:log-group:x
# The model's ServicePrincipalType and GrantConstraintSourceArnType patterns.
_SERVICE = re.compile(r"([A-Za-z0-9\-]+)\.([A-Za-z0-9\-]+)(\.[A-Za-z0-9\-]+)+")
_SOURCE_ARN = re.compile(r"arn:aws[a-z0-9-]*:[a-z0-9-]+:[a-z0-9-]*:[0-9]{12}:.+")


def as_service(caller: Caller, headers: Mapping[str, str]) -> Caller:
    """``caller`` as the headers make it: the named service principal itself (type
    AWSService, no identity policies, no tags) and/or with an aws:SourceArn."""
    service = headers.get(SERVICE_HEADER, "").strip()
    source_arn = headers.get(SOURCE_ARN_HEADER, "").strip()
    if service:
        if len(service) > 128 or not _SERVICE.fullmatch(service):
            raise ValidationException(
                f"{SERVICE_HEADER} must be an AWS service principal such as "
                "logs.amazonaws.com.")
        caller = dataclasses.replace(
            caller, principal_arn=service, principal_type="AWSService", user_id=service,
            tags=(), identity_policies=(), identity_arn=service, via_service="")
    if source_arn:
        if len(source_arn) > 512 or not _SOURCE_ARN.fullmatch(source_arn):
            raise ValidationException(f"{SOURCE_ARN_HEADER} must be the ARN of a resource.")
        caller = dataclasses.replace(caller, source_arn=source_arn)
    return caller
