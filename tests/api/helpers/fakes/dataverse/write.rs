//! Writes: a phone call upserted (conditions, the state model, plug-in
//! refusals), applied and, inside a failed change set, rolled back.

use super::*;

impl Org {
    /// `PATCH phonecalls(<id>)` (upsert; `If-Match: *` update only,
    /// `If-None-Match: *` create only) or `POST phonecalls` (`create`).
    pub(super) fn upsert(
        &mut self,
        id: &str,
        params: &[(String, String)],
        headers: &[(String, String)],
        body: &[u8],
        create: bool,
    ) -> Reply {
        let set = "phonecalls";
        let Ok(json) = serde_json::from_slice::<Value>(body) else {
            return payload_error(
                set,
                "Microsoft.OData.ODataException: Does not support untyped value in non-open type.",
            );
        };
        let Some(object) = json.as_object() else {
            return payload_error(
                set,
                "Microsoft.OData.ODataException: An entry was expected in the payload.",
            );
        };
        let parsed = match self.parse_phonecall(object, id) {
            Ok(parsed) => parsed,
            Err(error) => return error,
        };
        let existing = self.phonecalls.get(id).cloned();
        let if_match = condition(headers, "if-match");
        let if_none_match = if create {
            Some("*")
        } else {
            condition(headers, "if-none-match")
        };
        match (&existing, if_match) {
            (None, Some(_)) => return not_exist("phonecall", id),
            (Some(record), Some(tag)) if tag != "*" => {
                let version = record
                    .get("versionnumber")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if tag != format!("W/\"{version}\"") {
                    return odata_error(
                        412,
                        "0x80060882",
                        "The version of the existing record doesn't match the RowVersion property provided.",
                    );
                }
            }
            _ => {}
        }
        if existing.is_some() && if_none_match == Some("*") {
            return odata_error(
                412,
                "0x80040237",
                "A record with matching key values already exists.",
            );
        }
        let creating = existing.is_none();
        let privilege = if creating {
            "prvCreateActivity"
        } else {
            "prvWriteActivity"
        };
        if let Some(denied) = self.missing_privilege(privilege, "phonecall", 4210) {
            return denied;
        }
        let (state, status) = existing
            .as_ref()
            .map(|r| {
                (
                    r.get("statecode").and_then(Value::as_i64).unwrap_or(0),
                    r.get("statuscode").and_then(Value::as_i64).unwrap_or(1),
                )
            })
            .unwrap_or((0, 1));
        // A completed or canceled activity is read-only: only its state may change.
        if !creating && state != 0 && parsed.touches_other {
            return inactive();
        }
        for (name, value, column) in &parsed.columns {
            match (column, value) {
                (Column::Text(max) | Column::Memo(max), Value::String(s))
                    if s.encode_utf16().count() > *max =>
                {
                    return too_long("phonecall", name, *max);
                }
                (Column::Integer(min, max), Value::Number(n)) => {
                    let n = n.as_i64().unwrap_or(i64::MAX);
                    if n < *min || n > *max {
                        return out_of_range(name, n, *min, *max);
                    }
                }
                _ => {}
            }
        }
        // statecode isn't valid for create: a new record is Open whatever the
        // body says, and its statuscode must be an Open one.
        let new_state = if creating {
            match parsed.statuscode {
                Some(s) if state_of(s) != Some(0) => return bad_status(s, 0, id),
                Some(s) => (0, s),
                None => (0, 1),
            }
        } else {
            match (parsed.statecode, parsed.statuscode) {
                (Some(st), Some(ss)) => {
                    if default_status(st).is_none() {
                        return bad_state();
                    }
                    if state_of(ss) != Some(st) {
                        return bad_status(ss, st, id);
                    }
                    (st, ss)
                }
                (Some(st), None) => match default_status(st) {
                    Some(ss) => (st, ss),
                    None => return bad_state(),
                },
                (None, Some(ss)) => {
                    if state_of(ss) != Some(state) {
                        return bad_status(ss, state, id);
                    }
                    (state, ss)
                }
                (None, None) => (state, status),
            }
        };
        if let Some(Some((logical, target))) = &parsed.regarding
            && !self.exists(logical, target)
        {
            return not_exist(logical, target);
        }
        for party in parsed.parties.iter().flatten() {
            if let Some((logical, target)) = &party.party
                && !self.exists(logical, target)
            {
                return not_exist(logical, target);
            }
        }
        if self.refuse.iter().any(|r| r.eq_ignore_ascii_case(id)) {
            return odata_error(400, "0x80040265", REFUSAL);
        }
        self.apply(id, object, parsed, new_state, creating);
        let entity_id = format!("{}{API_PATH}phonecalls({id})", self.base);
        if wants_representation(headers) {
            let select = match self.select(set, params) {
                Ok(select) => select,
                Err(error) => return error,
            };
            let mut value = Org::render(
                set,
                &self.phonecalls[id],
                select.as_deref(),
                false,
                annotations(headers),
            );
            value.as_object_mut().unwrap().insert(
                "@odata.context".into(),
                json!(self.context(set, select.as_deref(), true)),
            );
            return Reply::json(if creating { 201 } else { 200 }, value)
                .header("Preference-Applied", "return=representation")
                .header("OData-EntityId", &entity_id);
        }
        let reply = Reply::empty(204);
        if create {
            reply
                .header("Location", &entity_id)
                .header("OData-EntityId", &entity_id)
        } else {
            reply.header("OData-EntityId", &entity_id)
        }
    }

