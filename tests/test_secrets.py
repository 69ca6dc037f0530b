"""Secrets: the environment fallback, and Key Vault through the real SDK over HTTPS against a local stand-in."""

from __future__ import annotations

import logging
import socket
import traceback

import pytest

from localdev.keyvault_standin import DEFAULT_TENANT, KeyVaultStandin, serve
from shared.platform.errors import ConfigError
from shared.platform.secrets import (
    EnvSecrets,
    KeyVaultSecrets,
    SecretError,
    SecretNotFoundError,
    secret_provider,
    validate_secret_name,
)
from shared.platform.settings import AppSettings
from tests.fixtures.keyvault import StaticTokenCredential, release_client_connections

CANARY = "pk_canary_7f3e9a1c5b2d4e6f8a0b1c2d3e4f5a6b"
ROTATED = "pk_rotated_0a1b2c3d4e5f60718293a4b5c6d7e8f9"


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["a", "klaviyo-main", "Klaviyo-Prod-2", "0", "a" * 127])
def test_valid_secret_names(name):
    assert validate_secret_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 128, "klaviyo_main", "a.b", "a/b", "../x", "a b", "é", None, 5])
def test_invalid_secret_names(name):
    with pytest.raises(ValueError, match="1-127 characters of letters, digits and dashes"):
        validate_secret_name(name)


# ---------------------------------------------------------------------------------------------- environment


def test_env_default_and_per_secret_variable():
    env = {"KLAVIYO_API_KEY": "pk_default", "KLAVIYO_API_KEY__KLAVIYO_PROD": "pk_prod"}
    secrets = EnvSecrets(env)
    assert secrets.get("anything") == "pk_default"
    assert secrets.get("klaviyo-prod") == "pk_prod"
    assert secrets.get("Klaviyo-Prod") == "pk_prod"  # Key Vault names are case-insensitive
    assert EnvSecrets.variable_for("klaviyo-prod") == "KLAVIYO_API_KEY__KLAVIYO_PROD"


def test_env_missing_secret_names_the_variables():
    secrets = EnvSecrets({"KLAVIYO_API_KEY": "", "OTHER": CANARY})
    with pytest.raises(SecretNotFoundError) as exc:
        secrets.get("klaviyo-prod")
    assert str(exc.value) == (
        "secret 'klaviyo-prod' is not set: define KLAVIYO_API_KEY__KLAVIYO_PROD or KLAVIYO_API_KEY in the environment"
    )
    assert isinstance(exc.value, ConfigError)


def test_env_set_and_invalid_names():
    env: dict[str, str] = {}
    secrets = EnvSecrets(env)
    secrets.set("klaviyo-dev", CANARY)
    assert env == {"KLAVIYO_API_KEY__KLAVIYO_DEV": CANARY}
    assert secrets.get("klaviyo-dev") == CANARY
    assert CANARY not in repr(secrets)
    with pytest.raises(SecretError) as exc:
        secrets.get(CANARY)  # a key pasted where the name belongs is rejected without being echoed
    assert CANARY not in str(exc.value)
    with pytest.raises(SecretError, match="non-empty string"):
        secrets.set("klaviyo-dev", "")


def test_secret_provider_choice():
    assert isinstance(secret_provider(AppSettings(KEY_VAULT_URL="")), EnvSecrets)
    provider = secret_provider(AppSettings(KEY_VAULT_URL="https://kv-sync.vault.azure.net/", SECRET_CACHE_TTL_S=60))
    assert isinstance(provider, KeyVaultSecrets)
    with provider:
        assert (provider.vault_url, provider.ttl_s) == ("https://kv-sync.vault.azure.net", 60.0)
        assert repr(provider) == "KeyVaultSecrets('https://kv-sync.vault.azure.net', ttl_s=60)"


def test_network_trace_logging_is_refused():
    with pytest.raises(ValueError, match="logging_enable"):
        KeyVaultSecrets("https://x.vault.azure.net", credential=StaticTokenCredential(), logging_enable=True)


# ---------------------------------------------------------------------------------------------- Key Vault


