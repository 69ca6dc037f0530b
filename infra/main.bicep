// Everything the Customer Insights -> Klaviyo sync needs in Azure, deployed to one resource group
// (the segments account may live in another one):
//   identity -> monitoring -> app storage -> segments storage/access -> Key Vault -> function
//   app -> Event Grid system topic -> (second pass) event subscriptions to the blob trigger.
// Deploy: az deployment group create -g <rg> -f infra/main.bicep -p infra/main.bicepparam
// (docs/OPERATIONS.md). No secret is a parameter, a variable value or an output.
targetScope = 'resourceGroup'

@description('Short workload name used in resource names: 2-8 lowercase letters and digits.')
@minLength(2)
@maxLength(8)
param baseName string

@description('Azure region of the app resources (must offer Flex Consumption).')
param location string = resourceGroup().location

@description('Tags applied to every resource.')
param tags object = {}

@description('Replication of the app storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param appStorageSkuName string = 'Standard_GRS'

@description('Upper bound on instances of the Flex Consumption app.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each Flex Consumption instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Always-ready instances of the durable group (orchestrators and activities): 0 scales to zero and bills nothing idle; each one is billed for its memory around the clock (docs/OPERATIONS.md).')
@minValue(0)
@maxValue(20)
param durableAlwaysReadyInstances int = 0

@description('true: create a new segments storage account. false: use the existing account named segmentsStorageAccountName that Customer Insights already writes to.')
param createSegmentsStorage bool = true

@description('Name of the segments storage account. Required when createSegmentsStorage is false; empty to generate one for a new account.')
param segmentsStorageAccountName string = ''

@description('Resource group of the segments storage account (it must exist); empty for this resource group.')
param segmentsResourceGroupName string = ''

@description('Allow shared-key access on a NEW segments account, only if the Customer Insights connection uses the account key. Ignored for an existing account.')
param segmentsAllowSharedKeyAccess bool = false

@description('Container Customer Insights exports segments to (SEGMENTS_CONTAINER).')
param segmentsContainerName string = 'segments'

@description('Prefix, inside the segments container, of plain CSV drops (CSV_PREFIX).')
param csvPrefix string = 'csv/'

@description('Object id of the "Dynamics 365 AI for Customer Insights" service principal in this tenant; when set it gets Storage Blob Data Contributor on the segments container. Empty to manage that access yourself.')
param customerInsightsPrincipalId string = ''

@description('Name of the Event Grid system topic of the segments account. Set it to the existing topic\'s name if the account already has one (an account has at most one); empty to generate a name.')
param segmentsSystemTopicName string = ''

@description('Second pass: create the BlobCreated subscriptions to the blob trigger webhook. Needs the published code (the blobs_extension key exists only then); leave false on the first deployment.')
param deployEventSubscription bool = false

@description('true: the app may write Klaviyo keys to Key Vault (PUT /api/connections/{name}) and gets Key Vault Secrets Officer on the vault. false: Key Vault Secrets User; keys are set with az keyvault secret set.')
param appCanWriteSecrets bool = true

@description('Object id of the operators\' Entra ID group (or a user) that sets keys by hand and reads run reports; empty for none.')
param operatorPrincipalId string = ''

@description('Type of operatorPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'Group'

@description('Durable Functions task hub (DURABLE_TASK_HUB): 3-45 letters and digits, starting with a letter.')
@minLength(3)
@maxLength(45)
param durableTaskHubName string = 'CiKlaviyoSync'

@description('How many Klaviyo pushes an orchestration runs at once (PUSH_WAVE_WIDTH).')
@minValue(1)
@maxValue(64)
param pushWaveWidth int = 8

@description('Base URL of the Klaviyo API (KLAVIYO_BASE_URL).')
param klaviyoBaseUrl string = 'https://a.klaviyo.com'

@description('Seconds the app caches a Klaviyo key read from Key Vault (SECRET_CACHE_TTL_S): the longest a rotated key takes to be used.')
@minValue(0)
@maxValue(3600)
param secretCacheTtlSeconds int = 300

@description('Days that run reports, rejects files and the durable history of finished runs are kept (RUN_RETENTION_DAYS).')
@minValue(1)
@maxValue(3650)
param runRetentionDays int = 90

@description('Days after which whatever a run left in its workspace is deleted (a finished run deletes its own at once).')
@minValue(1)
@maxValue(30)
param workspaceRetentionDays int = 3

@description('True when App Service authentication is configured on the function app: requests without a signed-in principal are refused (401) rather than trusted as an administrator.')
param requirePrincipal bool = false

@description('Days that logs are kept in Log Analytics.')
@minValue(30)
@maxValue(730)
param logRetentionInDays int = 30

@description('Email addresses told when a run alert fires (failed or partial runs, rejected rows, stale exports).')
param alertEmailReceivers array = []

@description('Optional webhook told when a run alert fires. Deployments record parameters: use a URL without a token (a Logic App or function with its own authentication), or add the webhook to the action group in the portal.')
param alertWebhookUrl string = ''

@description('Alert when a run rejects more than this percentage of the rows it read.')
@minValue(1)
@maxValue(100)
param alertRejectedSharePercent int = 5

@description('Alert when an export has had no successful run for this many hours (at most 46).')
@minValue(1)
@maxValue(46)
param alertStaleAfterHours int = 26

// Containers on the app account (names fixed by the app's defaults).
var configContainerName = 'export-config'
var workspaceContainerName = 'run-workspace'
var reportsContainerName = 'run-reports'
var deadLetterContainerName = 'eventgrid-deadletter'

var token = toLower(uniqueString(subscription().id, resourceGroup().id, baseName))
var prefix = toLower(baseName)
var allTags = union(tags, {
  workload: 'ci-klaviyo-sync'
})
var functionAppName = 'func-${prefix}-${token}'
var appStorageAccountName = 'st${prefix}${token}'
var generatedSegmentsAccountName = 'sg${prefix}${token}'
var segmentsAccountName = empty(segmentsStorageAccountName) ? generatedSegmentsAccountName : segmentsStorageAccountName
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(token, 7)}'
var segmentsRg = empty(segmentsResourceGroupName) ? resourceGroup().name : segmentsResourceGroupName
var systemTopicName = empty(segmentsSystemTopicName) ? 'evgt-${segmentsAccountName}' : segmentsSystemTopicName

// Built-in roles granted in this file (the rest are in the modules).
var storageBlobDataReaderRoleId = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

module identity 'modules/identity.bicep' = {
  name: 'identity'
  params: {
    name: 'id-${prefix}-${token}'
    location: location
    tags: allTags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    logAnalyticsName: 'log-${prefix}-${token}'
    applicationInsightsName: 'appi-${prefix}-${token}'
    location: location
    tags: allTags
    retentionInDays: logRetentionInDays
    publisherPrincipalId: identity.outputs.principalId
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  params: {
    location: location
    tags: allTags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    namePrefix: '${prefix}-${token}'
    emailReceivers: alertEmailReceivers
    webhookUrl: alertWebhookUrl
    rejectedSharePercent: alertRejectedSharePercent
    staleAfterHours: alertStaleAfterHours
  }
}

module appStorage 'modules/app-storage.bicep' = {
  name: 'app-storage'
  params: {
    name: appStorageAccountName
    location: location
    tags: allTags
    skuName: appStorageSkuName
    configContainerName: configContainerName
    workspaceContainerName: workspaceContainerName
    reportsContainerName: reportsContainerName
    deploymentContainerName: deploymentContainerName
    deadLetterContainerName: deadLetterContainerName
    workspaceRetentionDays: workspaceRetentionDays
    runRetentionDays: runRetentionDays
    appPrincipalId: identity.outputs.principalId
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module segmentsStorage 'modules/segments-storage.bicep' = if (createSegmentsStorage) {
  name: 'segments-storage'
  scope: resourceGroup(segmentsRg)
  params: {
    name: segmentsAccountName
    location: location
    tags: allTags
    allowSharedKeyAccess: segmentsAllowSharedKeyAccess
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module segmentsAccess 'modules/segments-access.bicep' = {
  name: 'segments-access'
  scope: resourceGroup(segmentsRg)
  params: {
    accountName: segmentsAccountName
    containerName: segmentsContainerName
    appPrincipalId: identity.outputs.principalId
    customerInsightsPrincipalId: customerInsightsPrincipalId
  }
  dependsOn: [
    segmentsStorage
  ]
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'key-vault'
  params: {
    name: 'kv-${take(prefix, 8)}-${take(token, 10)}'
    location: location
    tags: allTags
    appPrincipalId: identity.outputs.principalId
    appCanWriteSecrets: appCanWriteSecrets
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
    logAnalyticsWorkspaceId: monitoring.outputs.workspaceId
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'function-app'
  params: {
    name: functionAppName
    planName: 'plan-${prefix}-${token}'
    location: location
    tags: allTags
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    durableAlwaysReadyInstances: durableAlwaysReadyInstances
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: appStorage.outputs.name
    deploymentContainerName: deploymentContainerName
    segmentsBlobServiceUri: segmentsAccess.outputs.blobEndpoint
    segmentsQueueServiceUri: segmentsAccess.outputs.queueEndpoint
    segmentsContainerName: segmentsContainerName
    csvPrefix: csvPrefix
    configContainerName: configContainerName
    workspaceContainerName: workspaceContainerName
    reportsContainerName: reportsContainerName
    durableTaskHubName: durableTaskHubName
    pushWaveWidth: pushWaveWidth
    klaviyoBaseUrl: klaviyoBaseUrl
    secretCacheTtlSeconds: secretCacheTtlSeconds
    runRetentionDays: runRetentionDays
    requirePrincipal: requirePrincipal
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    keyVaultUri: keyVault.outputs.uri
  }
  // The host must be able to reach its storage, Key Vault and Application Insights as soon as
  // it starts, so the role assignments come first.
  dependsOn: [
    appStorage
    keyVault
    monitoring
  ]
}

module eventGridTopic 'modules/eventgrid-topic.bicep' = {
  name: 'eventgrid-topic'
  scope: resourceGroup(segmentsRg)
  params: {
    name: systemTopicName
    location: segmentsAccess.outputs.location
    tags: allTags
    storageAccountId: segmentsAccess.outputs.id
  }
}

// The topic's identity writes undeliverable events to the dead-letter container, nothing else.
module deadLetterWriter 'modules/blob-container-role.bicep' = {
  name: 'eventgrid-deadletter-role'
  params: {
    storageAccountName: appStorage.outputs.name
    containerName: deadLetterContainerName
    principalId: eventGridTopic.outputs.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: storageBlobDataContributorRoleId
  }
}

// Operators read run reports and rejects files (az storage blob download --auth-mode login).
module operatorReportsReader 'modules/blob-container-role.bicep' = if (!empty(operatorPrincipalId)) {
  name: 'operator-reports-role'
  params: {
    storageAccountName: appStorage.outputs.name
    containerName: reportsContainerName
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    roleDefinitionId: storageBlobDataReaderRoleId
  }
}

module eventSubscriptions 'modules/eventgrid-subscriptions.bicep' = if (deployEventSubscription) {
  name: 'eventgrid-subscriptions'
  scope: resourceGroup(segmentsRg)
  params: {
    systemTopicName: eventGridTopic.outputs.name
    functionAppId: functionApp.outputs.id
    functionAppHostName: functionApp.outputs.defaultHostName
    functionName: 'on_segment_export'
    segmentsContainerName: segmentsContainerName
    csvPrefix: csvPrefix
    deadLetterStorageAccountId: appStorage.outputs.id
    deadLetterContainerName: deadLetterContainerName
  }
  dependsOn: [
    deadLetterWriter
  ]
}

output functionAppName string = functionApp.outputs.name
output functionAppHostName string = functionApp.outputs.defaultHostName
output identityClientId string = identity.outputs.clientId
output keyVaultName string = keyVault.outputs.name
output keyVaultUri string = keyVault.outputs.uri
output appStorageAccountName string = appStorage.outputs.name
output reportsContainerName string = reportsContainerName
output segmentsStorageAccountName string = segmentsAccountName
output segmentsResourceGroupName string = segmentsRg
output segmentsContainerName string = segmentsContainerName
output eventGridSystemTopicName string = eventGridTopic.outputs.name
output applicationInsightsName string = monitoring.outputs.applicationInsightsName
output logAnalyticsWorkspaceName string = monitoring.outputs.workspaceName
output alertRuleNames array = alerts.outputs.alertRuleNames
output runsWorkbookId string = alerts.outputs.workbookId
output eventSubscriptionDeployed bool = deployEventSubscription
