// The segments account as the app uses it, new or existing: the segments container, the poison
// queue of the blob trigger, and least-privilege role assignments. Deployed to the account's
// resource group. It never changes the settings of an existing account.

@description('Name of the segments storage account (it must exist when this module runs).')
param accountName string

@description('Container Customer Insights exports to (SEGMENTS_CONTAINER).')
param containerName string

@description('Principal (object) id of the app identity.')
param appPrincipalId string

@description('Object id of the Customer Insights service principal ("Dynamics 365 AI for Customer Insights") in this tenant; empty to grant nothing.')
param customerInsightsPrincipalId string = ''

// Built-in roles.
var storageBlobDataReaderRoleId = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'

// The blob trigger writes a message here after its last retry of a blob fails. The Functions
// blob extension puts it on the account named by the trigger's connection (SEGMENTS_STORAGE),
// so it lives on this account, not on the app's.
var poisonQueueName = 'webjobs-blobtrigger-poison'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: accountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: poisonQueueName
}

// The app only reads exports: Blob Data Reader on the segments container, not the account.
resource appReadsSegments 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(container.id, appPrincipalId, storageBlobDataReaderRoleId)
  scope: container
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReaderRoleId)
  }
}

// The only write the app makes on this account: poison messages, scoped to that one queue.
resource appWritesPoisonQueue 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(poisonQueue.id, appPrincipalId, storageQueueDataContributorRoleId)
  scope: poisonQueue
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
  }
}

// Customer Insights writes the exports: Blob Data Contributor on the segments container only.
resource customerInsightsWritesSegments 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(customerInsightsPrincipalId)) {
  name: guid(container.id, customerInsightsPrincipalId, storageBlobDataContributorRoleId)
  scope: container
  properties: {
    principalId: customerInsightsPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
  }
}

output id string = account.id
output location string = account.location
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output containerName string = container.name