def test_get_over_https_with_challenge(keyvault_tls):
    # A server of its own (a new address): the SDK has no cached challenge for it, so the first request
    # is the unauthenticated one, answered 401 + WWW-Authenticate.
    standin = KeyVaultStandin()
    standin.put("klaviyo-main", CANARY)
    credential = StaticTokenCredential()
    with serve(standin, keyvault_tls.cert_file) as url:
        provider = KeyVaultSecrets(
            url, credential=credential, connection_verify=keyvault_tls.ca_file, verify_challenge_resource=False
        )
        with provider:
            assert provider.get("klaviyo-main") == CANARY
        release_client_connections()
    assert standin.challenges == 1
    assert standin.calls_for("klaviyo-main") == 1
    assert credential.requests == [(("https://vault.azure.net/.default",), DEFAULT_TENANT)]


def test_cache_serves_repeated_reads_within_ttl(keyvault):
    keyvault.standin.put("klaviyo-main", CANARY)
    clock = FakeClock()
    with keyvault.provider(ttl_s=300, clock=clock) as provider:
        assert provider.get("klaviyo-main") == CANARY
        clock.now += 299.9
        assert provider.get("klaviyo-main") == CANARY
        assert provider.get("KLAVIYO-MAIN") == CANARY
        assert keyvault.standin.calls_for("klaviyo-main") == 1


def test_rotated_value_is_picked_up_after_ttl(keyvault):
    keyvault.standin.put("klaviyo-main", CANARY)
    clock = FakeClock()
    with keyvault.provider(ttl_s=300, clock=clock) as provider:
        assert provider.get("klaviyo-main") == CANARY
        keyvault.standin.put("klaviyo-main", ROTATED)  # rotated elsewhere
        clock.now += 299
        assert provider.get("klaviyo-main") == CANARY  # still cached
        clock.now += 1
        assert provider.get("klaviyo-main") == ROTATED
        assert keyvault.standin.calls_for("klaviyo-main") == 2


def test_zero_ttl_and_invalidate(keyvault):
    keyvault.standin.put("klaviyo-main", CANARY)
    with keyvault.provider(ttl_s=0, clock=FakeClock()) as provider:
        provider.get("klaviyo-main")
        provider.get("klaviyo-main")
        assert keyvault.standin.calls_for("klaviyo-main") == 2
    with keyvault.provider(ttl_s=300, clock=FakeClock()) as provider:
        provider.get("klaviyo-main")
        keyvault.standin.put("klaviyo-main", ROTATED)
        provider.invalidate("Klaviyo-Main")
        assert provider.get("klaviyo-main") == ROTATED
        provider.invalidate()
        provider.get("klaviyo-main")
        assert keyvault.standin.calls_for("klaviyo-main") == 5


def test_set(keyvault):
    clock = FakeClock()
    with keyvault.provider(clock=clock) as provider:
        provider.set("klaviyo-new", CANARY)
        assert keyvault.standin.value("klaviyo-new") == CANARY
        assert keyvault.standin.calls_for("klaviyo-new", "PUT") == 1
        assert provider.get("klaviyo-new") == CANARY  # this process wrote it: no re-read needed
        assert keyvault.standin.calls_for("klaviyo-new") == 0
        provider.set("klaviyo-new", ROTATED)
        assert provider.get("klaviyo-new") == ROTATED
        clock.now += 300
        assert provider.get("klaviyo-new") == ROTATED
        assert keyvault.standin.calls_for("klaviyo-new") == 1


def test_missing_secret_is_a_clear_one_line_error(keyvault):
    with keyvault.provider() as provider, pytest.raises(SecretNotFoundError) as exc:
        provider.get("klaviyo-missing")
    assert str(exc.value) == f"secret 'klaviyo-missing' was not found in Key Vault {keyvault.url}"
    assert exc.value.__cause__ is None and exc.value.__context__ is None
    assert isinstance(exc.value, ConfigError)


