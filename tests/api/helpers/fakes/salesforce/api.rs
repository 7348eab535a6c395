//! The fake org's REST API: the bearer checked, scripted answers first, then
//! each resource routed (Tasks, SOSL search, Platform Events, presence,
//! describe, Composite).

use serde_json::json;

use super::*;

pub(super) fn error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!([{ "message": message, "errorCode": code }]))
}

impl Org {
    pub(super) fn api(&mut self, request: &Request) -> ResponseTemplate {
        let bearer = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !self.valid_tokens.contains(bearer) {
            return error(401, "INVALID_SESSION_ID", "Session expired or invalid");
        }
        if let Some(scripted) = self.script.pop_front() {
            return scripted;
        }
        let query: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        let body = serde_json::from_slice::<Value>(&request.body).unwrap_or(Value::Null);
        let (status, body) = self.route(request.method.as_str(), request.url.path(), &query, body);
        ResponseTemplate::new(status).set_body_json(body)
    }

    /// One REST request (alone or a Composite subrequest): status and body.
    pub(super) fn route(
        &mut self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Value,
    ) -> (u16, Value) {
        let not_found = || {
            (
                404,
                json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}]),
            )
        };
        let Some(rest) = path.strip_prefix("/services/data/v67.0/") else {
            return not_found();
        };
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let q = || {
            query
                .iter()
                .find(|(k, _)| k == "q")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let object = || body.as_object().cloned().unwrap_or_default();
        match (method, parts.as_slice()) {
            ("POST", ["composite"]) => self.composite(body),
            ("GET", ["search"]) => {
                // `FIND {a OR b} IN PHONE FIELDS RETURNING ...`: a person
                // matches a term holding the same digits as their phone.
                let q = q();
                let terms: Vec<String> = q
                    .strip_prefix("FIND {")
                    .and_then(|rest| rest.split_once("} IN PHONE FIELDS RETURNING "))
                    .map(|(terms, _)| terms.split(" OR ").map(digits).collect())
                    .unwrap_or_default();
                let records: Vec<Value> = self
                    .people
                    .iter()
                    .filter(|(_, _, _, phone)| terms.contains(&digits(phone)))
                    .map(|(object, id, name, phone)| json!({"attributes": {"type": object}, "Id": id, "Name": name, "Phone": phone, "MobilePhone": null}))
                    .collect();
                (200, json!({ "searchRecords": records }))
            }
            ("GET", ["query"]) => self.query(&q()),
            ("POST", ["composite", "sobjects"]) => {
                let Some(records) = self.records(&body) else {
                    return collection_limit();
                };
                if let Some(bad) = records.iter().find(|r| {
                    let t = r["attributes"]["type"].as_str().unwrap_or("");
                    t != "Task" && !t.ends_with("__e")
                }) {
                    return (
                        400,
                        json!([{"message": format!("sObject type '{}' is not supported.", bad["attributes"]["type"]), "errorCode": "INVALID_TYPE"}]),
                    );
                }
                self.collection_requests += 1;
                let results: Vec<Value> = records
                    .into_iter()
                    .map(|mut record| {
                        let t = record["attributes"]["type"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned();
                        record.as_object_mut().unwrap().remove("attributes");
                        if t == "Task" {
                            self.create_task(record.as_object().unwrap().clone())
                        } else {
                            self.events.push((t, record));
                            json!({"id": "e00x", "success": true, "errors": []})
                        }
                    })
                    .collect();
                (200, Value::Array(results))
            }
            ("PATCH", ["composite", "sobjects", "Task", field]) if *field == EXTERNAL_ID => {
                let Some(records) = self.records(&body) else {
                    return collection_limit();
                };
                self.collection_requests += 1;
                let results: Vec<Value> = records
                    .into_iter()
                    .map(|record| {
                        let mut record = record.as_object().unwrap().clone();
                        assert_eq!(record.remove("attributes").unwrap()["type"], "Task");
                        let key = record
                            .remove(EXTERNAL_ID)
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .expect("each record names its external id");
                        self.upsert_task(&key, record)
                    })
                    .collect();
                (200, Value::Array(results))
            }
            ("POST", ["sobjects", "Task"]) => {
                let result = self.create_task(object());
                if result["success"] == true {
                    (201, result)
                } else {
                    (400, result["errors"].clone())
                }
            }
            ("GET", ["sobjects", "Task", field, key]) if *field == EXTERNAL_ID => {
                match self.tasks.get(*key) {
                    Some(task) => (200, Value::Object(task.clone())),
                    None => not_found(),
                }
            }
            ("PATCH", ["sobjects", "Task", field, key]) if *field == EXTERNAL_ID => {
                let body = object();
                assert!(
                    !body.contains_key(EXTERNAL_ID),
                    "the external id is in the path, not the body"
                );
                let result = self.upsert_task(key, body);
                match result["success"] == true {
                    true if result["created"] == true => (201, result),
                    true => (200, result),
                    false => (400, result["errors"].clone()),
                }
            }
            ("POST", ["sobjects", event]) if event.ends_with("__e") => {
                self.events.push(((*event).to_owned(), body));
                (201, json!({"id": "e00x", "success": true, "errors": []}))
            }
            ("PATCH", ["sobjects", _object, _field, agent]) => {
                self.presence
                    .entry((*agent).to_owned())
                    .or_default()
                    .extend(object());
                (
                    201,
                    json!({"id": "a00x", "success": true, "errors": [], "created": true}),
                )
            }
            // Field describes as Salesforce gives them (a subset of each
            // field's attributes): upserts need `externalId` and `unique`.
            ("GET", ["sobjects", "Task", "describe"]) => (
                200,
                json!({
                    "name": "Task",
                    "label": "Task",
                    "custom": false,
                    "fields": [
                        {"name": "Id", "label": "Activity ID", "type": "id", "length": 18,
                         "custom": false, "unique": false, "externalId": false, "idLookup": true,
                         "nillable": false, "caseSensitive": false, "picklistValues": []},
                        {"name": "Subject", "label": "Subject", "type": "combobox", "length": 255,
                         "custom": false, "unique": false, "externalId": false, "idLookup": false,
                         "nillable": true, "caseSensitive": false, "picklistValues": []},
                        {"name": EXTERNAL_ID, "label": "Softphone Conversation Id", "type": "string",
                         "length": 64, "custom": true, "unique": !self.external_id_not_unique,
                         "externalId": true, "idLookup": true, "nillable": true,
                         "caseSensitive": false, "picklistValues": []},
                        {"name": "Call_Result__c", "label": "Call Result", "type": "picklist",
                         "length": 255, "custom": true, "unique": false, "externalId": false,
                         "idLookup": false, "nillable": true, "caseSensitive": false,
                         "picklistValues": [
                            {"value": "Booked", "label": "Booked", "active": true, "defaultValue": false, "validFor": null},
                            {"value": "Retired", "label": "Retired", "active": false, "defaultValue": false, "validFor": null},
                            {"value": "Call back", "label": "Call back", "active": true, "defaultValue": false, "validFor": null}
                        ]}
                    ]
                }),
            ),
            _ => not_found(),
        }
    }
}

fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

fn collection_limit() -> (u16, Value) {
    (
        400,
        json!([{"message": "Maximum number of records exceeded: 200", "errorCode": "EXCEEDED_ID_LIMIT"}]),
    )
}
