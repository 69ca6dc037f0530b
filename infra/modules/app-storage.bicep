// The function app's own storage account: the Functions host and Durable Functions task hub
// (blobs, queues, tables), the Flex Consumption deployment package, and the app's data
// containers (export configuration, run workspaces, run reports). The app reaches it only with
// its managed identity, so shared-key access is off.

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

@description('Container that holds export definitions (CONFIG_CONTAINER).')
param configContainerName string

@description('Container that holds per-run working files (WORKSPACE_CONTAINER).')
param workspaceContainerName string

@description('Container that holds run reports and rejects files (REPORTS_CONTAINER).')
param reportsContainerName string

@description('Container Flex Consumption deploys the app package to.')
param deploymentContainerName string

@description('Container Event Grid dead-letters undeliverable blob events into.')
param deadLetterContainerName string

@description('Days that deleted blobs and containers can be restored.')
@minValue(1)
@maxValue(365)
param softDeleteRetentionDays int = 7

@description('Days after its last write that anything left in a run workspace is deleted, whatever became of the run (a finished run deletes its own at once).')
@minValue(1)
@maxValue(30)
param workspaceRetentionDays int = 3

@description('Days that run reports and rejects files are kept.')
@minValue(1)
@maxValue(3650)
param runRetentionDays int = 90

@description('Principal (object) id of the app identity.')
param appPrincipalId string

@description('Log Analytics workspace that receives the blob service audit logs.')
param logAnalyticsWorkspaceId string

// Built-in roles. Durable Functions needs all three services on the host account: blob leases
// (Blob Data Owner), work-item and control queues, and the history and instances tables.
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var appRoleIds = [
  storageBlobDataOwnerRoleId
  storageQueueDataContributorRoleId
  storageTableDataContributorRoleId
]
var dataContainerNames = [
  configContainerName
  workspaceContainerName
  reportsContainerName
  deploymentContainerName
  deadLetterContainerName
]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  // checkov:skip=CKV_AZURE_35:The Flex Consumption app has no VNet integration in this deployment, so its outbound addresses are not fixed and a Deny default would lock the Functions host out of its own storage; access is Entra ID only (shared keys off, RBAC-scoped identity).
  // checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: without VNet integration and private endpoints the Functions host reaches this account over its public endpoint; every request must carry an Entra ID token because shared-key access is disabled.
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
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
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
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
    // Soft delete protects export definitions and reports from an accidental delete. (The
    // segments account is different: Customer Insights exports need soft delete off there.)
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteRetentionDays
    }
  }
}

// What runs leave behind: a run deletes its workspace (every email of the segment) when it ends, and
// this rule deletes what a run that never ended left; reports and rejects files (rows with their
// reasons) go after the retention. Sync state (state/) and turns (locks/) are kept: they are the app's.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'delete-run-workspaces'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${workspaceContainerName}/runs/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: workspaceRetentionDays
                }
              }
            }
          }
        }
        {
          name: 'delete-old-run-reports'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${reportsContainerName}/runs/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: runRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
  dependsOn: [
    containers
  ]
}

resource containers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [
  for containerName in dataContainerNames: {
    parent: blobService
    name: containerName
    properties: {
      publicAccess: 'None'
    }
  }
]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource appRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in appRoleIds: {
    name: guid(account.id, appPrincipalId, roleId)
    scope: account
    properties: {
      principalId: appPrincipalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
    }
  }
]

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
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
