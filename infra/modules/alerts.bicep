// Operators hear about bad runs: an action group (email, optional webhook), three log query alerts
// on the app's run records and a workbook of runs per export. Every finished run logs one trace
// "run_finished {json}" (shared/finishing/telemetry.py); the queries read its JSON with parse_json.
// docs/OPERATIONS.md ("Alerts and the runs workbook") explains each rule and how to test it.

@description('Azure region of the alert rules and the workbook (the action group is global).')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@description('Resource id of the Application Insights component the app logs to.')
param applicationInsightsId string

@description('Name prefix of the alert rules and the action group.')
param namePrefix string

@description('Email addresses told when an alert fires.')
param emailReceivers array = []

@description('Optional webhook told when an alert fires (common alert schema). Not a secure parameter: no secret is a parameter here, so use a URL without a token.')
param webhookUrl string = ''

@description('Alert when a run rejects more than this percentage of the rows it read.')
@minValue(1)
@maxValue(100)
param rejectedSharePercent int = 5

@description('Alert when an export has had no successful run for this many hours (a segment that stopped refreshing). At most 46: the rule looks back two days.')
@minValue(1)
@maxValue(46)
param staleAfterHours int = 26

// The run records as rows: one per finished run, dry runs left out (they send nothing).
var runs = '''
traces
| where message startswith "run_finished "
| extend r = parse_json(substring(message, 13))
| where tobool(r.dry_run) == false
| extend export = tostring(r.export), run_id = tostring(r.run_id), status = tostring(r.status),
    rows_read = tolong(r.rows_read), rows_rejected = tolong(r.rows_rejected),
    profiles_submitted = tolong(r.profiles_submitted), profiles_failed = tolong(r.profiles_failed),
    profiles_removed = tolong(r.profiles_removed), duration_s = todouble(r.duration_s), error = tostring(r.error)
'''

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: 'ag-${namePrefix}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: take('runs${namePrefix}', 12)
    enabled: true
    emailReceivers: [for (address, i) in emailReceivers: {
      name: 'email-${i}'
      emailAddress: address
      useCommonAlertSchema: true
    }]
    webhookReceivers: empty(webhookUrl) ? [] : [
      {
        name: 'webhook'
        serviceUri: webhookUrl
        useCommonAlertSchema: true
      }
    ]
  }
}

resource failedRuns 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${namePrefix}-failed-runs'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Klaviyo sync: a run failed or partially succeeded'
    description: 'A run of an export ended failed (nothing committed) or partially_succeeded (Klaviyo refused some profiles). The export and status are the alert dimensions; the query results name the run ids, whose reports are runs/<export>/<run id>.json in run-reports.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: '${runs}| where status in ("failed", "partially_succeeded")'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'export'
              operator: 'Include'
              values: [
                '*'
              ]
            }
            {
              name: 'status'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource rejectedRows 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${namePrefix}-rejected-rows'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Klaviyo sync: a run rejected more than ${rejectedSharePercent}% of its rows'
    description: 'Rows that cannot be sent (missing or invalid email, bad bytes, wrong field count) are listed with partition, row and reason in the run\'s rejects file beside its report.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    criteria: {
      allOf: [
        {
          query: '${runs}| where rows_read > 0 and 100.0 * rows_rejected / rows_read > ${rejectedSharePercent}'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'export'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: false
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource staleExports 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: 'alert-${namePrefix}-stale-exports'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Klaviyo sync: an export has had no successful run for ${staleAfterHours} hours'
    description: 'Exports that ran in the last two days but whose last succeeded or partially_succeeded run is older than ${staleAfterHours} hours: the segment stopped refreshing, or its runs keep failing.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'P2D'
    criteria: {
      allOf: [
        {
          query: '${runs}| summarize last_success = maxif(timestamp, status in ("succeeded", "partially_succeeded")), first_seen = min(timestamp) by export\n| where coalesce(last_success, first_seen) < ago(${staleAfterHours}h)'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'export'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// Runs per export over time: profiles sent, failed, rejected rows, duration, and the last runs.
var workbookItems = [
  {
    type: 1
    content: {
      json: '## Klaviyo sync runs\nOne row per finished run (dry runs left out), from the app\'s `run_finished` traces.'
    }
    name: 'title'
  }
  {
    type: 3
    content: {
      version: 'KqlItem/1.0'
      query: '${runs}| summarize profiles_sent = sum(profiles_submitted), profiles_failed = sum(profiles_failed), rows_rejected = sum(rows_rejected) by bin(timestamp, 1d), export\n| order by timestamp asc'
      size: 0
      title: 'Profiles sent, failed and rows rejected per export per day (30 days)'
      timeContext: {
        durationMs: 2592000000
      }
      queryType: 0
      resourceType: 'microsoft.insights/components'
      visualization: 'barchart'
    }
    name: 'per-day'
  }
  {
    type: 3
    content: {
      version: 'KqlItem/1.0'
      query: '${runs}| project timestamp, export, duration_s\n| order by timestamp asc'
      size: 0
      title: 'Run duration (s) per export'
      timeContext: {
        durationMs: 2592000000
      }
      queryType: 0
      resourceType: 'microsoft.insights/components'
      visualization: 'timechart'
    }
    name: 'duration'
  }
  {
    type: 3
    content: {
      version: 'KqlItem/1.0'
      query: '${runs}| project timestamp, export, status, run_id, rows_read, rows_rejected, profiles_submitted, profiles_failed, profiles_removed, duration_s, error\n| order by timestamp desc\n| take 200'
      size: 0
      title: 'Last runs'
      timeContext: {
        durationMs: 2592000000
      }
      queryType: 0
      resourceType: 'microsoft.insights/components'
      visualization: 'table'
    }
    name: 'last-runs'
  }
]

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, applicationInsightsId, 'klaviyo-sync-runs')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Klaviyo sync: runs per export'
    category: 'workbook'
    sourceId: applicationInsightsId
    serializedData: string({
      version: 'Notebook/1.0'
      items: workbookItems
      isLocked: false
      fallbackResourceIds: [
        applicationInsightsId
      ]
    })
  }
}

output actionGroupId string = actionGroup.id
output alertRuleNames array = [
  failedRuns.name
  rejectedRows.name
  staleExports.name
]
output workbookId string = workbook.id
