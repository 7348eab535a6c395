//! The fake org's records: Tasks created and upserted by external id (field
//! lengths checked, scripted item errors), SOQL reads and Composite calls.

use serde_json::json;

use super::*;

impl Org {
    /// `{"allOrNone": false, "records": [...]}`: at most 200 records.
    pub(super) fn records(&self, body: &Value) -> Option<Vec<Value>> {
        assert_eq!(body["allOrNone"], false, "each record on its own");
        let records = body["records"].as_array().cloned().unwrap_or_default();
        (records.len() <= 200).then_some(records)
    }

    /// A scripted error for the next record written, else none.
    pub(super) fn item_error(&mut self) -> Option<Value> {
        self.item_errors
            .pop_front()
            .map(|code| json!({"id": null, "success": false, "errors": [{"statusCode": code, "message": code, "fields": []}]}))
    }

    pub(super) fn create_task(&mut self, body: Map<String, Value>) -> Value {
        if let Some(error) = self.item_error() {
            return error;
        }
        let key = body[EXTERNAL_ID]
            .as_str()
            .expect("the external id is set on create")
            .to_owned();
        if self.tasks.contains_key(&key) {
            return json!({"success": false, "errors": [{
                "statusCode": "DUPLICATE_VALUE",
                "message": format!("duplicate value found: {EXTERNAL_ID} duplicates value on record with id: 00Tx"),
                "fields": []
            }]});
        }
        if let Some(error) = self.check_lengths(&body) {
            return error;
        }
        self.writes.push((
            std::time::Instant::now(),
            key.clone(),
            body.keys().cloned().collect(),
        ));
        let mut task = Map::new();
        task.insert("Status".into(), "Not Started".into());
        task.extend(body);
        self.tasks.insert(key, task);
        json!({"id": "00Tnew", "success": true, "errors": []})
    }

    pub(super) fn upsert_task(&mut self, key: &str, body: Map<String, Value>) -> Value {
        if let Some(error) = self.item_error() {
            return error;
        }
        if let Some(error) = self.check_lengths(&body) {
            return error;
        }
        if !(self.tasks.contains_key(key) && body.contains_key("TaskSubtype")) {
            self.writes.push((
                std::time::Instant::now(),
                key.to_owned(),
                body.keys().cloned().collect(),
            ));
        }
        match self.tasks.get_mut(key) {
            Some(task) => {
                if body.contains_key("TaskSubtype") {
                    return json!({"success": false, "errors": [{
                        "statusCode": "INVALID_FIELD_FOR_INSERT_UPDATE",
                        "message": "Unable to create/update fields: TaskSubtype.",
                        "fields": ["TaskSubtype"]
                    }]});
                }
                task.extend(body);
                json!({"id": "00Tx", "success": true, "errors": [], "created": false})
            }
            None => {
                let mut task = Map::new();
                task.insert("Status".into(), "Not Started".into());
                task.extend(body);
                task.insert(EXTERNAL_ID.into(), Value::String(key.to_owned()));
                self.tasks.insert(key.to_owned(), task);
                json!({"id": "00Tx", "success": true, "errors": [], "created": true})
            }
        }
    }

    /// Salesforce's limits on the standard Task fields it would refuse.
    pub(super) fn check_lengths(&self, body: &Map<String, Value>) -> Option<Value> {
        let standard = [
            ("Description", 32_000),
            ("CallDisposition", 255),
            ("Subject", 255),
        ];
        let custom = self.field_limits.iter().map(|(f, n)| (f.as_str(), *n));
        for (field, max) in standard.into_iter().chain(custom) {
            if body
                .get(field)
                .and_then(Value::as_str)
                .is_some_and(|v| v.chars().count() > max)
            {
                return Some(json!({"success": false, "errors": [{
                    "statusCode": "STRING_TOO_LONG",
                    "message": format!("{field}: data value too large"),
                    "fields": [field]
                }]}));
            }
        }
        if body
            .get("CallDurationInSeconds")
            .and_then(Value::as_u64)
            .is_some_and(|d| d > i32::MAX as u64)
        {
            return Some(json!({"success": false, "errors": [{
                "statusCode": "NUMBER_OUTSIDE_VALID_RANGE",
                "message": "CallDurationInSeconds: value outside of valid range",
                "fields": ["CallDurationInSeconds"]
            }]}));
        }
        None
    }

    /// `SELECT a, b FROM Task WHERE <ext> IN ('x', 'y')`.
    pub(super) fn query(&mut self, soql: &str) -> (u16, Value) {
        let select = soql
            .strip_prefix("SELECT ")
            .and_then(|rest| rest.split_once(" FROM Task WHERE "));
        let Some((fields, condition)) = select else {
            return (
                400,
                json!([{"message": format!("unexpected query {soql}"), "errorCode": "MALFORMED_QUERY"}]),
            );
        };
        let prefix = format!("{EXTERNAL_ID} IN (");
        let ids: Vec<String> = condition
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unexpected condition {condition}"))
            .split(", ")
            .map(|id| id.trim_matches('\'').to_owned())
            .collect();
        self.queried.push(ids.clone());
        let fields: Vec<&str> = fields.split(", ").collect();
        let records: Vec<Value> = ids
            .iter()
            .filter_map(|id| self.tasks.get(id))
            .map(|task| {
                let mut record = Map::new();
                record.insert("attributes".into(), json!({"type": "Task"}));
                for field in &fields {
                    record.insert(
                        (*field).to_owned(),
                        task.get(*field).cloned().unwrap_or(Value::Null),
                    );
                }
                Value::Object(record)
            })
            .collect();
        (
            200,
            json!({"totalSize": records.len(), "done": true, "records": records}),
        )
    }

    /// Up to 25 subrequests, each answered on its own, in order.
    pub(super) fn composite(&mut self, body: Value) -> (u16, Value) {
        assert_eq!(body["allOrNone"], false);
        let requests = body["compositeRequest"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if requests.len() > 25 {
            return (
                400,
                json!([{"message": "more than 25 subrequests", "errorCode": "LIMIT_EXCEEDED"}]),
            );
        }
        let url = |sub: &Value| {
            sub["url"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("/services/data/v67.0/")
                .to_owned()
        };
        // Composite takes sObject, query and sObject Collections resources,
        // at most 5 queries or collections.
        if let Some(sub) = requests.iter().find(|sub| url(sub).starts_with("search")) {
            return (
                400,
                json!([{"message": format!("Unsupported resource in a composite subrequest: {}", url(sub)), "errorCode": "INVALID_API_INPUT"}]),
            );
        }
        let heavy = requests
            .iter()
            .filter(|sub| {
                let url = url(sub);
                url.starts_with("query") || url.starts_with("composite/sobjects")
            })
            .count();
        if heavy > 5 {
            return (
                400,
                json!([{"message": "more than 5 query or sObject Collections subrequests", "errorCode": "LIMIT_EXCEEDED"}]),
            );
        }
        let responses: Vec<Value> = requests
            .into_iter()
            .map(|sub| {
                let url = url::Url::parse(&format!("http://x{}", sub["url"].as_str().unwrap())).unwrap();
                let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
                let (status, body) = self.route(
                    sub["method"].as_str().unwrap(),
                    url.path(),
                    &query,
                    sub["body"].clone(),
                );
                json!({"body": body, "httpHeaders": {}, "httpStatusCode": status, "referenceId": sub["referenceId"]})
            })
            .collect();
        (200, json!({ "compositeResponse": responses }))
    }
}
