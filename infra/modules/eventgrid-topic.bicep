// Event Grid system topic for the segments storage account. Deployed to the account's resource
// group. An account has at most one system topic: if it already has one, pass that topic's name
// (main.bicep: segmentsSystemTopicName) and this PUT updates it instead of failing.

@description('Name of the system topic.')
param name string

@description('Region of the segments storage account (a system topic lives in its source\'s region).')
param location string

@description('Tags applied to the topic.')
param tags object = {}

@description('Resource id of the segments storage account.')
param storageAccountId string

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: name
  location: location
  tags: tags
  // The topic's own identity writes undeliverable events to the dead-letter container.
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: storageAccountId
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output name string = topic.name
output principalId string = topic.identity.principalId
