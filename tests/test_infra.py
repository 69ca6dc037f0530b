"""The Bicep in infra/ and the deployment workflow, checked the way a reviewer would.

Every ``.bicep`` file is parsed with ``pycep`` (the parser checkov uses for its Bicep scan), run from
checkov's own virtualenv (``.venv-checkov``, built by ``make checkov``) in a subprocess, so the tests see
exactly the tree checkov scans and the app's virtualenv needs neither pycep nor PyYAML. The same
subprocess loads ``.github/workflows/*.yml`` with PyYAML.

pycep renders a Bicep string literal and an identifier alike (``'python'`` and ``pythonVersion`` both
become plain strings), so expressions are compared with what the source says, and parameters are
followed through module calls by name.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
PARAMS = INFRA / "main.bicepparam"
WORKFLOWS = ROOT / ".github" / "workflows"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
WORKFLOW_FILES = sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])

# Built-in role definition ids (Azure docs, "Azure built-in roles").
ROLE = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Blob Data Reader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
BROAD_ROLES = {
    "Owner": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "User Access Administrator": "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    "Storage Account Contributor": "17d1049b-9a84-46fb-8f53-869881c3d3ab",
    "Key Vault Administrator": "00482a5a-887f-4fb3-b363-3b7fe8e74483",
}

# What the app reads (fixed by the app), and what Flex Consumption refuses or ignores.
APP_SETTINGS = {
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "SEGMENTS_STORAGE__blobServiceUri",
    "SEGMENTS_STORAGE__queueServiceUri",
    "SEGMENTS_STORAGE__credential",
    "SEGMENTS_STORAGE__clientId",
    "SEGMENTS_CONTAINER",
    "CSV_PREFIX",
    "CONFIG_CONTAINER",
    "WORKSPACE_CONTAINER",
    "REPORTS_CONTAINER",
    "KEY_VAULT_URL",
    "SECRET_CACHE_TTL_S",
    "AZURE_CLIENT_ID",
    "DURABLE_TASK_HUB",
    "PUSH_WAVE_WIDTH",
    "KLAVIYO_BASE_URL",
    "RUN_RETENTION_DAYS",
    "AUTH_REQUIRE_PRINCIPAL",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}
FLEX_FORBIDDEN_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "AzureWebJobsStorage",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
}

_PARSER = r"""
import json, sys
from pathlib import Path

import yaml
from pycep import BicepParser

request = json.load(sys.stdin)
out = {"bicep": {}, "yaml": {}}
parser = BicepParser()
for path in request["bicep"]:
    try:
        out["bicep"][path] = {"tree": parser.parse(text=Path(path).read_text(encoding="utf-8"))}
    except Exception as exc:  # report every file's failure, not only the first
        out["bicep"][path] = {"error": f"{type(exc).__name__}: {exc}"}
for path in request["yaml"]:
    try:
        out["yaml"][path] = {"tree": yaml.safe_load(Path(path).read_text(encoding="utf-8"))}
    except yaml.YAMLError as exc:
        out["yaml"][path] = {"error": str(exc)}
