//! What the Salesforce CRM does besides Tasks: agent presence and the
//! disposition picklist.

use reqwest::Method;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::SalesforceCrm;
use crate::contract::AgentStatusChanged;
use crate::crm::CrmError;
use crate::crm::PresenceAction;

impl SalesforceCrm {
    pub(super) async fn presence(&self, event: &AgentStatusChanged) -> Result<(), CrmError> {
        let p = &self.settings.presence;
        let (Some(object), PresenceAction::PlatformEvent | PresenceAction::Upsert) =
            (&p.object, p.action)
        else {
            return Ok(());
        };
        let status_id = event.softphone_id.as_str();
        let status = p
            .statuses
            .get(&event.softphone_id)
            .map_or(status_id, String::as_str);
        let status_field = p.status_field.as_deref().unwrap_or("Status__c");
        let agent_field = p.agent_field.as_deref().unwrap_or("Agent_Id__c");
        let agent = event.instance_id.as_ref().map(|a| a.as_str());
        match p.action {
            PresenceAction::PlatformEvent => {
                let mut body = json!({ status_field: status, "Status_Id__c": status_id });
                if let Some(agent) = agent {
                    body[agent_field] = Value::String(agent.to_owned());
                }
                let path = self.data_path(&format!("sobjects/{object}/"));
                self.call(Method::POST, &path, &[], Some(&body), &[])
                    .await
                    .map(drop)
            }
            PresenceAction::Upsert => {
                let Some(agent) = agent else {
                    tracing::warn!(crm = %self.name, status_id, "statusChanged names no agent (instanceId); presence not written.");
                    return Ok(());
                };
                // A softphone id may hold `/`, `?` or `#`: one path segment, encoded.
                let agent: String =
                    url::form_urlencoded::byte_serialize(agent.as_bytes()).collect();
                let path = self.data_path(&format!("sobjects/{object}/{agent_field}/{agent}"));
                let body = json!({ status_field: status });
                self.call(Method::PATCH, &path, &[], Some(&body), &[])
                    .await
                    .map(drop)
            }
            PresenceAction::None => Ok(()),
        }
    }

    /// The active values of the configured disposition picklist (describe,
    /// cached); `None` when no picklist is configured.
    pub async fn picklist_dispositions(&self) -> Result<Option<Vec<String>>, CrmError> {
        let Some(source) = &self.settings.dispositions else {
            return Ok(None);
        };
        let mut cached = self.dispositions.lock().await;
        if let Some((at, values)) = cached.as_ref()
            && at.elapsed() < source.cache_for
        {
            return Ok(Some(values.clone()));
        }
        let path = self.data_path(&format!("sobjects/{}/describe", source.object));
        let describe = self.call(Method::GET, &path, &[], None, &[]).await?.json();
        let values: Vec<String> = describe["fields"]
            .as_array()
            .and_then(|fields| fields.iter().find(|f| f["name"] == source.field.as_str()))
            .and_then(|field| field["picklistValues"].as_array())
            .ok_or_else(|| CrmError::Permanent {
                reason: format!(
                    "{}.{} is not a picklist of the org",
                    source.object, source.field
                ),
                detail: None,
            })?
            .iter()
            .filter(|v| v["active"].as_bool().unwrap_or(true))
            .filter_map(|v| v["value"].as_str().map(str::to_owned))
            .collect();
        *cached = Some((Instant::now(), values.clone()));
        Ok(Some(values))
    }
}