def test_disabled_secret(keyvault):
    keyvault.standin.put("klaviyo-old", CANARY, enabled=False)
    with keyvault.provider() as provider, pytest.raises(SecretError) as exc:
        provider.get("klaviyo-old")
    assert str(exc.value) == (
        f"cannot read secret 'klaviyo-old' in Key Vault {keyvault.url}: HTTP 403 Forbidden "
        "(check the identity's access to the vault's secrets)"
    )


def test_invalid_name_is_rejected_before_any_request(keyvault):
    with keyvault.provider() as provider:
        for bad in ("klaviyo_main", "a/b", "../secrets/x"):
            with pytest.raises(SecretError, match="invalid secret name"):
                provider.get(bad)
            with pytest.raises(SecretError, match="invalid secret name"):
                provider.set(bad, CANARY)
    assert keyvault.standin.calls == []


def test_unreachable_vault(keyvault_tls):
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        url = f"https://127.0.0.1:{closed.getsockname()[1]}"
        provider = KeyVaultSecrets(
            url,
            credential=StaticTokenCredential(),
            connection_verify=keyvault_tls.ca_file,
            verify_challenge_resource=False,
            retry_total=0,
        )
        with provider, pytest.raises(SecretError) as exc:
            provider.get("klaviyo-main")
    assert str(exc.value) == f"cannot read secret 'klaviyo-main': Key Vault {url} is unreachable (ServiceRequestError)"


def test_secret_value_never_in_logs_or_errors(keyvault, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="azure")
    # The app quiets this logger (shared.platform.runtime.quiet_sdk_loggers): on here, to show no value reaches it.
    caplog.set_level(logging.DEBUG, logger="azure.core.pipeline.policies.http_logging_policy")
    keyvault.standin.put("klaviyo-main", CANARY)
    clock = FakeClock()
    errors: list[BaseException] = []

    with keyvault.provider(clock=clock) as provider:
        assert provider.get("klaviyo-main") == CANARY
        assert provider.get("klaviyo-main") == CANARY
        provider.set("klaviyo-other", CANARY)
        clock.now += 1000
        assert provider.get("klaviyo-other") == CANARY
        assert CANARY not in repr(provider)
        assert CANARY not in repr(vars(provider))  # the cache holds SecretStr
        for call in (lambda: provider.get("klaviyo-missing"), lambda: provider.get(CANARY.replace("_", "-"))):
            with pytest.raises(SecretError) as exc:
                call()
            errors.append(exc.value)

    # A credential whose token the vault refuses: reads and writes fail with 401.
    with keyvault.provider(credential=StaticTokenCredential("wrong-token")) as refused:
        with pytest.raises(SecretError, match=r"HTTP 401") as exc:
            refused.set("klaviyo-third", CANARY)
        errors.append(exc.value)
        with pytest.raises(SecretError, match=r"HTTP 401") as exc:
            refused.get("klaviyo-main")
        errors.append(exc.value)

    # The SDK's HTTP logging was active and captured...
    assert any(r.name.startswith("azure.core.pipeline.policies.http_logging_policy") for r in caplog.records)
    assert "Request URL" in caplog.text
    # ...and the value appears nowhere: not in the log text, the records' arguments, or any error.
    assert CANARY not in caplog.text
    for record in caplog.records:
        assert CANARY not in record.getMessage()
        assert CANARY not in repr(record.args)
    assert len(errors) == 4
    for error in errors:
        assert CANARY not in exception_text(error)
        assert "\n" not in str(error)


def test_credential_failure_is_one_line(keyvault):
    from azure.core.exceptions import ClientAuthenticationError

    class NoIdentity:
        def get_token(self, *scopes, **kwargs):
            raise ClientAuthenticationError("ManagedIdentityCredential: no identity endpoint.\nDetails: ...")

    with keyvault.provider(credential=NoIdentity()) as provider, pytest.raises(SecretError) as exc:
        provider.get("klaviyo-main")
    assert str(exc.value) == (
        f"cannot read secret 'klaviyo-main': no token for Key Vault {keyvault.url}: "
        "ManagedIdentityCredential: no identity endpoint."
    )
