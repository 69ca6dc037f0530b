"""Load: 20 exports started at once through the local host, all on one Klaviyo account with Klaviyo's rate
limits on, all finish exact, sharing the account's budget without a storm of 429s."""

from __future__ import annotations

import httpx

from localdev.host_client import HostClient
from localdev.sample import email_for, write_ci_export
from localdev.services import run_emulator
from shared.platform.storage import BlobStore
from tests.fixtures.services import EMULATOR_KEY
from tests.pipeline_helpers import list_emails, new_list
from tests.test_local_host import FUNCTION_KEY, export_body, host_settings, new_host

EXPORTS, ROWS = 20, 1_500


def test_twenty_exports_at_once_share_one_accounts_rate_limit(azurite):
    with run_emulator(EMULATOR_KEY, "--rate-limits", "klaviyo") as url:
        settings = host_settings(azurite, url)
        segments = BlobStore.from_connection_string(azurite.connection_string, settings["SEGMENTS_CONTAINER"])
        with new_host(settings, poll_interval=None) as host, HostClient(host.base_url, FUNCTION_KEY) as api:
            api.put_connection("shop", EMULATOR_KEY)
            lists = {}
            for n in range(EXPORTS):
                root = f"CustomerInsights_load/export-{n}"
                write_ci_export(segments, ROWS, root=root, partitions=1, seed=n)
                lists[n] = new_list(url, f"load-{n}")
                api.put_export(f"load-{n}", export_body(lists[n], settings, prefix=f"{root}/"))
            before = httpx.get(f"{url}/__emulator/stats").json()
            started = [api.start_run(f"load-{n}")["id"] for n in range(EXPORTS)]
            finals = [api.wait_for_run(run_id, timeout=600) for run_id in started]
            after = httpx.get(f"{url}/__emulator/stats").json()

        throttled = after["throttled_429"] - before["throttled_429"]
        print(f"20 exports: {after['requests'] - before['requests']} requests to Klaviyo, {throttled} answered 429")
        assert [f["report"]["status"] for f in finals] == ["succeeded"] * EXPORTS
        assert all(f["report"]["profiles_imported"] == ROWS for f in finals)
        for n in range(EXPORTS):
            assert list_emails(url, lists[n]) == {email_for(i) for i in range(ROWS)}
        assert throttled <= EXPORTS // 4  # the shared limiter paces the account; a few 429s at most