json.dump(out, sys.stdout, default=str)
"""


def _checkov_python() -> Path:
    bindir = "Scripts" if sys.platform == "win32" else "bin"
    return Path(os.environ.get("CHECKOV_PYTHON", ROOT / ".venv-checkov" / bindir / "python"))


@pytest.fixture(scope="session")
def parsed() -> dict[str, dict[str, dict]]:
    python = _checkov_python()
    assert python.exists(), f"{python} is missing: run `make checkov` (it builds .venv-checkov) first"
    request = {"bicep": [str(p) for p in BICEP_FILES], "yaml": [str(p) for p in WORKFLOW_FILES]}
    proc = subprocess.run(
        [str(python), "-c", _PARSER],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def tree(parsed: dict, rel: str) -> dict:
    entry = parsed["bicep"][str(INFRA / rel)]
    assert "tree" in entry, f"{rel} did not parse: {entry.get('error')}"
    return entry["tree"]


# ---------------------------------------------------------------------------------------- helpers


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def render(expr: Any) -> Any:
    """A property access chain as Bicep writes it (``storage.properties.primaryEndpoints.blob``)."""
    if isinstance(expr, dict) and expr.get("operator", {}).get("type") == "property_accessor":
        ops = expr["operator"]["operands"]
        return f"{render(ops['operand_1'])}.{render(ops['operand_2'])}"
    return expr


def body(resource: dict) -> tuple[dict, Any, dict | None]:
    """(properties, condition, loop) of a resource or module; pycep nests them for `if` and `for`."""
    config = resource["config"]
    if "condition" in config or "loop_type" in config:
        return config["config"], config.get("condition"), config.get("loop_type")
    return config, None, None


def resources(t: dict, rtype: str) -> dict[str, dict]:
    return {name: res for name, res in t.get("resources", {}).items() if res["type"] == rtype}


def only(t: dict, rtype: str) -> tuple[str, dict]:
    found = resources(t, rtype)
    assert len(found) == 1, f"expected one {rtype}, found {sorted(found)}"
    name, res = next(iter(found.items()))
    return name, body(res)[0]


def var(t: dict, name: str) -> Any:
    return t["variables"][name]["value"]


def default(t: dict, name: str) -> Any:
    return t["parameters"][name]["default"]


def module_call(main: dict, path: str) -> dict:
    calls = [m for m in main["modules"].values() if m["detail"]["path"] == path]
    assert len(calls) == 1, f"expected one call of {path}, found {len(calls)}"
    return calls[0]


def main_value(main: dict, expr: Any) -> Any:
    """A main.bicep expression that is a parameter or variable name, replaced by its default/value."""
    if isinstance(expr, str) and expr in main["parameters"]:
        return main["parameters"][expr]["default"]
    if isinstance(expr, str) and expr in main.get("variables", {}):
        return main["variables"][expr]["value"]
    return expr


def app_settings(parsed: dict) -> dict[str, Any]:
    _, site = only(tree(parsed, "modules/functionapp.bicep"), "Microsoft.Web/sites")
    settings = site["properties"]["siteConfig"]["appSettings"]
    names = [s["name"] for s in settings]
    assert len(names) == len(set(names)), "an app setting is declared twice"
    return {s["name"]: s["value"] for s in settings}


def bicepparam() -> dict[str, str]:
    values = {}
    for line in PARAMS.read_text(encoding="utf-8").splitlines():
        match = re.match(r"param\s+(\w+)\s*=\s*(.+)$", line.strip())
        if match:
            values[match.group(1)] = match.group(2).strip()
    return values


def role_assignments(t: dict) -> dict[str, tuple[str, frozenset[str], Any]]:
    """symbol -> (scope, role ids, condition) for each role assignment; role ids resolved through
    variables, loops over a variable list and conditionals; a parameter stays ``param:<name>``."""

    def resolve(name: Any) -> set[str]:
        if isinstance(name, str) and name in t.get("variables", {}):
            value = var(t, name)
            if isinstance(value, dict) and value.get("operator", {}).get("type") == "conditional":
                ops = value["operator"]["operands"]
                return resolve(ops["true_value"]) | resolve(ops["false_value"])
            return resolve(value)
        if isinstance(name, str) and name in t.get("parameters", {}):
            return {f"param:{name}"}
        assert isinstance(name, str) and re.fullmatch(r"[0-9a-f-]{36}", name), f"unresolved role {name!r}"
        return {name}

    out = {}
    for symbol, res in resources(t, "Microsoft.Authorization/roleAssignments").items():
        props, condition, loop = body(res)
        func = props["properties"]["roleDefinitionId"]["function"]
        assert func["type"] == "subscription_resource_id", f"{symbol}: role not a subscriptionResourceId()"
        assert func["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        role = func["parameters"]["resource_name_1"]
        if loop and role == loop["detail"]["item_name"]:
            ids = set().union(*(resolve(n) for n in var(t, loop["detail"]["array_name"])))
        else:
            ids = resolve(role)
        out[symbol] = (props["scope"], frozenset(ids), condition)
    return out


# ----------------------------------------------------------------------------------- parsing, files


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses(parsed: dict, path: Path) -> None:
    t = tree(parsed, str(path.relative_to(INFRA)))
    assert t.get("resources") or t.get("modules"), f"{path.name} declares nothing"


def test_infra_has_the_expected_files() -> None:
    names = {str(p.relative_to(INFRA)) for p in BICEP_FILES}
    assert {"main.bicep", "modules/functionapp.bicep", "modules/keyvault.bicep"} <= names
    assert len(names) >= 8
    assert PARAMS.exists()


def test_main_calls_every_module_and_only_local_ones(parsed: dict) -> None:
    main = tree(parsed, "main.bicep")
    assert main["globals"]["scope"]["value"] == "resourceGroup"
    used = set()
    for symbol, module in main["modules"].items():
        assert module["type"] == "local", f"{symbol} is not a local module (no registry modules)"
        assert (INFRA / module["detail"]["path"]).is_file(), f"{symbol}: {module['detail']['path']} missing"
        used.add(module["detail"]["path"])
    on_disk = {str(p.relative_to(INFRA)) for p in INFRA.glob("modules/*.bicep")}
    assert used == on_disk, f"modules not called by main.bicep: {sorted(on_disk - used)}"
    for path in BICEP_FILES:
        assert not re.search(r"['\"]br[:/]", path.read_text(encoding="utf-8")), f"registry module in {path}"


def test_module_calls_pass_only_declared_parameters(parsed: dict) -> None:
    main = tree(parsed, "main.bicep")
    for symbol, module in main["modules"].items():
        target = tree(parsed, module["detail"]["path"])
        declared = set(target.get("parameters", {}))
        passed = set(body(module)[0]["params"])
        assert passed <= declared, f"{symbol} passes undeclared {sorted(passed - declared)}"
        required = {n for n, p in target.get("parameters", {}).items() if p["default"] is None}
        assert required <= passed, f"{symbol} misses required {sorted(required - passed)}"


def test_bicepparam_uses_main_and_sets_only_its_parameters(parsed: dict) -> None:
    text = PARAMS.read_text(encoding="utf-8")
    statements = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("//")]
    assert statements[0].strip() == "using './main.bicep'"
    main = tree(parsed, "main.bicep")
    values = bicepparam()
    assert set(values) <= set(main["parameters"]), sorted(set(values) - set(main["parameters"]))
    required = {n for n, p in main["parameters"].items() if p["default"] is None}
    assert required <= set(values), f"main.bicepparam misses {sorted(required - set(values))}"
    # The first deployment must not try to read the blobs_extension key.
    assert values["deployEventSubscription"] == "bool(readEnvironmentVariable('DEPLOY_EVENT_SUBSCRIPTION', 'false'))"


def test_checkov_skips_carry_a_reason() -> None:
    """Skips are Bicep comments (a bare ``#`` line is a compile error for Bicep, though checkov would read
    it) inside the resource they apply to, each with a reason."""
    skips = 0
    for path in BICEP_FILES:
        for line in path.read_text(encoding="utf-8").splitlines():
            stripped = line.strip()
            assert not stripped.startswith("#") or stripped.startswith("#disable-next-line"), (
                f"{path.name}: not valid Bicep: {stripped[:60]}"
            )
            if "checkov:skip" in line:
                skips += 1
                match = re.fullmatch(r"\s*// checkov:skip=CKV_[A-Z0-9_]+:(.+)", line)
                assert match, f"{path.name}: malformed skip: {stripped}"
                assert len(match.group(1).split()) >= 10, f"{path.name}: skip without a real reason: {line}"
    assert skips > 0


# -------------------------------------------------------------------------------------- function app


def test_function_app_runs_on_flex_consumption_with_python_311(parsed: dict) -> None:
    t = tree(parsed, "modules/functionapp.bicep")
    _, plan = only(t, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True  # Linux
    _, site = only(t, "Microsoft.Web/sites")
    assert site["kind"] == "functionapp,linux"
    assert render(site["properties"]["serverFarmId"]) == "plan.id"
    runtime = site["properties"]["functionAppConfig"]["runtime"]
    assert runtime["name"] == "python"
    assert runtime["version"] == "pythonVersion" and default(t, "pythonVersion") == "3.11"
    assert site["properties"]["httpsOnly"] is True
    assert site["properties"]["siteConfig"]["minTlsVersion"] == "1.2"
    # Resource Manager rejects ftpsState on Flex sites (error 51021): FTP is off through the policy below.
    assert "ftpsState" not in site["properties"]["siteConfig"]
    policies = resources(t, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {body(p)[0]["name"]: body(p)[0]["properties"]["allow"] for p in policies.values()} == {
        "ftp": False,
        "scm": False,
    }


def test_durable_group_always_ready_instances_are_a_parameter_off_by_default(parsed: dict) -> None:
    t = tree(parsed, "modules/functionapp.bicep")
    _, site = only(t, "Microsoft.Web/sites")
    scale = site["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    ops = var(t, scale["alwaysReady"])["operator"]
    assert ops["type"] == "conditional"
    assert ops["operands"]["true_value"] == [{"name": "durable", "instanceCount": "durableAlwaysReadyInstances"}]
    assert ops["operands"]["false_value"] == []
    assert default(t, "durableAlwaysReadyInstances") == 0
    main = tree(parsed, "main.bicep")
    assert default(main, "durableAlwaysReadyInstances") == 0
    args = body(module_call(main, "modules/functionapp.bicep"))[0]["params"]
    assert args["durableAlwaysReadyInstances"] == "durableAlwaysReadyInstances"
    assert bicepparam()["durableAlwaysReadyInstances"] == (
        "int(readEnvironmentVariable('CIKS_DURABLE_ALWAYS_READY', '0'))"
    )


def _timespan_s(text: str) -> int:
    hours, minutes, seconds = (int(x) for x in text.split(":"))
    return hours * 3600 + minutes * 60 + seconds


def test_durable_queues_are_polled_at_least_every_ten_seconds() -> None:
    """Flex Consumption: Microsoft recommends maxQueuePollingInterval of 10 s or less (default 30 s), or
    timers and job polls wait up to half a minute after an idle spell."""
    host = json.loads((ROOT / "host.json").read_text(encoding="utf-8"))
    provider = host["extensions"]["durableTask"]["storageProvider"]
    assert provider["type"] == "AzureStorage"
    assert 0 < _timespan_s(provider["maxQueuePollingInterval"]) <= 10


def test_function_app_runs_as_the_user_assigned_identity(parsed: dict) -> None:
    t = tree(parsed, "modules/functionapp.bicep")
    _, site = only(t, "Microsoft.Web/sites")
    assert site["identity"]["type"] == "UserAssigned"
    assert list(site["identity"]["userAssignedIdentities"]) == ["'${identityId}'"]
    main = tree(parsed, "main.bicep")
    params = body(module_call(main, "modules/functionapp.bicep"))[0]["params"]
    assert render(params["identityId"]) == "identity.outputs.id"
    assert render(params["identityClientId"]) == "identity.outputs.clientId"


def test_deployment_storage_uses_the_user_assigned_identity(parsed: dict) -> None:
    t = tree(parsed, "modules/functionapp.bicep")
    _, site = only(t, "Microsoft.Web/sites")
    storage = site["properties"]["functionAppConfig"]["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["value"] == "${storage.properties.primaryEndpoints.blob}${deploymentContainerName}"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    # The container exists: main gives the same name to the app storage module, which creates it.
    main = tree(parsed, "main.bicep")
    app_params = body(module_call(main, "modules/functionapp.bicep"))[0]["params"]
    storage_params = body(module_call(main, "modules/app-storage.bicep"))[0]["params"]
    assert app_params["deploymentContainerName"] == storage_params["deploymentContainerName"]
    assert "deploymentContainerName" in var(tree(parsed, "modules/app-storage.bicep"), "dataContainerNames")
    scale = site["properties"]["functionAppConfig"]["scaleAndConcurrency"]
    assert set(scale) == {"alwaysReady", "maximumInstanceCount", "instanceMemoryMB"}


def test_app_settings_are_exactly_what_the_app_reads(parsed: dict) -> None:
    settings = app_settings(parsed)
    assert set(settings) == APP_SETTINGS
    assert not set(settings) & FLEX_FORBIDDEN_SETTINGS


def test_storage_connections_are_identity_based(parsed: dict) -> None:
    settings = app_settings(parsed)
    for service in ("blob", "queue", "table"):
        uri = render(settings[f"AzureWebJobsStorage__{service}ServiceUri"])
        assert uri == f"storage.properties.primaryEndpoints.{service}"
    for prefix in ("AzureWebJobsStorage", "SEGMENTS_STORAGE"):
        assert settings[f"{prefix}__credential"] == "managedidentity"
        assert settings[f"{prefix}__clientId"] == "identityClientId"
    assert settings["SEGMENTS_STORAGE__blobServiceUri"] == "segmentsBlobServiceUri"
    assert settings["SEGMENTS_STORAGE__queueServiceUri"] == "segmentsQueueServiceUri"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId"
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "ClientId=${identityClientId};Authorization=AAD"
    # `storage` is the app account, and the segments URIs come from the segments account.
    t = tree(parsed, "modules/functionapp.bicep")
    assert t["resources"]["storage"]["existing"] is True
    assert t["resources"]["storage"]["config"]["name"] == "storageAccountName"
    main = tree(parsed, "main.bicep")
    params = body(module_call(main, "modules/functionapp.bicep"))[0]["params"]
    assert render(params["storageAccountName"]) == "appStorage.outputs.name"
    assert render(params["segmentsBlobServiceUri"]) == "segmentsAccess.outputs.blobEndpoint"
    assert render(params["segmentsQueueServiceUri"]) == "segmentsAccess.outputs.queueEndpoint"
    assert render(params["keyVaultUri"]) == "keyVault.outputs.uri"
    assert render(params["applicationInsightsConnectionString"]) == "monitoring.outputs.connectionString"


def test_app_settings_hold_no_secret(parsed: dict) -> None:
    settings = app_settings(parsed)
    dumped = json.dumps(settings)
    assert "list_func" not in dumped, "an app setting calls a list*() function (a key)"
    for marker in ("AccountKey", "SharedAccessSignature", "sig=", "@Microsoft.KeyVault", "InstrumentationKey"):
        assert marker not in dumped, marker
    t = tree(parsed, "modules/functionapp.bicep")
    assert not any(p["decorators"] and p["decorators"][0]["type"] == "secure" for p in t["parameters"].values())


def test_app_setting_defaults_match_the_app(parsed: dict) -> None:
    """Setting -> functionapp parameter -> main.bicep argument -> its default, and main.bicepparam."""
    settings = app_settings(parsed)
    main = tree(parsed, "main.bicep")
    args = body(module_call(main, "modules/functionapp.bicep"))[0]["params"]
    values = bicepparam()
    expected = {
        "SEGMENTS_CONTAINER": "segments",
        "CSV_PREFIX": "csv/",
        "CONFIG_CONTAINER": "export-config",
        "WORKSPACE_CONTAINER": "run-workspace",
        "REPORTS_CONTAINER": "run-reports",
        "PUSH_WAVE_WIDTH": 8,
        "KLAVIYO_BASE_URL": "https://a.klaviyo.com",
        "SECRET_CACHE_TTL_S": 300,
        "DURABLE_TASK_HUB": "CiKlaviyoSync",
        "RUN_RETENTION_DAYS": 90,
    }
    # The same defaults as the app's own settings model, where it has the setting.
    from shared.platform.settings import AppSettings

    app_defaults = {f.alias: f.default for f in AppSettings.model_fields.values() if f.alias}
    for setting, want in expected.items():
        if setting in app_defaults:
            assert app_defaults[setting] == want, f"{setting}: the app's default is {app_defaults[setting]!r}"
    for setting, want in expected.items():
        value = settings[setting]
        if isinstance(value, dict):  # string(x)
            value = value["function"]["parameters"]["value_to_convert"]
        arg = args[value]
        assert main_value(main, arg) == want, setting
        if arg in values:
            literal = values[arg].strip("'")
            assert literal == str(want), f"main.bicepparam sets {arg} = {values[arg]}"


def test_a_missing_principal_is_refused_where_app_service_authentication_is_configured(parsed: dict) -> None:
    """AUTH_REQUIRE_PRINCIPAL follows a parameter (off by default: function keys only, as before)."""
    value = app_settings(parsed)["AUTH_REQUIRE_PRINCIPAL"]
    assert value["function"]["parameters"]["value_to_convert"] == "requirePrincipal"
    main = tree(parsed, "main.bicep")
    arg = body(module_call(main, "modules/functionapp.bicep"))[0]["params"]["requirePrincipal"]
    assert main_value(main, arg) is False
    assert "CIKS_REQUIRE_PRINCIPAL" in bicepparam()["requirePrincipal"]


def test_task_hub_name_is_valid() -> None:
    hub = bicepparam()["durableTaskHubName"].strip("'")
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]{2,44}", hub)


# ------------------------------------------------------------------------------------------- storage


def test_storage_accounts_are_hardened(parsed: dict) -> None:
    for rel in ("modules/app-storage.bicep", "modules/segments-storage.bicep"):
        t = tree(parsed, rel)
        _, account = only(t, "Microsoft.Storage/storageAccounts")
        props = account["properties"]
        assert props["minimumTlsVersion"] == "TLS1_2", rel
        assert props["allowBlobPublicAccess"] is False, rel
        assert props["supportsHttpsTrafficOnly"] is True, rel
        assert props["allowCrossTenantReplication"] is False, rel
    _, app = only(tree(parsed, "modules/app-storage.bicep"), "Microsoft.Storage/storageAccounts")
    assert app["properties"]["allowSharedKeyAccess"] is False
    segments = tree(parsed, "modules/segments-storage.bicep")
    _, seg = only(segments, "Microsoft.Storage/storageAccounts")
    assert seg["properties"]["allowSharedKeyAccess"] == "allowSharedKeyAccess"
    assert default(segments, "allowSharedKeyAccess") is False
    assert default(tree(parsed, "main.bicep"), "segmentsAllowSharedKeyAccess") is False


def test_lifecycle_rules_delete_leftover_workspaces_and_old_reports_only(parsed: dict) -> None:
    """Workspaces (runs/<export>/<run id>/ in the workspace container) a few days after their last write
    whatever became of the run; reports and rejects files (runs/... in the reports container) after the
    retention, 90 days by default. The sync state (state/) and turns (locks/) are never matched."""
    t = tree(parsed, "modules/app-storage.bicep")
    _, policy = only(t, "Microsoft.Storage/storageAccounts/managementPolicies")
    assert policy["name"] == "default" and render(policy["parent"]) == "account"
    rules = {rule["name"]: rule for rule in policy["properties"]["policy"]["rules"]}
    assert set(rules) == {"delete-run-workspaces", "delete-old-run-reports"}
    expected = {
        "delete-run-workspaces": ("${workspaceContainerName}/runs/", "workspaceRetentionDays"),
        "delete-old-run-reports": ("${reportsContainerName}/runs/", "runRetentionDays"),
    }
    for name, (prefix, days) in expected.items():
        rule = rules[name]
        assert rule["enabled"] is True and rule["type"] == "Lifecycle"
        assert rule["definition"]["filters"] == {"blobTypes": ["blockBlob"], "prefixMatch": [prefix]}
        assert rule["definition"]["actions"] == {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": days}}}
    assert default(t, "workspaceRetentionDays") == 3
    assert default(t, "runRetentionDays") == 90
    main = tree(parsed, "main.bicep")
    assert (default(main, "workspaceRetentionDays"), default(main, "runRetentionDays")) == (3, 90)
    args = body(module_call(main, "modules/app-storage.bicep"))[0]["params"]
    assert (args["workspaceRetentionDays"], args["runRetentionDays"]) == ("workspaceRetentionDays", "runRetentionDays")
    # The same retention reaches the app, whose purge timer removes finished runs' durable history.
    app_args = body(module_call(main, "modules/functionapp.bicep"))[0]["params"]
    assert app_args["runRetentionDays"] == "runRetentionDays"
    retention = app_settings(parsed)["RUN_RETENTION_DAYS"]["function"]
    assert retention == {"type": "string", "parameters": {"value_to_convert": "runRetentionDays"}}
    # The prefixes are where the app puts them: a run's workspace and report under runs/, its sync state not.
    run = _a_run()
    assert run["workspace"]["prefix"].startswith("runs/") and run["reports"]["name"].startswith("runs/")
    assert not run["state"]["prefix"].startswith("runs/")


def _a_run() -> dict:
    from datetime import UTC, datetime

    from shared.platform.config import Connection, ExportConfig, PrivacyAcceptance, SourceConfig
    from shared.platform.settings import AppSettings
    from shared.runs import build_run

    cfg = ExportConfig(
        name="weekly",
        connection="shop",
        list_id="L1",
        source=SourceConfig(kind="cdm", path_prefix="ci/"),
        email_field="Email",
    )
    accepted = PrivacyAcceptance(accepted_by="test", accepted_at=datetime.now(UTC))
    conn = Connection(name="shop", secret_name="klaviyo-shop", privacy_acceptance=accepted)
    return build_run(cfg, conn, "ci/model.json", AppSettings(), "weekly.abc")


def test_blob_soft_delete_is_off_on_the_export_account_with_the_reason(parsed: dict) -> None:
    _, seg = only(tree(parsed, "modules/segments-storage.bicep"), "Microsoft.Storage/storageAccounts/blobServices")
    assert seg["properties"]["deleteRetentionPolicy"]["enabled"] is False
    text = (INFRA / "modules/segments-storage.bicep").read_text(encoding="utf-8")
    comment = text[: text.index("deleteRetentionPolicy")].rsplit("properties: {", 1)[1]
    assert "Customer Insights" in comment and "soft delete" in comment
    _, app = only(tree(parsed, "modules/app-storage.bicep"), "Microsoft.Storage/storageAccounts/blobServices")
    assert app["properties"]["deleteRetentionPolicy"]["enabled"] is True


def test_containers_are_private_and_complete(parsed: dict) -> None:
    for path in BICEP_FILES:
        t = tree(parsed, str(path.relative_to(INFRA)))
        for symbol, res in resources(t, "Microsoft.Storage/storageAccounts/blobServices/containers").items():
            if not res["existing"]:
                assert body(res)[0]["properties"]["publicAccess"] == "None", f"{path.name}:{symbol}"
    main = tree(parsed, "main.bicep")
    args = body(module_call(main, "modules/app-storage.bicep"))[0]["params"]
    names = {key: main_value(main, args[key]) for key in args if key.endswith("ContainerName")}
    assert names["configContainerName"] == "export-config"
    assert names["workspaceContainerName"] == "run-workspace"
    assert names["reportsContainerName"] == "run-reports"
    assert names["deploymentContainerName"].startswith("app-package-")
    assert names["deadLetterContainerName"] == "eventgrid-deadletter"
    app_storage = tree(parsed, "modules/app-storage.bicep")
    assert sorted(var(app_storage, "dataContainerNames")) == sorted(names)
    seg_access = tree(parsed, "modules/segments-access.bicep")
    _, container = only(seg_access, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert container["name"] == "containerName"
    args = body(module_call(main, "modules/segments-access.bicep"))[0]["params"]
    assert main_value(main, args["containerName"]) == "segments"


def test_existing_segments_account_is_referenced_not_redeclared(parsed: dict) -> None:
    main = tree(parsed, "main.bicep")
    new = body(module_call(main, "modules/segments-storage.bicep"))
    assert new[1] == "createSegmentsStorage"
    access = tree(parsed, "modules/segments-access.bicep")
    accounts = resources(access, "Microsoft.Storage/storageAccounts")
    assert [a["existing"] for a in accounts.values()] == [True]
    _, queue = only(access, "Microsoft.Storage/storageAccounts/queueServices/queues")
    assert queue["name"] == "poisonQueueName"
    assert var(access, "poisonQueueName") == "webjobs-blobtrigger-poison"


# -------------------------------------------------------------------------------- roles and Key Vault


def test_role_assignments_use_the_expected_built_in_roles(parsed: dict) -> None:
    r = ROLE
    expected = {
        "modules/app-storage.bicep": {
            "appRoles": (
                "account",
                {
                    r["Storage Blob Data Owner"],
                    r["Storage Queue Data Contributor"],
                    r["Storage Table Data Contributor"],
                },
            ),
        },
        "modules/segments-access.bicep": {
            "appReadsSegments": ("container", {r["Storage Blob Data Reader"]}),
            "appWritesPoisonQueue": ("poisonQueue", {r["Storage Queue Data Contributor"]}),
            "customerInsightsWritesSegments": ("container", {r["Storage Blob Data Contributor"]}),
        },
        "modules/keyvault.bicep": {
            "appSecretsRole": ("vault", {r["Key Vault Secrets Officer"], r["Key Vault Secrets User"]}),
            "operatorSecretsRole": ("vault", {r["Key Vault Secrets Officer"]}),
        },
        "modules/monitoring.bicep": {
            "metricsPublisher": ("appInsights", {r["Monitoring Metrics Publisher"]}),
        },
        "modules/blob-container-role.bicep": {
            "assignment": ("container", {"param:roleDefinitionId"}),
        },
    }
    found = {}
    for path in BICEP_FILES:
        rel = str(path.relative_to(INFRA))
        assignments = role_assignments(tree(parsed, rel))
        if assignments:
            found[rel] = {sym: (scope, set(ids)) for sym, (scope, ids, _) in assignments.items()}
    assert found == expected
    # The container-scoped module: the dead-letter writer and the operators' report reader.
    main = tree(parsed, "main.bicep")
    calls = {
        sym: body(m)[0]["params"]
        for sym, m in main["modules"].items()
        if m["detail"]["path"] == "modules/blob-container-role.bicep"
    }
    granted = {
        sym: (main_value(main, p["containerName"]), main_value(main, p["roleDefinitionId"])) for sym, p in calls.items()
    }
    assert granted == {
        "deadLetterWriter": ("eventgrid-deadletter", r["Storage Blob Data Contributor"]),
        "operatorReportsReader": ("run-reports", r["Storage Blob Data Reader"]),
    }
    assert render(calls["deadLetterWriter"]["principalId"]) == "eventGridTopic.outputs.principalId"


def test_no_broad_role_anywhere() -> None:
    for path in BICEP_FILES:
        text = path.read_text(encoding="utf-8").lower()
        for name, role_id in BROAD_ROLES.items():
            assert role_id not in text, f"{path.name} grants {name}"


def test_app_identity_gets_secrets_officer_only_when_it_writes_keys(parsed: dict) -> None:
    kv = tree(parsed, "modules/keyvault.bicep")
    ops = var(kv, "appRoleId")["operator"]["operands"]
    assert ops["condition"] == "appCanWriteSecrets"
    assert var(kv, ops["true_value"]) == ROLE["Key Vault Secrets Officer"]
    assert var(kv, ops["false_value"]) == ROLE["Key Vault Secrets User"]
    # Optional principals are granted nothing when their id is empty.
    operator = role_assignments(kv)["operatorSecretsRole"][2]
    assert operator["operator"]["type"] == "not"
    assert operator["operator"]["operands"]["bool_value"]["function"]["parameters"] == {
        "item_to_test": "operatorPrincipalId"
    }
    access = tree(parsed, "modules/segments-access.bicep")
    ci = role_assignments(access)["customerInsightsWritesSegments"][2]
    assert ci["operator"]["operands"]["bool_value"]["function"]["parameters"] == {
        "item_to_test": "customerInsightsPrincipalId"
    }
    assert role_assignments(access)["appReadsSegments"][2] is None


def test_key_vault_uses_rbac_soft_delete_and_purge_protection(parsed: dict) -> None:
    _, vault = only(tree(parsed, "modules/keyvault.bicep"), "Microsoft.KeyVault/vaults")
    props = vault["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    assert "accessPolicies" not in props
    assert props["enabledForTemplateDeployment"] is False


def test_no_secret_in_templates_or_parameters(parsed: dict) -> None:
    for path in BICEP_FILES:
        t = tree(parsed, str(path.relative_to(INFRA)))
        for rtype in ("Microsoft.KeyVault/vaults/secrets", "Microsoft.KeyVault/vaults/keys"):
            assert not resources(t, rtype), f"{path.name} declares {rtype}"
        for name, param in t.get("parameters", {}).items():
            assert not re.search(r"(key|secret|password)$", name, re.IGNORECASE), f"{path.name}: param {name}"
            assert not any(d["type"] == "secure" for d in param["decorators"]), f"{path.name}: @secure {name}"
        for name, output in t.get("outputs", {}).items():
            assert "list_func" not in json.dumps(output), f"{path.name}: output {name} exposes a key"
            if (path.name, name) == ("monitoring.bicep", "connectionString"):
                # Application Insights' connection string only identifies the component; with local
                # auth disabled (test_application_insights_uses_entra_id_only) it grants nothing.
                continue
            assert not re.search(r"(key|secret|password|connectionstring)$", name, re.IGNORECASE), name
    text = PARAMS.read_text(encoding="utf-8")
    assert not re.search(r"\bpk_[A-Za-z0-9]{8,}", text), "a Klaviyo private key in main.bicepparam"


def test_list_functions_only_read_the_blob_extension_key(parsed: dict) -> None:
    calls = {}
    for path in BICEP_FILES:
        rel = str(path.relative_to(INFRA))
        for node in walk(tree(parsed, rel)):
            if isinstance(node, dict) and node.get("type") == "list_func":
                calls.setdefault(rel, []).append(node["parameters"])
    assert calls == {
        "modules/eventgrid-subscriptions.bicep": [
            {
                "func_name": "listKeys",
                "resource_identifier": "${functionAppId}/host/default",
                "api_version": "2024-04-01",
            }
        ]
    }
    t = tree(parsed, "modules/eventgrid-subscriptions.bicep")
    key = var(t, "blobsExtensionKey")
    assert render(key["operator"]["operands"]["operand_2"]) == "systemKeys.blobs_extension"


# ------------------------------------------------------------------------------- monitoring, Event Grid


def test_application_insights_uses_entra_id_only(parsed: dict) -> None:
    t = tree(parsed, "modules/monitoring.bicep")
    _, ai = only(t, "Microsoft.Insights/components")
    assert ai["properties"]["DisableLocalAuth"] is True
    assert render(ai["properties"]["WorkspaceResourceId"]) == "workspace.id"
    _, law = only(t, "Microsoft.OperationalInsights/workspaces")
    assert law["properties"]["features"]["disableLocalAuth"] is True
    main = tree(parsed, "main.bicep")
    args = body(module_call(main, "modules/monitoring.bicep"))[0]["params"]
    assert render(args["publisherPrincipalId"]) == "identity.outputs.principalId"


def _rules(parsed: dict) -> tuple[dict, dict[str, dict]]:
    t = tree(parsed, "modules/alerts.bicep")
    return t, {name: body(res)[0] for name, res in resources(t, "Microsoft.Insights/scheduledQueryRules").items()}


def test_run_alerts_read_the_records_the_app_writes(parsed: dict) -> None:
    """The alerts' base query reads the telemetry record as shared/finishing/telemetry.py writes it: the
    same message prefix, the JSON after it, and only fields the record has."""
    from shared.finishing.telemetry import PREFIX, run_record

    t, _ = _rules(parsed)
    runs = var(t, "runs")
    assert f'where message startswith "{PREFIX}"' in runs
    assert f"parse_json(substring(message, {len(PREFIX)}))" in runs
    read = set(re.findall(r"\br\.(\w+)", runs))
    assert read <= set(run_record({})), sorted(read - set(run_record({})))
    assert {"export", "status", "dry_run", "rows_read", "rows_rejected", "profiles_failed"} <= read
    assert "tobool(r.dry_run) == false" in runs  # a dry run sends nothing: it neither alerts nor counts


def test_run_alerts_cover_failures_rejected_rows_and_stale_exports(parsed: dict) -> None:
    t, rules = _rules(parsed)
    assert set(rules) == {"failedRuns", "rejectedRows", "staleExports"}
    for name, rule in rules.items():
        props = rule["properties"]
        assert rule["kind"] == "LogAlert", name
        assert props["scopes"] == ["applicationInsightsId"], name
        assert props["enabled"] is True, name
        assert [render(a) for a in props["actions"]["actionGroups"]] == ["actionGroup.id"], name
        [criterion] = props["criteria"]["allOf"]
        assert criterion["query"].startswith("${runs}"), name
        assert (criterion["operator"], criterion["threshold"], criterion["timeAggregation"]) == (
            "GreaterThan", 0, "Count",
        ), name  # fmt: skip
        assert "export" in [d["name"] for d in criterion["dimensions"]], name  # one alert per export
    failed = rules["failedRuns"]["properties"]["criteria"]["allOf"][0]["query"]
    assert 'where status in ("failed", "partially_succeeded")' in failed
    rejected = rules["rejectedRows"]["properties"]["criteria"]["allOf"][0]["query"]
    assert "100.0 * rows_rejected / rows_read > ${rejectedSharePercent}" in rejected
    assert default(t, "rejectedSharePercent") == 5
    stale = rules["staleExports"]["properties"]
    assert "ago(${staleAfterHours}h)" in stale["criteria"]["allOf"][0]["query"]
    assert 'maxif(timestamp, status in ("succeeded", "partially_succeeded"))' in stale["criteria"]["allOf"][0]["query"]
    # The rule looks back two days, so the threshold must stay inside that window.
    assert stale["windowSize"] == "P2D"
    limits = {d["type"]: d["argument"] for d in t["parameters"]["staleAfterHours"]["decorators"]}
    assert limits["max_value"] < 48


def test_action_group_emails_and_optional_webhook_come_from_parameters(parsed: dict) -> None:
    t, _ = _rules(parsed)
    _, group = only(t, "Microsoft.Insights/actionGroups")
    assert group["location"] == "global"
    emails = group["properties"]["emailReceivers"]
    assert emails["loop_type"]["detail"]["array_name"] == "emailReceivers"
    assert emails["config"]["emailAddress"] == "address"
    webhook = group["properties"]["webhookReceivers"]["operator"]
    assert webhook["operands"]["condition"]["function"]["parameters"]["item_to_test"] == "webhookUrl"
    assert webhook["operands"]["true_value"] == []
    main = tree(parsed, "main.bicep")
    args = body(module_call(main, "modules/alerts.bicep"))[0]["params"]
    assert render(args["applicationInsightsId"]) == "monitoring.outputs.applicationInsightsId"
    assert (args["emailReceivers"], args["webhookUrl"]) == ("alertEmailReceivers", "alertWebhookUrl")
    assert (args["rejectedSharePercent"], args["staleAfterHours"]) == (
        "alertRejectedSharePercent",
        "alertStaleAfterHours",
    )


def test_runs_workbook_charts_runs_per_export(parsed: dict) -> None:
    t, _ = _rules(parsed)
    _, workbook = only(t, "Microsoft.Insights/workbooks")
    assert workbook["kind"] == "shared" and workbook["properties"]["sourceId"] == "applicationInsightsId"
    queries = [item["content"] for item in var(t, "workbookItems") if item["type"] == 3]
    assert {q["visualization"] for q in queries} >= {"barchart", "timechart", "table"}
    text = " ".join(q["query"] for q in queries)
    for column in ("profiles_submitted", "profiles_failed", "rows_rejected", "duration_s"):
        assert column in text, column
    assert all(q["query"].startswith("${runs}") and "export" in q["query"] for q in queries)


def test_system_topic_watches_the_segments_account(parsed: dict) -> None:
    _, topic = only(tree(parsed, "modules/eventgrid-topic.bicep"), "Microsoft.EventGrid/systemTopics")
    assert topic["properties"] == {"source": "storageAccountId", "topicType": "Microsoft.Storage.StorageAccounts"}
    assert topic["identity"] == {"type": "SystemAssigned"}
    main = tree(parsed, "main.bicep")
    args = body(module_call(main, "modules/eventgrid-topic.bicep"))[0]["params"]
    assert render(args["storageAccountId"]) == "segmentsAccess.outputs.id"


def test_event_subscriptions_filter_blob_created_to_model_json_and_csv_prefix(parsed: dict) -> None:
    t = tree(parsed, "modules/eventgrid-subscriptions.bicep")
    subs = {
        body(res)[0]["name"]: body(res)[0]["properties"]
        for res in resources(t, "Microsoft.EventGrid/systemTopics/eventSubscriptions").values()
    }
    assert set(subs) == {"segment-export-model-json", "segment-export-csv-drops"}
    prefix = var(t, "subjectPrefix")
    assert prefix == "/blobServices/default/containers/${segmentsContainerName}/blobs/"
    model, csv = subs["segment-export-model-json"]["filter"], subs["segment-export-csv-drops"]["filter"]
    assert (model["subjectBeginsWith"], model["subjectEndsWith"]) == ("subjectPrefix", "/model.json")
    assert (csv["subjectBeginsWith"], csv["subjectEndsWith"]) == ("${subjectPrefix}${csvPrefix}", ".csv")
    completed = var(t, "completedWriteFilter")
    assert completed == {"operatorType": "StringNotIn", "key": "data.api", "values": ["CreateFile", "SftpCreate"]}
    for props in subs.values():
        assert props["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
        assert props["filter"]["advancedFilters"] == ["completedWriteFilter"]
        assert props["destination"] == {"endpointType": "WebHook", "properties": {"endpointUrl": "webhookUrl"}}
        assert props["deadLetterWithResourceIdentity"] == "deadLetter"
    # main passes the real container and prefix.
    main = tree(parsed, "main.bicep")
    args = body(module_call(main, "modules/eventgrid-subscriptions.bicep"))[0]["params"]
    assert main_value(main, args["segmentsContainerName"]) == "segments"
    assert main_value(main, args["csvPrefix"]) == "csv/"


def test_event_subscriptions_deliver_to_the_blob_trigger_webhook(parsed: dict) -> None:
    t = tree(parsed, "modules/eventgrid-subscriptions.bicep")
    assert var(t, "webhookUrl") == (
        "https://${functionAppHostName}/runtime/webhooks/blobs"
        "?functionName=Host.Functions.${functionName}&code=${blobsExtensionKey}"
    )
    main = tree(parsed, "main.bicep")
    call = module_call(main, "modules/eventgrid-subscriptions.bicep")
    args, condition, _ = body(call)
    assert args["params"]["functionName"] == "on_segment_export"
    assert render(args["params"]["functionAppId"]) == "functionApp.outputs.id"
    assert render(args["params"]["functionAppHostName"]) == "functionApp.outputs.defaultHostName"
    # Second pass only: the key exists once the code is published.
    assert condition == "deployEventSubscription"
    assert default(main, "deployEventSubscription") is False


# ------------------------------------------------------------------------------------------ workflow


def test_workflows_are_valid_yaml(parsed: dict) -> None:
    assert WORKFLOWS / "deploy.yml" in WORKFLOW_FILES
    for path in WORKFLOW_FILES:
        entry = parsed["yaml"][str(path)]
        assert "tree" in entry, f"{path.name}: {entry.get('error')}"
        assert isinstance(entry["tree"], dict) and entry["tree"].get("jobs"), f"{path.name} has no jobs"


def _steps(workflow: dict) -> list[tuple[str, dict]]:
    return [(job_name, step) for job_name, job in workflow["jobs"].items() for step in job.get("steps", [])]


def test_deploy_workflow_tests_previews_deploys_and_publishes(parsed: dict) -> None:
    path = WORKFLOWS / "deploy.yml"
    wf = parsed["yaml"][str(path)]["tree"]
    jobs = wf["jobs"]
    runs = {job: "\n".join(s.get("run", "") for j, s in _steps(wf) if j == job) for job in jobs}
    test_job = next(job for job, script in runs.items() if "make test" in script.splitlines())
    whatif_job = next(job for job, script in runs.items() if "az deployment group what-if" in script)
    deploy_job = next(job for job, script in runs.items() if "az deployment group create" in script)
    assert test_job in _needs(jobs[whatif_job]) and whatif_job in _needs(jobs[deploy_job])
    for job in (whatif_job, deploy_job):
        assert "--parameters infra/main.bicepparam" in runs[job]
        assert "--template-file infra/main.bicep" in runs[job]
    # Two passes: the Event Grid subscriptions after the code is published.
    steps = [s for j, s in _steps(wf) if j == deploy_job]
    kinds = []
    for step in steps:
        if "az deployment group create" in step.get("run", ""):
            kinds.append(("deploy", step["env"]["DEPLOY_EVENT_SUBSCRIPTION"]))
        elif str(step.get("uses", "")).lower().startswith("azure/functions-action"):
            assert step["with"]["sku"] == "flexconsumption"
            kinds.append(("publish", None))
        elif WAIT_SCRIPT in step.get("run", ""):
            assert step["env"]["FUNCTION_APP"] == "${{ steps.infra.outputs.function_app }}"
            kinds.append(("wait for key", None))
    assert kinds == [("deploy", "false"), ("publish", None), ("wait for key", None), ("deploy", "true")]


def test_deploy_workflow_publishes_the_package_it_checked(parsed: dict) -> None:
    wf = parsed["yaml"][str(WORKFLOWS / "deploy.yml")]["tree"]
    publish_job, publish = next(
        (j, s) for j, s in _steps(wf) if str(s.get("uses", "")).lower().startswith("azure/functions-action")
    )
    steps = [s for j, s in _steps(wf) if j == publish_job]
    runs = [s.get("run", "").strip() for s in steps]
    assert publish["with"]["package"] == "dist/app"
    build, check = runs.index("make package"), runs.index("python -m localdev.package check dist/app")
    assert build < check < steps.index(publish)


def _needs(job: dict) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else needs


def test_deploy_workflow_signs_in_with_oidc_and_no_stored_secret(parsed: dict) -> None:
    path = WORKFLOWS / "deploy.yml"
    assert "secrets." not in path.read_text(encoding="utf-8")
    wf = parsed["yaml"][str(path)]["tree"]
    logins = [(j, s) for j, s in _steps(wf) if str(s.get("uses", "")).startswith("azure/login@")]
    assert logins
    for job, step in logins:
        assert step["with"] == {
            "client-id": "${{ vars.AZURE_CLIENT_ID }}",
            "tenant-id": "${{ vars.AZURE_TENANT_ID }}",
            "subscription-id": "${{ vars.AZURE_SUBSCRIPTION_ID }}",
        }
        assert wf["jobs"][job]["permissions"]["id-token"] == "write"
    assert wf.get("permissions", {}).get("id-token") is None  # granted per job, not workflow-wide


# ------------------------------------------------------------------------- the wait for the blob key

WAIT_SCRIPT = "infra/scripts/wait-for-blobs-extension-key.sh"
FAKE_KEY = "fake-blobs-extension-key-0123456789"


def _run_wait(tmp_path: Path, ready_after: int | None, tries: int = 5) -> tuple[subprocess.CompletedProcess, int]:
    """The wait script against a stand-in `az` (there is no Azure here) that answers the key query
    empty, or fails as a host that is not up does, until its call number `ready_after`. Returns the
    script's process and how many times it called az."""
    calls = tmp_path / "calls"
    az = tmp_path / "az"
    az.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> "{calls}"\n'
        f'n=$(wc -l < "{calls}")\n'
        f'if [ {ready_after or 0} -ne 0 ] && [ "$n" -ge {ready_after or 0} ]; then echo {FAKE_KEY}; exit 0; fi\n'
        'if [ "$n" -eq 1 ]; then echo "ERROR: (NotFound) host is not running" >&2; exit 1; fi\n'
        "exit 0\n",
        encoding="utf-8",
    )
    az.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "KEY_WAIT_TRIES": str(tries)}
    env["KEY_WAIT_INTERVAL_S"] = "0"
    proc = subprocess.run(
        ["bash", str(ROOT / WAIT_SCRIPT), "rg-test", "func-test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = calls.read_text(encoding="utf-8").splitlines() if calls.exists() else []
    for line in lines:
        assert "functionapp keys list --resource-group rg-test --name func-test" in line
        assert "--query systemKeys.blobs_extension" in line
    return proc, len(lines)


def test_key_wait_polls_until_the_blobs_extension_key_exists(tmp_path: Path) -> None:
    proc, calls = _run_wait(tmp_path, ready_after=3)
    assert proc.returncode == 0, proc.stderr
    assert calls == 3
    assert "exists (try 3 of 5)" in proc.stdout
    assert FAKE_KEY not in proc.stdout + proc.stderr  # the key is never printed


def test_key_wait_gives_up_after_its_tries_with_one_clear_line(tmp_path: Path) -> None:
    proc, calls = _run_wait(tmp_path, ready_after=None, tries=4)
    assert proc.returncode == 1
    assert calls == 4
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 1
    assert errors[0].startswith("error: the blobs_extension key of func-test did not appear after 4 tries")
