"""Klaviyo client for the sync engine: bulk import jobs, list membership, lookups, consent.

Importable without ``azure.functions``. See ``client.KlaviyoClient`` for the calls.
"""

from .batching import (
    ENVELOPE_RESERVE,
    MAX_REQUEST_BYTES,
    BatchBuilder,
    FlushPolicy,
    ImportBatch,
    build_batches,
    import_body,
    serialize_profile,
)
from .client import DEFAULT_BASE_URL, REVISION, ClientStats, KlaviyoClient
from .errors import (
    KlaviyoAuthError,
    KlaviyoBadRequest,
    KlaviyoError,
    KlaviyoNotFound,
    KlaviyoServerError,
    KlaviyoThrottled,
    KlaviyoUnavailable,
)
from .limits import KLAVIYO_TIERS, RateLimiter, Tier
from .models import ImportErrorItem, ImportJob, RejectedProfile, SubmitResult, SubscribeProfile
from .retry import RetryPolicy, parse_retry_after

__all__ = [
    "DEFAULT_BASE_URL",
    "ENVELOPE_RESERVE",
    "KLAVIYO_TIERS",
    "MAX_REQUEST_BYTES",
    "REVISION",
    "BatchBuilder",
    "ClientStats",
    "FlushPolicy",
    "ImportBatch",
    "ImportErrorItem",
    "ImportJob",
    "KlaviyoAuthError",
    "KlaviyoBadRequest",
    "KlaviyoClient",
    "KlaviyoError",
    "KlaviyoNotFound",
    "KlaviyoServerError",
    "KlaviyoThrottled",
    "KlaviyoUnavailable",
    "RateLimiter",
    "RejectedProfile",
    "RetryPolicy",
    "SubmitResult",
    "SubscribeProfile",
    "Tier",
    "build_batches",
    "import_body",
    "parse_retry_after",
    "serialize_profile",
]
