// BlobCreated subscriptions of the segments system topic, delivered to the on_segment_export
// blob trigger's webhook. Deployed in the second pass (deployEventSubscription=true), after the
// code is published: the webhook needs the blobs_extension system key, which the Functions host
// creates only once the blob extension has been loaded by published code. The key is read at
// deployment time with listKeys; it is never a parameter, an output or an app setting.

@description('Name of the existing system topic on the segments account.')
param systemTopicName string

@description('Resource id of the function app.')
param functionAppId string

@description('Default host name of the function app.')
param functionAppHostName string

@description('Name of the blob trigger function.')
param functionName string = 'on_segment_export'

@description('Container Customer Insights exports to.')
param segmentsContainerName string

@description('Prefix (inside the container) of plain CSV drops.')
param csvPrefix string

@description('Resource id of the storage account holding the dead-letter container.')
param deadLetterStorageAccountId string

@description('Container that receives events Event Grid could not deliver.')
param deadLetterContainerName string

@description('Delivery attempts before an event is dead-lettered.')
@minValue(1)
@maxValue(30)
param maxDeliveryAttempts int = 30

@description('Minutes Event Grid keeps retrying an event before it is dead-lettered.')
@minValue(1)
@maxValue(1440)
param eventTimeToLiveInMinutes int = 1440

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

var subjectPrefix = '/blobServices/default/containers/${segmentsContainerName}/blobs/'
// The blob extension's system key, read from the host at deployment time (second pass only).
var blobsExtensionKey = listKeys('${functionAppId}/host/default', '2024-04-01').systemKeys.blobs_extension
var webhookUrl = 'https://${functionAppHostName}/runtime/webhooks/blobs?functionName=Host.Functions.${functionName}&code=${blobsExtensionKey}'

// Only blobs with their content: Data Lake's CreateFile (hierarchical-namespace accounts) and SFTP's
// SftpCreate announce an empty file before its data is written; the write that completes it
// (FlushWithClose, SftpCommit) raises its own BlobCreated. Every other BlobCreated API (PutBlob,
// PutBlockList, CopyBlob, ...) is a complete blob.
var completedWriteFilter = {
  operatorType: 'StringNotIn'
  key: 'data.api'
  values: [
    'CreateFile'
    'SftpCreate'
  ]
}

var deadLetter = {
  identity: {
    type: 'SystemAssigned'
  }
  deadLetterDestination: {
    endpointType: 'StorageBlob'
    properties: {
      resourceId: deadLetterStorageAccountId
      blobContainerName: deadLetterContainerName
    }
  }
}

var retryPolicy = {
  maxDeliveryAttempts: maxDeliveryAttempts
  eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
}

// A Customer Insights export is complete when its model.json is written: one run per export.
resource modelJson 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: 'segment-export-model-json'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: webhookUrl
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: subjectPrefix
      subjectEndsWith: '/model.json'
      // The app matches the file name model.json exactly.
      isSubjectCaseSensitive: true
      advancedFilters: [
        completedWriteFilter
      ]
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

// Plain CSV drops under the CSV prefix (CSV_PREFIX) start a run each. The app matches '.csv'
// case-insensitively and then each export's own path prefix, so this filter is a superset of it.
resource csvDrops 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: 'segment-export-csv-drops'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: webhookUrl
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobCreated'
      ]
      subjectBeginsWith: '${subjectPrefix}${csvPrefix}'
      subjectEndsWith: '.csv'
      isSubjectCaseSensitive: false
      advancedFilters: [
        completedWriteFilter
      ]
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

output subscriptionNames array = [
  modelJson.name
  csvDrops.name
]