    pub(super) fn exists(&self, logical: &str, id: &str) -> bool {
        match logical {
            "contact" => self.contacts.iter().any(|c| {
                c.get("contactid")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.eq_ignore_ascii_case(id))
            }),
            "account" => self.accounts.iter().any(|c| {
                c.get("accountid")
                    .and_then(Value::as_str)
                    .is_some_and(|k| k.eq_ignore_ascii_case(id))
            }),
            "systemuser" => id == USER_ID,
            _ => false,
        }
    }

    pub(super) fn apply(
        &mut self,
        id: &str,
        raw: &Map<String, Value>,
        parsed: Parsed,
        (state, status): (i64, i64),
        created: bool,
    ) {
        let undo = Undo {
            id: id.to_owned(),
            prev: self.phonecalls.get(id).cloned(),
            history_len: self.history.get(id).map(Vec::len),
            writes_len: self.writes.len(),
        };
        if let Some(journal) = self.journal.as_mut() {
            journal.push(undo);
        }
        self.version += 1;
        let now = now();
        let record = self.phonecalls.entry(id.to_owned()).or_insert_with(|| {
            let mut record = Map::new();
            record.insert("activityid".into(), json!(id));
            record.insert("activitytypecode".into(), json!("phonecall"));
            record.insert("directioncode".into(), json!(true));
            record.insert("createdon".into(), json!(now));
            record.insert("_regardingobjectid_value".into(), Value::Null);
            record.insert("phonecall_activity_parties".into(), json!([]));
            record
        });
        for (name, value, _) in parsed.columns {
            record.insert(name, value);
        }
        if let Some(regarding) = parsed.regarding {
            let (logical, target) = match regarding {
                Some((logical, target)) => (json!(logical), json!(target)),
                None => (Value::Null, Value::Null),
            };
            record.insert("_regardingobjectid_value".into(), target);
            record.insert(
                "_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname".into(),
                logical,
            );
        }
        if let Some(parties) = parsed.parties {
            let parties: Vec<Value> = parties
                .into_iter()
                .map(|party| {
                    let (logical, target) = match party.party {
                        Some((logical, target)) => (json!(logical), json!(target)),
                        None => (Value::Null, Value::Null),
                    };
                    json!({
                        "participationtypemask": party.mask,
                        "_partyid_value": target,
                        "_partyid_value@Microsoft.Dynamics.CRM.lookuplogicalname": logical,
                        "addressused": party.address,
                    })
                })
                .collect();
            record.insert("phonecall_activity_parties".into(), Value::Array(parties));
        }
        record.insert("statecode".into(), json!(state));
        record.insert("statuscode".into(), json!(status));
        record.insert("modifiedon".into(), json!(now));
        record.insert("versionnumber".into(), json!(self.version));
        self.history
            .entry(id.to_owned())
            .or_default()
            .push(raw.clone());
        self.writes.push(Write {
            at: Instant::now(),
            id: id.to_owned(),
            body: raw.clone(),
            created,
        });
    }

    pub(super) fn rollback(&mut self) {
        let Some(journal) = self.journal.take() else {
            return;
        };
        self.rollbacks += 1;
        let writes_len = journal.first().map(|undo| undo.writes_len);
        for undo in journal.into_iter().rev() {
            match undo.prev {
                Some(record) => {
                    self.phonecalls.insert(undo.id.clone(), record);
                }
                None => {
                    self.phonecalls.remove(&undo.id);
                }
            }
            match undo.history_len {
                Some(len) => {
                    if let Some(history) = self.history.get_mut(&undo.id) {
                        history.truncate(len);
                    }
                }
                None => {
                    self.history.remove(&undo.id);
                }
            }
        }
        if let Some(len) = writes_len {
            self.writes.truncate(len);
        }
    }

    // -----------------------------------------------------------------------
    // $batch
}
