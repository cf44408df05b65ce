"""The one authorize step every handler passes.

Today's identity model: every credential acts for its account's root principal,
and every key carries the default key policy (the account root may do kms:*).
So a caller is allowed exactly when the key belongs to the caller's account.
AWS managed keys refuse management by customers, as their AWS-written policy does.
The access-control work replaces the body of ``authorize`` with policy, IAM and
grant evaluation; the call sites stay as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kms.domain.errors import AccessDeniedException
from kms.domain.key import Key

if TYPE_CHECKING:
    from kms.service.core import Call


# What the policy of an AWS managed key never allows a customer principal.
AWS_MANAGED_REFUSED = frozenset({
    "CancelKeyDeletion", "CreateAlias", "DeleteAlias", "DisableKey", "DisableKeyRotation",
    "EnableKey", "EnableKeyRotation", "PutKeyPolicy", "RotateKeyOnDemand", "ScheduleKeyDeletion",
    "TagResource", "UntagResource", "UpdateAlias", "UpdateKeyDescription", "ImportKeyMaterial",
    "GetParametersForImport", "DeleteImportedKeyMaterial", "ReplicateKey",
    "UpdatePrimaryRegion",
})


def authorize(call: Call, action: str, key: Key | None, account: str | None = None) -> None:
    """Allow ``kms:<action>`` on ``key`` (or on the account, for IAM-only actions) or raise.
    ``call`` is the whole request context: operation, parameters, caller (with source
    address, tags, identity policies), and the keys resolved so far."""
    caller = call.caller
    if key is not None and key.key_manager == "AWS" and action in AWS_MANAGED_REFUSED:
        raise AccessDeniedException(
            f"User: {caller.principal_arn} is not authorized to perform: kms:{action} on "
            f"resource: {key.arn} because it is an AWS managed key"
        )
    owner = key.account if key is not None else account
    if owner is not None and caller.account == owner:
        return
    resource = key.arn if key is not None else "*"
    raise AccessDeniedException(
        f"User: {caller.principal_arn} is not authorized to perform: kms:{action} "
        f"on resource: {resource} because no resource-based policy allows the "
        f"kms:{action} action"
    )
