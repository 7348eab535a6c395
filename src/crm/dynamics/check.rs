//! `softphone-bridge doctor`'s check of a Dynamics connection: a token, the
//! application user it maps to, and the privileges the bridge needs.

use super::DynamicsCrm;

/// What writing phone calls needs (activities' privileges), and the lookup.
const WRITE: [&str; 2] = ["prvCreateActivity", "prvWriteActivity"];
const LOOKUP: [&str; 2] = ["prvReadContact", "prvReadAccount"];

impl DynamicsCrm {
    /// What was checked, or why the connection cannot work.
    pub(super) async fn check_environment(&self) -> Result<String, String> {
        self.tokens
            .get()
            .await
            .map_err(|e| format!("no token: {e}"))?;
        let me = self.get("WhoAmI").await.map_err(|e| {
            format!("WhoAmI failed (is the app an application user of the environment?): {e}")
        })?;
        let user = me["UserId"]
            .as_str()
            .ok_or("WhoAmI answered without a UserId")?;
        let privileges = self
            .get(&format!(
                "systemusers({user})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()"
            ))
            .await
            .map_err(|e| format!("cannot read the application user's privileges: {e}"))?;
        let held: Vec<&str> = privileges["RolePrivileges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["PrivilegeName"].as_str())
            .collect();
        let needed = WRITE.iter().chain(if self.settings.lookup.enabled {
            &LOOKUP[..]
        } else {
            &[]
        });
        let missing: Vec<&str> = needed.filter(|p| !held.contains(p)).copied().collect();
        if !missing.is_empty() {
            return Err(format!(
                "the application user {user} lacks {} (give its security role Create and Write on Activity{})",
                missing.join(", "),
                if self.settings.lookup.enabled {
                    ", Read on Contact and Account"
                } else {
                    ""
                }
            ));
        }
        Ok(format!(
            "token obtained; application user {user} may create and write phone calls"
        ))
    }
}
