"""Where the Klaviyo API keys come from: Azure Key Vault in Azure, the environment locally.

Each connection names the Key Vault secret that holds its Klaviyo private key (`Connection.secret_name`);
the pipeline calls ``provider.get(connection.secret_name)`` inside the activity that talks to Klaviyo and
hands the string straight to the Klaviyo client.

Rules for the value (the key):
- it is never logged, never put in a report, an exception message, or durable history. In particular it must
  not be an activity's input or output (those are persisted): fetch it inside the activity that uses it;
- `get` returns a plain ``str`` (the interface the pipeline and the Klaviyo client use); providers keep it
  wrapped in pydantic's ``SecretStr`` internally, so a provider's repr, ``vars()`` or a debugger's locals
  view of its cache shows ``**********``;
- errors name the secret (and the vault), never the value.

Providers:
- `KeyVaultSecrets`: ``azure-keyvault-secrets`` with ``DefaultAzureCredential`` (in Azure the managed
  identity; ``AZURE_CLIENT_ID`` selects a user-assigned identity). Values are cached for ``ttl_s`` seconds
  (``SECRET_CACHE_TTL_S``, default 300) so a rotated key is picked up within that time; `invalidate()` drops
  the cache early (e.g. after Klaviyo answered 401 with a cached key).
- `EnvSecrets` (local runs): ``KLAVIYO_API_KEY__<NAME>`` for that secret name if set, else ``KLAVIYO_API_KEY``.
  ``<NAME>`` is the secret name upper-cased with dashes turned into underscores (``klaviyo-prod`` ->
  ``KLAVIYO_API_KEY__KLAVIYO_PROD``); no clash is possible because Key Vault names cannot contain ``_``.

`secret_provider(settings)` picks Key Vault when ``KEY_VAULT_URL`` is set, the environment otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, MutableMapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from azure.core.exceptions import AzureError
from pydantic import SecretStr

from shared.platform.errors import ConfigError

if TYPE_CHECKING:
    from shared.platform.settings import AppSettings

log = logging.getLogger(__name__)

ENV_VAR = "KLAVIYO_API_KEY"
ENV_VAR_PREFIX = f"{ENV_VAR}__"
SECRET_NAME_RE = re.compile(r"[0-9A-Za-z-]{1,127}")
ACCESS_PROBE = "health-probe"  # never written by the app: see KeyVaultSecrets.check_access


class SecretError(ConfigError):
    """A secret cannot be read or written. The message names the secret, never its value."""


class SecretNotFoundError(SecretError):
    """The secret does not exist (or is empty)."""


def validate_secret_name(name: object) -> str:
    """Key Vault secret names: 1-127 characters, ASCII letters, digits and dashes. Raises ValueError."""
    if not isinstance(name, str) or not SECRET_NAME_RE.fullmatch(name):
        raise ValueError("secret names must be 1-127 characters of letters, digits and dashes (Key Vault's rule)")
    return name


class SecretProvider(Protocol):
    def get(self, name: str) -> str: ...
    def set(self, name: str, value: str) -> None: ...


def _check_name(name: object) -> str:
    try:
        return validate_secret_name(name)
    except ValueError as exc:
        # The rejected name is not echoed: a key pasted where a name belongs must not end up in a message.
        raise SecretError(f"invalid secret name: {exc}") from None


def _check_value(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise SecretError(f"secret '{name}': the value must be a non-empty string")
    return value


class EnvSecrets:
    """Local fallback: the key comes from the environment (see the module docstring for the names)."""

    def __init__(self, environ: MutableMapping[str, str] = os.environ):
        self.environ = environ

    def __repr__(self) -> str:
        return "EnvSecrets()"

    @staticmethod
    def variable_for(name: str) -> str:
        """The per-secret variable: ``KLAVIYO_API_KEY__<NAME>`` (upper case, dashes -> underscores)."""
        return ENV_VAR_PREFIX + _check_name(name).upper().replace("-", "_")

    def get(self, name: str) -> str:
        specific = self.variable_for(name)
        for var in (specific, ENV_VAR):
            value = self.environ.get(var)
            if value:
                return value
        raise SecretNotFoundError(f"secret '{name}' is not set: define {specific} or {ENV_VAR} in the environment")

    def set(self, name: str, value: str) -> None:
        """Sets ``KLAVIYO_API_KEY__<NAME>`` in the mapping (this process only, for local runs and tests)."""
        var = self.variable_for(name)
        self.environ[var] = _check_value(name, value)


class KeyVaultSecrets:
    """Secrets in Azure Key Vault, cached for `ttl_s` seconds (per process).

    `credential` defaults to ``DefaultAzureCredential()`` (which reads ``AZURE_CLIENT_ID`` for a
    user-assigned managed identity). `clock` is injectable for tests. `client` is a ready
    ``SecretClient``; otherwise one is built from `vault_url`, `credential` and `client_kwargs`
    (e.g. ``connection_verify`` or ``verify_challenge_resource`` for a local stand-in).
    The SDK's network trace logging (``logging_enable``) logs bodies, i.e. secret values, so it is refused.
    """

    def __init__(
        self,
        vault_url: str,
        credential: Any = None,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        client: Any = None,
        **client_kwargs: Any,
    ):
        if ttl_s < 0:
            raise ValueError("ttl_s must be >= 0")
        if client_kwargs.get("logging_enable"):
            raise ValueError("logging_enable would log secret values (request and response bodies)")
        self.vault_url = vault_url.rstrip("/")
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._cache: dict[str, tuple[float, SecretStr]] = {}
        self._lock = threading.Lock()
        if client is None:
            from azure.keyvault.secrets import SecretClient

            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            client = SecretClient(self.vault_url, credential, logging_enable=False, **client_kwargs)
        self._client = client

    def __repr__(self) -> str:
        return f"KeyVaultSecrets({self.vault_url!r}, ttl_s={self.ttl_s:g})"

    def __enter__(self) -> KeyVaultSecrets:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def invalidate(self, name: str | None = None) -> None:
        """Forget the cached value of `name` (all names if None): the next `get` asks Key Vault."""
        with self._lock:
            if name is None:
                self._cache.clear()
            else:
                self._cache.pop(name.lower(), None)

    def get(self, name: str) -> str:
        _check_name(name)
        key = name.lower()  # Key Vault names are case-insensitive
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.ttl_s:
            return cached[1].get_secret_value()

        error: SecretError | None = None
        value: str | None = None
        try:
            value = self._client.get_secret(name).value
        except AzureError as exc:  # mapped to a message that names the secret, never the value
            error = self._error(name, "read", exc)
        # Raised outside the except block: no chained SDK exception (whose text we do not control).
        if error is not None:
            raise error
        if not value:
            raise SecretNotFoundError(f"secret '{name}' in Key Vault {self.vault_url} is empty")
        with self._lock:
            self._cache[key] = (now, SecretStr(value))
        log.debug("secret '%s' read from Key Vault %s", name, self.vault_url)
        return value

    def check_access(self) -> None:
        """Raises SecretError unless the vault answers this identity. It asks for a secret the app never
        writes: "not found" is an answer (the vault is reachable and the identity may read secrets)."""
        try:
            self._client.get_secret(ACCESS_PROBE)
        except AzureError as exc:
            error = self._error(ACCESS_PROBE, "read", exc)
            if not isinstance(error, SecretNotFoundError):
                raise error from None

    def set(self, name: str, value: str) -> None:
        _check_name(name)
        _check_value(name, value)
        error: SecretError | None = None
        try:
            self._client.set_secret(name, value)
        except AzureError as exc:  # mapped to a message that names the secret, never the value
            error = self._error(name, "write", exc)
        if error is not None:
            raise error
        with self._lock:
            self._cache[name.lower()] = (self._clock(), SecretStr(value))
        log.info("secret '%s' written to Key Vault %s", name, self.vault_url)

    def _error(self, name: str, action: str, exc: AzureError) -> SecretError:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
        )

        where = f"Key Vault {self.vault_url}"
        if isinstance(exc, ResourceNotFoundError):
            return SecretNotFoundError(f"secret '{name}' was not found in {where}")
        if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) is None:
            # The credential could not get a token (no managed identity, not logged in...). Its message
            # explains why and holds no secret; keep its first line.
            first_line = (str(exc).strip().splitlines() or [""])[0]
            return SecretError(f"cannot {action} secret '{name}': no token for {where}: {first_line[:300]}")
        if isinstance(exc, HttpResponseError) and exc.status_code is not None:
            code = getattr(getattr(exc, "error", None), "code", None)
            detail = f"HTTP {exc.status_code}" + (f" {code}" if code else "")
            hint = " (check the identity's access to the vault's secrets)" if exc.status_code in (401, 403) else ""
            return SecretError(f"cannot {action} secret '{name}' in {where}: {detail}{hint}")
        if isinstance(exc, ServiceRequestError):
            return SecretError(f"cannot {action} secret '{name}': {where} is unreachable ({type(exc).__name__})")
        return SecretError(f"cannot {action} secret '{name}' in {where}: {type(exc).__name__}")


def secret_provider(settings: AppSettings) -> SecretProvider:
    """Key Vault when ``KEY_VAULT_URL`` is set (cache TTL ``SECRET_CACHE_TTL_S``), else the environment."""
    if settings.key_vault_url:
        return KeyVaultSecrets(settings.key_vault_url, ttl_s=settings.secret_cache_ttl_s)
    return EnvSecrets()


@lru_cache(maxsize=1)
def get_secret_provider() -> SecretProvider:
    """The process-wide provider (one cache per worker process), from `get_settings()`."""
    from shared.platform.settings import get_settings

    return secret_provider(get_settings())
