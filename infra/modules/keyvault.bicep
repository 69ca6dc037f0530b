// Key Vault for the Klaviyo API keys of the connections. Azure RBAC authorization (no access
// policies), soft delete and purge protection. The template declares no secret: keys are written
// by the connections API (PUT /api/connections/{name}) or by an operator with
// `az keyvault secret set` (docs/OPERATIONS.md).

@description('Name of the vault (3-24 letters, digits and hyphens).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Tags applied to the vault.')
param tags object = {}

@description('Principal (object) id of the app identity.')
param appPrincipalId string

@description('true: the app gets Key Vault Secrets Officer on this vault so PUT /api/connections/{name} can store keys. false: Key Vault Secrets User (read only) and keys are set out of band.')
param appCanWriteSecrets bool = true

@description('Object id of an operator user or group that manages keys by hand; empty for none.')
param operatorPrincipalId string = ''

@description('Type of operatorPrincipalId.')
@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
param operatorPrincipalType string = 'Group'

@description('Days a deleted vault or secret can be recovered.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Log Analytics workspace that receives the vault audit logs.')
param logAnalyticsWorkspaceId string

// Built-in roles.
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultSecretsOfficerRoleId = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

// Secrets Officer (not User) when the connections API writes keys: the API creates secrets whose
// names are not known at deploy time, and a role scoped to a single secret needs that secret to
// exist, so the narrowest scope that works is this vault, which holds nothing but the
// connections' keys. It still grants no key, certificate or access-management permission.
var appRoleId = appCanWriteSecrets ? keyVaultSecretsOfficerRoleId : keyVaultSecretsUserRoleId

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  // checkov:skip=CKV_AZURE_109:The Flex Consumption app has no VNet integration in this deployment and Functions is not a trusted service for the Key Vault firewall, so a Deny default would block the app; every call needs an Entra ID token with an RBAC role on this vault.
  // checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109: the app and operators reach the vault over its public endpoint; authorization is Entra ID RBAC only (no access policies), with purge protection on.
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource appSecretsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, appRoleId)
  scope: vault
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', appRoleId)
  }
}

resource operatorSecretsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(operatorPrincipalId)) {
  name: guid(vault.id, operatorPrincipalId, keyVaultSecretsOfficerRoleId)
  scope: vault
  properties: {
    principalId: operatorPrincipalId
    principalType: operatorPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficerRoleId)
  }
}

resource vaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
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

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
