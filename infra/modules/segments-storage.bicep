// A new storage account for Customer Insights segment exports. Deployed only when
// createSegmentsStorage is true; with an existing account (the one Customer Insights already
// writes to), main.bicep skips this module and segments-access.bicep adds the container, the
// poison queue and the role assignments to that account without changing its settings.

@description('Name of the storage account (3-24 lowercase letters and digits).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Replication of the account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_GRS'

@description('Allow shared-key (account key / SAS) access. Keep false when Customer Insights connects with its service principal; set true only if its connection uses the account key.')
param allowSharedKeyAccess bool = false

@description('Log Analytics workspace that receives the blob service audit logs.')
param logAnalyticsWorkspaceId string

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  // checkov:skip=CKV_AZURE_35:Customer Insights (a multi-tenant SaaS without fixed addresses) writes the exports and the Flex Consumption app without VNet integration reads them, so a Deny default would block both; access is Entra ID RBAC scoped to the segments container.
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: Customer Insights and the Functions host reach this account over its public endpoint; anonymous blob access is off and shared keys are off by default.
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: allowSharedKeyAccess
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    // Blob soft delete stays OFF on the export account: Customer Insights exports to a storage
    // account fail when blob soft delete is enabled on it. The exports are reproducible (re-run
    // the export in Customer Insights), so nothing is lost by not keeping deleted blobs.
    deleteRetentionPolicy: {
      enabled: false
    }
    containerDeleteRetentionPolicy: {
      enabled: false
    }
  }
}

resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output id string = account.id
output name string = account.name
