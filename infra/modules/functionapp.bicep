// Flex Consumption (FC1) plan and the Python 3.11 function app. The app runs as the
// user-assigned identity; every connection in its settings is identity-based, so no app setting
// holds a key, a connection string with a key, or a Key Vault secret.

@description('Name of the function app.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Python version of the Functions runtime.')
@allowed([
  '3.11'
])
param pythonVersion string = '3.11'

@description('Upper bound on instances the plan scales out to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Always-ready instances of the durable group (orchestrators, activities, entities): 0 scales to zero; each one is billed for its memory all the time (docs/OPERATIONS.md).')
@minValue(0)
@maxValue(20)
param durableAlwaysReadyInstances int = 0

@description('Resource id of the user-assigned identity.')
param identityId string

@description('Client id of the user-assigned identity.')
param identityClientId string

@description('Name of the app storage account (AzureWebJobsStorage).')
param storageAccountName string

@description('Container of the app storage account that Flex Consumption deploys packages to.')
param deploymentContainerName string

@description('Blob service URI of the segments account.')
param segmentsBlobServiceUri string

@description('Queue service URI of the segments account (the blob trigger puts its poison queue there).')
param segmentsQueueServiceUri string

@description('Application Insights connection string.')
param applicationInsightsConnectionString string

@description('Key Vault URI.')
param keyVaultUri string

@description('Container on the segments account that Customer Insights exports to.')
param segmentsContainerName string

@description('Prefix (inside the segments container) of plain CSV drops.')
param csvPrefix string

@description('Container on the app account holding export definitions.')
param configContainerName string

@description('Container on the app account holding run workspaces.')
param workspaceContainerName string

@description('Container on the app account holding run reports and rejects files.')
param reportsContainerName string

@description('Durable Functions task hub name (host.json reads %DURABLE_TASK_HUB%).')
param durableTaskHubName string

@description('How many Klaviyo pushes an orchestration runs at once.')
param pushWaveWidth int

@description('Base URL of the Klaviyo API.')
param klaviyoBaseUrl string

@description('Seconds a Klaviyo key read from Key Vault is cached (a rotated key is used within this time).')
param secretCacheTtlSeconds int

@description('Days the durable history of finished runs is kept before the purge timer removes it.')
param runRetentionDays int

@description('True when App Service authentication (Easy Auth) is configured on the app: the HTTP API then answers 401 to a request without a signed-in principal instead of trusting the function key holder as an administrator.')
param requirePrincipal bool = false

// The durable group serves every orchestrator and activity; none is kept warm unless asked for.
var durableAlwaysReady = (durableAlwaysReadyInstances > 0) ? [
  {
    name: 'durable'
    instanceCount: durableAlwaysReadyInstances
  }
] : []

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  // checkov:skip=CKV_AZURE_225:Zone redundancy on Flex Consumption is offered in a subset of regions, needs ZRS storage and keeps two always-ready instances per function group; this batch sync is already retried and resumed by Durable Functions, so a single-zone plan is the accepted trade-off.
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  // checkov:skip=CKV_AZURE_78:Resource Manager rejects siteConfig.ftpsState on Flex Consumption sites in newer regions (error 51021) and the official Flex Consumption samples never set it; FTP is disabled by the ftp basicPublishingCredentialsPolicy (allow: false) declared below.
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  // checkov:skip=CKV_AZURE_222:The app must be reachable from the public internet: Event Grid delivers blob events to its webhook and clients call the /api routes; both are authenticated with function and system keys, and there is no VNet or front door in this deployment.
  // checkov:skip=CKV_AZURE_17:Event Grid webhook deliveries cannot present a client certificate, so requiring one would stop blob events; the webhook is authenticated with the blobs_extension system key and the HTTP API with function keys.
  // checkov:skip=CKV_AZURE_213:Flex Consumption does not support the App Service health check (siteConfig.healthCheckPath); instance health is the platform's, and runs are observed through Application Insights and run reports.
  // checkov:skip=CKV_AZURE_212:numberOfWorkers does not apply to Flex Consumption, which scales per function from zero up to functionAppConfig.scaleAndConcurrency.maximumInstanceCount.
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    clientCertEnabled: false
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        alwaysReady: durableAlwaysReady
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      // No ftpsState: Resource Manager rejects it on Flex Consumption sites in newer regions (error
      // 51021). FTP is off through the ftp publishing-credentials policy below.
      http20Enabled: true
      remoteDebuggingEnabled: false
      appSettings: [
        // Host storage. Durable Functions uses blobs (leases), queues (work items) and tables
        // (history): all three service URIs, each reached with the user-assigned identity.
        {
          name: 'AzureWebJobsStorage__blobServiceUri'
          value: storage.properties.primaryEndpoints.blob
        }
        {
          name: 'AzureWebJobsStorage__queueServiceUri'
          value: storage.properties.primaryEndpoints.queue
        }
        {
          name: 'AzureWebJobsStorage__tableServiceUri'
          value: storage.properties.primaryEndpoints.table
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        // Connection of the on_segment_export blob trigger (connection="SEGMENTS_STORAGE"). The
        // queue URI is needed by the blob trigger for its poison queue on that account.
        {
          name: 'SEGMENTS_STORAGE__blobServiceUri'
          value: segmentsBlobServiceUri
        }
        {
          name: 'SEGMENTS_STORAGE__queueServiceUri'
          value: segmentsQueueServiceUri
        }
        {
          name: 'SEGMENTS_STORAGE__credential'
          value: 'managedidentity'
        }
        {
          name: 'SEGMENTS_STORAGE__clientId'
          value: identityClientId
        }
        {
          name: 'SEGMENTS_CONTAINER'
          value: segmentsContainerName
        }
        {
          name: 'CSV_PREFIX'
          value: csvPrefix
        }
        {
          name: 'CONFIG_CONTAINER'
          value: configContainerName
        }
        {
          name: 'WORKSPACE_CONTAINER'
          value: workspaceContainerName
        }
        {
          name: 'REPORTS_CONTAINER'
          value: reportsContainerName
        }
        // DefaultAzureCredential (Key Vault, storage SDK clients) picks the user-assigned identity.
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        {
          name: 'KEY_VAULT_URL'
          value: keyVaultUri
        }
        {
          name: 'SECRET_CACHE_TTL_S'
          value: string(secretCacheTtlSeconds)
        }
        {
          name: 'DURABLE_TASK_HUB'
          value: durableTaskHubName
        }
        {
          name: 'PUSH_WAVE_WIDTH'
          value: string(pushWaveWidth)
        }
        {
          name: 'KLAVIYO_BASE_URL'
          value: klaviyoBaseUrl
        }
        {
          name: 'RUN_RETENTION_DAYS'
          value: string(runRetentionDays)
        }
        {
          name: 'AUTH_REQUIRE_PRINCIPAL'
          value: string(requirePrincipal)
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: applicationInsightsConnectionString
        }
        // Local auth is off on the component: telemetry is sent with an Entra ID token.
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identityClientId};Authorization=AAD'
        }
      ]
    }
  }
}

// No FTP or basic-auth deployments: Flex Consumption publishing (func, az, the GitHub action)
// authenticates with Entra ID.
resource ftpPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
