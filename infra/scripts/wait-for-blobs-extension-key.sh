#!/usr/bin/env bash
# Waits until the function app's host has created the blobs_extension system key, which the second
# deployment pass (the Event Grid subscriptions) reads with listKeys. The host creates it only once
# published code has loaded the blob extension, a little while after publishing; reading it sooner
# fails the pass. Polls a bounded number of times, then fails with one clear line. The key itself is
# never printed.
#
#   infra/scripts/wait-for-blobs-extension-key.sh RESOURCE_GROUP FUNCTION_APP
#   KEY_WAIT_TRIES (default 30) x KEY_WAIT_INTERVAL_S (default 10): about five minutes.
set -euo pipefail

rg=${1:?usage: wait-for-blobs-extension-key.sh RESOURCE_GROUP FUNCTION_APP}
app=${2:?usage: wait-for-blobs-extension-key.sh RESOURCE_GROUP FUNCTION_APP}
tries=${KEY_WAIT_TRIES:-30}
interval=${KEY_WAIT_INTERVAL_S:-10}
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT

for ((try = 1; try <= tries; try++)); do
  if key=$(az functionapp keys list --resource-group "$rg" --name "$app" \
    --query systemKeys.blobs_extension --output tsv 2>"$errors") && [ -n "$key" ] && [ "$key" != "None" ]; then
    echo "the blobs_extension key of $app exists (try $try of $tries)"
    exit 0
  fi
  echo "waiting for the blobs_extension key of $app (try $try of $tries)"
  if ((try < tries)); then sleep "$interval"; fi
done

last=$(tail -n 1 "$errors" 2>/dev/null || true)
echo "error: the blobs_extension key of $app did not appear after $tries tries ${interval}s apart: is the code published and the app running (az functionapp function list -g $rg -n $app)?${last:+ last az error: $last}" >&2
exit 1
