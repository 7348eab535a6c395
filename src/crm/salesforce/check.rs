//! `softphone-bridge doctor`'s check of a Salesforce connection: a token, and
//! the Task field upserts key on, as they need it.

use reqwest::Method;

use super::SalesforceCrm;

impl SalesforceCrm {
    /// What was checked, or why the connection cannot work.
    pub(super) async fn check_org(&self) -> Result<String, String> {
        self.tokens
            .get()
            .await
            .map_err(|e| format!("no token: {e}"))?;
        let path = self.data_path("sobjects/Task/describe");
        let describe = self
            .call(Method::GET, &path, &[], None, &[])
            .await
            .map_err(|e| format!("cannot describe Task: {e}"))?
            .json();
        let name = &self.settings.external_id_field;
        let field = describe["fields"]
            .as_array()
            .and_then(|fields| fields.iter().find(|f| f["name"] == name.as_str()))
            .ok_or_else(|| format!("Task has no field {name} (external_id_field)"))?;
        // Upserts on a field that is not an External ID are refused; one that
        // is not Unique lets two Tasks share a conversation.
        let lacking: Vec<&str> = [("externalId", "an External ID"), ("unique", "Unique")]
            .into_iter()
            .filter(|(attribute, _)| field[*attribute] != true)
            .map(|(_, label)| label)
            .collect();
        if !lacking.is_empty() {
            return Err(format!(
                "Task.{name} is not {} (Setup → Object Manager → Activity → Fields)",
                lacking.join(" and ")
            ));
        }
        Ok(format!(
            "token obtained; Task.{name} is an External ID and Unique"
        ))
    }
}
