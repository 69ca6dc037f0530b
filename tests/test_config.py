"""Export configurations and connections: models, field errors, and the store on a folder and on Azurite."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shared.platform.config import (
    NAME_RULE,
    ConfigNotFoundError,
    ConfigStore,
    ConfigValidationError,
    Connection,
    ExportConfig,
    MirrorOptions,
    validation_errors,
)
from shared.platform.errors import ConfigError
from shared.platform.storage import BlobStore, LocalStore

ACCEPTED = {"accepted_by": "admin@example.com", "accepted_at": "2025-01-02T03:04:05+00:00"}


def export_data(name: str = "newsletter", **overrides) -> dict:
    data = {
        "name": name,
        "connection": "main",
        "list_id": "Y6nRLr",
        "source": {"kind": "cdm", "path_prefix": "CustomerInsights_abc/newsletter/"},
        "email_field": "PrimaryEmail",
        "field_mappings": {
            "FirstName": "first_name",
            "City": "location.city",
            "LoyaltyTier": "properties.loyalty_tier",
        },
    }
    data.update(overrides)
    return data


def connection(name: str = "main", **overrides) -> Connection:
    data = {"name": name, "display_name": "Main account", "secret_name": "klaviyo-main"}
    data.update(overrides)
    return Connection.model_validate(data)


def fields(exc: ValidationError | ConfigValidationError) -> set[str]:
    return {e["field"] for e in validation_errors(exc)}


@pytest.fixture(params=["local", "blob"])
def store(request, tmp_path) -> ConfigStore:
    if request.param == "local":
        return ConfigStore(LocalStore(tmp_path / "config"))
    return ConfigStore(BlobStore(request.getfixturevalue("container")))


@pytest.fixture
def cfg_store(store: ConfigStore) -> ConfigStore:
    """A store that already holds the connection 'main'."""
    store.put_connection(connection())
    return store


# ---------------------------------------------------------------------------------------------- models


def test_export_defaults_and_normalisation():
    cfg = ExportConfig.model_validate(export_data(source={"kind": "cdm", "path_prefix": "CustomerInsights_abc/nl"}))
    assert cfg.source.container == "segments"
    assert cfg.source.path_prefix == "CustomerInsights_abc/nl/"  # a CDM prefix is a folder
    assert (cfg.mode, cfg.full_resync, cfg.enabled, cfg.max_profiles) == ("upsert", False, True, None)
    assert cfg.subscribe is None and cfg.mirror is None

    csv = ExportConfig.model_validate(export_data(source={"kind": "csv", "path_prefix": "csv/newsletter"}))
    assert csv.source.path_prefix == "csv/newsletter"  # a CSV prefix stays a plain string prefix

    mirror = ExportConfig.model_validate(export_data(mode="mirror"))
    assert mirror.mirror == MirrorOptions(max_removal_share=0.30)


def test_subscribe_mode_needs_consent_options():
    with pytest.raises(ValidationError) as exc:
        ExportConfig.model_validate(export_data(mode="subscribe"))
    assert fields(exc.value) == {"subscribe"}

    cfg = ExportConfig.model_validate(
        export_data(
            mode="subscribe",
            subscribe={"consent_field": "EmailConsent", "consent_values": ["yes", "Y"], "consented_at_field": "At"},
        )
    )
    assert cfg.subscribe.consent_values == ["yes", "Y"]

    with pytest.raises(ValidationError) as exc:
        ExportConfig.model_validate(
            export_data(mode="subscribe", subscribe={"consent_field": "EmailConsent", "consent_values": []})
        )
    assert fields(exc.value) == {"subscribe.consent_values"}


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", "%2F", "x%2Fy", "", "A", "-x", "a b", "x\n", "é", "a" * 64])
def test_invalid_export_names_rejected(bad):
    with pytest.raises(ValidationError) as exc:
        ExportConfig.model_validate(export_data(bad))
    assert validation_errors(exc.value) == [{"field": "name", "message": NAME_RULE}]
    assert NAME_RULE.startswith("must be 1-63 characters: lowercase letters, digits, '-' or '_'")


@pytest.mark.parametrize("good", ["a", "newsletter", "vip_2025-q1", "0", "a" * 63])
def test_valid_export_names(good):
    assert ExportConfig.model_validate(export_data(good)).name == good


def test_invalid_mapping_targets_are_field_errors():
    mappings = {
        "FirstName": "first_name",
        "Nick": "nickname",
        "Email2": "email",
        "Street": "location.street",
        "Phone": "Phone_Number",
        "Blank": "properties.",
        "Spaced": "properties. x",
        "Lat": "location.latitude",
        "Tier": "properties.tier",
    }
    with pytest.raises(ValidationError) as exc:
        ExportConfig.model_validate(export_data(field_mappings=mappings))
    errors = validation_errors(exc.value)
    assert [e["field"] for e in errors] == [
        "field_mappings.Nick",
        "field_mappings.Email2",
        "field_mappings.Street",
        "field_mappings.Phone",
        "field_mappings.Blank",
        "field_mappings.Spaced",
    ]
    assert errors[0]["message"].startswith("'nickname' is not a Klaviyo profile attribute: use one of external_id")
    assert (
        "location.<address1|address2|city|country|ip|latitude|longitude|region|timezone|zip>" in (errors[0]["message"])
    )


def test_every_documented_target_is_accepted():
    targets = [
        "first_name", "last_name", "phone_number", "external_id", "organization", "title", "locale",
        *(f"location.{k}" for k in (
            "address1", "address2", "city", "country", "region", "zip", "timezone", "ip", "latitude", "longitude"
        )),
        "properties.Loyalty Tier", "properties.a.b",
    ]  # fmt: skip
    cfg = ExportConfig.model_validate(export_data(field_mappings={f"col{i}": t for i, t in enumerate(targets)}))
    assert list(cfg.field_mappings.values()) == targets


def test_two_columns_on_one_target_rejected():
    with pytest.raises(ValidationError) as exc:
        ExportConfig.model_validate(export_data(field_mappings={"A": "first_name", "B": "first_name"}))
    assert validation_errors(exc.value) == [
        {"field": "field_mappings", "message": "columns 'A' and 'B' are both mapped to 'first_name'"}
    ]


def test_other_field_errors():
    data = export_data(
        connection="Main/..",
        list_id="abc/def",
        source={"container": "Segments", "kind": "csv", "path_prefix": "../csv", "pattern": "a\\b", "entity": "X"},
        email_field=" ",
        mode="replace",
        max_profiles=0,
        typo_field=True,
    )
    del data["field_mappings"]
    with pytest.raises(ValidationError) as exc:
        ExportConfig.model_validate(data)
    assert fields(exc.value) == {
        "connection",
        "list_id",
        "source.container",
        "source.path_prefix",
        "source.pattern",
        "source.entity",
        "email_field",
        "mode",
        "max_profiles",
        "typo_field",
    }
    with pytest.raises(ValidationError) as exc:
        ExportConfig.model_validate({"name": "x"})
    assert fields(exc.value) == {"connection", "list_id", "source", "email_field"}


def test_assignment_is_validated():
    cfg = ExportConfig.model_validate(export_data())
    with pytest.raises(ValidationError):
        cfg.name = "../evil"
    with pytest.raises(ValidationError):
        cfg.field_mappings = {"X": "nope"}


def test_connection_model():
    conn = connection(display_name="")
    assert conn.display_name == "main"  # defaults to the name
    assert conn.allowed_roles == "admins"
    with pytest.raises(ConfigError, match=r"^connection 'main' has no recorded acceptance of the data privacy terms"):
        conn.require_accepted()

    accepted = conn.accept_privacy_terms("admin@example.com", datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert accepted.require_accepted().accepted_by == "admin@example.com"
    assert conn.privacy_acceptance is None  # the original is unchanged

    with pytest.raises(ValidationError) as exc:
        Connection.model_validate(
            {
                "name": "a/b",
                "secret_name": "klaviyo_main",
                "allowed_roles": "everyone",
                "privacy_acceptance": {"accepted_by": "x", "accepted_at": "2025-01-02T03:04:05"},  # naive
                "api_key": "pk_x",
            }
        )
    assert fields(exc.value) == {
        "name",
        "secret_name",
        "allowed_roles",
        "privacy_acceptance.accepted_at",
        "api_key",
    }


def test_rejected_input_is_not_echoed():
    # A key pasted where the secret *name* belongs: the error must not repeat it.
    key = "pk_live_0123456789abcdef0123456789abcdef"
    with pytest.raises(ValidationError) as exc:
        Connection.model_validate({"name": "main", "secret_name": key})
    assert key not in str(exc.value)
    assert key not in json.dumps(validation_errors(exc.value))
    assert validation_errors(exc.value) == [
        {
            "field": "secret_name",
            "message": "secret names must be 1-127 characters of letters, digits and dashes (Key Vault's rule)",
        }
    ]


# ---------------------------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("source", "path", "expected"),
    [
        ({"kind": "cdm", "path_prefix": "CI_1/nl/"}, "CI_1/nl/model.json", True),
        ({"kind": "cdm", "path_prefix": "CI_1/nl/"}, "CI_1/nl/2025-01-02T03.04.05Z/model.json", True),
        ({"kind": "cdm", "path_prefix": "CI_1/nl"}, "CI_1/nl2/model.json", False),  # folder, not string prefix
        ({"kind": "cdm", "path_prefix": "CI_1/nl/"}, "CI_1/nl/Segment/part-0001.csv", False),
        ({"kind": "cdm", "path_prefix": "CI_1/nl/"}, "CI_1/nl/model.json.tmp", False),
        ({"kind": "cdm", "path_prefix": "CI_1/nl/"}, "CI_1/other/model.json", False),
        ({"kind": "cdm", "path_prefix": "CI_1/nl/", "pattern": "2025*/model.json"}, "CI_1/nl/2025x/model.json", True),
        ({"kind": "cdm", "path_prefix": "CI_1/nl/", "pattern": "2025*/model.json"}, "CI_1/nl/2024x/model.json", False),
        ({"kind": "csv", "path_prefix": "csv/newsletter"}, "csv/newsletter-2025.csv", True),
        ({"kind": "csv", "path_prefix": "csv/newsletter"}, "csv/newsletter/day1/a.CSV", True),
        ({"kind": "csv", "path_prefix": "csv/newsletter"}, "csv/newsletter/a.txt", False),
        ({"kind": "csv", "path_prefix": "csv/newsletter"}, "csv/other.csv", False),
        ({"kind": "csv", "path_prefix": "csv/", "pattern": "vip-*.csv"}, "csv/drops/vip-1.csv", True),  # name
        ({"kind": "csv", "path_prefix": "csv/", "pattern": "vip-*.csv"}, "csv/drops/all-1.csv", False),
        ({"kind": "csv", "path_prefix": "csv/", "pattern": "drops/*.csv"}, "csv/drops/x.csv", True),  # path
        ({"kind": "csv", "path_prefix": "csv/", "pattern": "drops/*.csv"}, "csv/old/drops/x.csv", False),
    ],
)
def test_source_matching(source, path, expected):
    cfg = ExportConfig.model_validate(export_data(source=source))
    assert cfg.source.matches(path) is expected
    assert cfg.watches("segments", path) is expected
    assert cfg.watches("other", path) is False


# ---------------------------------------------------------------------------------------------- the store


def test_round_trip(cfg_store: ConfigStore):
    cfg = ExportConfig.model_validate(
        export_data(
            mode="mirror",
            mirror={"max_removal_share": 0.1},
            full_resync=True,
            max_profiles=5000,
            source={"container": "ci-exports", "kind": "cdm", "path_prefix": "CI_1/nl/", "entity": "Newsletter"},
        )
    )
    assert cfg_store.put_export(cfg) == cfg
    assert cfg_store.get_export("newsletter") == cfg
    raw = json.loads(cfg_store.store.read_bytes("exports/newsletter.json"))
    assert raw["source"]["entity"] == "Newsletter"

    conn = connection(allowed_roles="contributors", privacy_acceptance=ACCEPTED)
    cfg_store.put_connection(conn)
    got = cfg_store.get_connection("main")
    assert got == conn
    assert got.privacy_acceptance.accepted_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert cfg_store.list_connections() == [conn]
    assert cfg_store.list_connection_names() == ["main"]


def test_listing_and_deletion(cfg_store: ConfigStore):
    assert cfg_store.list_exports() == []
    for name in ("zeta", "alpha", "mid-1"):
        cfg_store.put_export(ExportConfig.model_validate(export_data(name)))
    cfg_store.store.write_bytes("exports/notes.txt", b"ignored")
    cfg_store.store.write_bytes("exports/nested/x.json", b"{}")
    assert [c.name for c in cfg_store.list_exports()] == ["alpha", "mid-1", "zeta"]
    assert cfg_store.list_export_names() == ["alpha", "mid-1", "zeta"]

    assert cfg_store.delete_export("mid-1") is True
    assert cfg_store.delete_export("mid-1") is False
    assert [c.name for c in cfg_store.list_exports()] == ["alpha", "zeta"]
    with pytest.raises(ConfigNotFoundError, match=r"^no export named 'mid-1'$"):
        cfg_store.get_export("mid-1")
    with pytest.raises(ConfigNotFoundError, match=r"^no connection named 'nope'$"):
        cfg_store.get_connection("nope")


def test_put_replaces(cfg_store: ConfigStore):
    cfg_store.put_export(ExportConfig.model_validate(export_data()))
    cfg_store.put_export(ExportConfig.model_validate(export_data(enabled=False, list_id="Other1")))
    got = cfg_store.get_export("newsletter")
    assert (got.enabled, got.list_id) == (False, "Other1")


def test_export_needs_existing_connection(store: ConfigStore):
    with pytest.raises(ConfigValidationError) as exc:
        store.put_export(ExportConfig.model_validate(export_data()))
    assert validation_errors(exc.value) == [{"field": "connection", "message": "no connection named 'main'"}]
    assert store.list_export_names() == []


def test_put_revalidates(cfg_store: ConfigStore):
    # model_copy(update=...) skips validation; the store validates again before writing.
    bad = ExportConfig.model_validate(export_data()).model_copy(update={"field_mappings": {"X": "bogus"}})
    with pytest.raises(ConfigValidationError) as exc:
        cfg_store.put_export(bad)
    assert fields(exc.value) == {"field_mappings.X"}
    assert str(exc.value).startswith("export 'newsletter' is invalid: field_mappings.X: 'bogus' is not a Klaviyo")
    assert cfg_store.list_export_names() == []


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", "%2F", "../connections/main", "", "X"])
def test_store_rejects_unsafe_names(cfg_store: ConfigStore, bad):
    for call in (cfg_store.get_export, cfg_store.delete_export, cfg_store.get_connection):
        with pytest.raises(ConfigValidationError) as exc:
            call(bad)
        assert fields(exc.value) == {"name"}
    assert cfg_store.get_connection("main").name == "main"  # nothing was touched


def test_broken_blob_is_reported_and_skipped_in_listings(cfg_store: ConfigStore, caplog):
    cfg_store.put_export(ExportConfig.model_validate(export_data("good")))
    cfg_store.store.write_bytes("exports/broken.json", json.dumps(export_data("broken", list_id="")).encode())
    cfg_store.store.write_bytes("exports/notjson.json", b"{nope")
    cfg_store.store.write_bytes("exports/renamed.json", json.dumps(export_data("other")).encode())

    assert [c.name for c in cfg_store.list_exports()] == ["good"]
    assert "skipping export configuration exports/broken.json" in caplog.text

    with pytest.raises(ConfigValidationError) as exc:
        cfg_store.get_export("broken")
    assert fields(exc.value) == {"list_id"}
    with pytest.raises(ConfigValidationError) as exc:
        cfg_store.get_export("notjson")
    assert fields(exc.value) == {""}
    with pytest.raises(ConfigValidationError, match="is 'other' but the blob is named 'renamed'"):
        cfg_store.get_export("renamed")


def test_exports_watching(cfg_store: ConfigStore):
    def put(name, source, **kw):
        cfg_store.put_export(ExportConfig.model_validate(export_data(name, source=source, **kw)))

    put("cdm-nl", {"kind": "cdm", "path_prefix": "CustomerInsights_1/newsletter"})
    put("cdm-nl-copy", {"kind": "cdm", "path_prefix": "CustomerInsights_1/newsletter/"}, list_id="Other1")
    put("cdm-off", {"kind": "cdm", "path_prefix": "CustomerInsights_1/newsletter/"}, enabled=False)
    put("cdm-other-container", {"container": "ci-2", "kind": "cdm", "path_prefix": "CustomerInsights_1/newsletter/"})
    put("csv-vip", {"kind": "csv", "path_prefix": "csv/vip/"})
    put("csv-vip-pattern", {"kind": "csv", "path_prefix": "csv/", "pattern": "vip-*.csv"})

    def watching(container, path):
        return [c.name for c in cfg_store.exports_watching(container, path)]

    model = "CustomerInsights_1/newsletter/2025-01-02/model.json"
    assert watching("segments", model) == ["cdm-nl", "cdm-nl-copy"]
    assert watching("segments", "/" + model) == ["cdm-nl", "cdm-nl-copy"]
    assert watching("ci-2", model) == ["cdm-other-container"]
    assert watching("segments", "CustomerInsights_1/newsletter/2025-01-02/Newsletter/part-1.csv") == []
    assert watching("segments", "CustomerInsights_1/newsletters/model.json") == []
    assert watching("segments", "csv/vip/2025-01-02.csv") == ["csv-vip"]
    assert watching("segments", "csv/vip/vip-2025.csv") == ["csv-vip", "csv-vip-pattern"]
    assert watching("segments", "csv/drops/vip-2025.csv") == ["csv-vip-pattern"]
    assert watching("segments", "csv/vip/readme.txt") == []
    assert watching("other", "csv/vip/a.csv") == []
