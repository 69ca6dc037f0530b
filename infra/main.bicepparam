// Parameters for main.bicep. No secret belongs here: Klaviyo keys go to Key Vault
// (docs/OPERATIONS.md), and every connection the app makes is identity-based.
// Values that differ per environment or per pass are read from environment variables, so the
// same file serves a laptop (`export DEPLOY_EVENT_SUBSCRIPTION=true`) and the GitHub workflow.
using './main.bicep'

param baseName = readEnvironmentVariable('CIKS_BASE_NAME', 'ciks')

param tags = {
  workload: 'ci-klaviyo-sync'
  owner: 'data-platform'
}

// New segments account by default. To use the account Customer Insights already exports to:
// CIKS_CREATE_SEGMENTS_STORAGE=false, CIKS_SEGMENTS_ACCOUNT=<name>, CIKS_SEGMENTS_RG=<its resource group>
// (empty: the deployment's resource group).
param createSegmentsStorage = bool(readEnvironmentVariable('CIKS_CREATE_SEGMENTS_STORAGE', 'true'))
param segmentsStorageAccountName = readEnvironmentVariable('CIKS_SEGMENTS_ACCOUNT', '')
param segmentsResourceGroupName = readEnvironmentVariable('CIKS_SEGMENTS_RG', '')
param segmentsSystemTopicName = readEnvironmentVariable('CIKS_SEGMENTS_SYSTEM_TOPIC', '')
param segmentsContainerName = 'segments'
param csvPrefix = 'csv/'

// Object id of the "Dynamics 365 AI for Customer Insights" service principal in your tenant
// (az ad sp list --display-name "Dynamics 365 AI for Customer Insights" --query "[].id" -o tsv).
param customerInsightsPrincipalId = readEnvironmentVariable('CIKS_CUSTOMER_INSIGHTS_PRINCIPAL_ID', '')

// First pass false; true once the code is published (the webhook needs the blobs_extension key).
param deployEventSubscription = bool(readEnvironmentVariable('DEPLOY_EVENT_SUBSCRIPTION', 'false'))

// The connections API (PUT /api/connections/{name}) writes keys, so the app gets Secrets Officer.
param appCanWriteSecrets = true

// Entra ID group of the operators: sets keys by hand, reads run reports.
param operatorPrincipalId = readEnvironmentVariable('CIKS_OPERATOR_PRINCIPAL_ID', '')
param operatorPrincipalType = 'Group'

param durableTaskHubName = 'CiKlaviyoSync'
param pushWaveWidth = 8
param klaviyoBaseUrl = 'https://a.klaviyo.com'
param secretCacheTtlSeconds = 300
// true once App Service authentication is configured on the app (see docs/OPERATIONS.md, Access).
param requirePrincipal = bool(readEnvironmentVariable('CIKS_REQUIRE_PRINCIPAL', 'false'))
param maximumInstanceCount = 40
param instanceMemoryMB = 2048
// Warm instances for the durable group; each is billed around the clock (docs/OPERATIONS.md).
param durableAlwaysReadyInstances = int(readEnvironmentVariable('CIKS_DURABLE_ALWAYS_READY', '0'))
param appStorageSkuName = 'Standard_GRS'
param logRetentionInDays = 30
// Reports, rejects files and finished runs' durable history; leftover workspaces (docs/OPERATIONS.md).
param runRetentionDays = 90
param workspaceRetentionDays = 3
