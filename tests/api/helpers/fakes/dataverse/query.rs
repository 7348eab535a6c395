//! Queries: `$select`, `$filter`, `$top` over contacts, accounts and phone
//! calls, single retrieves, rendered as Dataverse renders rows.

use super::*;

impl Org {
    pub(super) fn rows(&self, set: &str) -> Vec<Map<String, Value>> {
        match set {
            "contacts" => self.contacts.clone(),
            "accounts" => self.accounts.clone(),
            _ => self.phonecalls.values().cloned().collect(),
        }
    }

    pub(super) fn select(
        &self,
        set: &str,
        params: &[(String, String)],
    ) -> Result<Option<Vec<String>>, Reply> {
        let (entity, ..) = Org::table(set);
        let Some((_, select)) = params.iter().find(|(k, _)| k == "$select") else {
            return Ok(None);
        };
        let columns: Vec<String> = select.split(',').map(|c| c.trim().to_owned()).collect();
        for column in &columns {
            if self.kind(set, column).is_none() {
                return Err(no_property(entity, column));
            }
        }
        Ok(Some(columns))
    }

    pub(super) fn render(
        set: &str,
        row: &Map<String, Value>,
        select: Option<&[String]>,
        expand_parties: bool,
        annotations: bool,
    ) -> Value {
        let (_, key, ..) = Org::table(set);
        let mut out = Map::new();
        let version = row
            .get("versionnumber")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        out.insert("@odata.etag".into(), json!(format!("W/\"{version}\"")));
        match select {
            Some(columns) => {
                for column in columns {
                    out.insert(
                        column.clone(),
                        row.get(column).cloned().unwrap_or(Value::Null),
                    );
                    if annotations {
                        let prefix = format!("{column}@");
                        for (k, v) in row.iter().filter(|(k, _)| k.starts_with(&prefix)) {
                            out.insert(k.clone(), v.clone());
                        }
                    }
                }
                out.insert(key.into(), row.get(key).cloned().unwrap_or(Value::Null));
            }
            None => {
                for (k, v) in row {
                    if (annotations || !k.contains('@')) && k != "phonecall_activity_parties" {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if expand_parties {
            out.insert(
                "phonecall_activity_parties".into(),
                row.get("phonecall_activity_parties")
                    .cloned()
                    .unwrap_or(json!([])),
            );
        }
        Value::Object(out)
    }

    pub(super) fn context(&self, set: &str, select: Option<&[String]>, entity: bool) -> String {
        let columns = select
            .map(|c| format!("({})", c.join(",")))
            .unwrap_or_default();
        let suffix = if entity { "/$entity" } else { "" };
        format!("{}{API_PATH}$metadata#{set}{columns}{suffix}", self.base)
    }

    /// `GET <set>?$select=..&$filter=..&$top=..`.
    pub(super) fn query(
        &mut self,
        set: &str,
        params: &[(String, String)],
        annotations: bool,
    ) -> Reply {
        let (entity, _, privilege, otc) = Org::table(set);
        if let Some(denied) = self.missing_privilege(privilege, entity, otc) {
            return denied;
        }
        let select = match self.select(set, params) {
            Ok(select) => select,
            Err(error) => return error,
        };
        let filter_text = params
            .iter()
            .find(|(k, _)| k == "$filter")
            .map(|(_, v)| v.clone());
        let filter = match &filter_text {
            Some(text) => match Filter::parse(text) {
                Ok(expr) => {
                    if let Err(error) = self.check_filter(set, &expr) {
                        return error;
                    }
                    Some(expr)
                }
                Err(error) => return error,
            },
            None => None,
        };
        let top = match params.iter().find(|(k, _)| k == "$top") {
            Some((_, v)) => match v.parse::<usize>() {
                Ok(n) => Some(n),
                Err(_) => {
                    return query_syntax(&format!(
                        "Invalid value '{v}' for $top query option found. The $top query option requires a non-negative integer value."
                    ));
                }
            },
            None => None,
        };
        let expand = params
            .iter()
            .find(|(k, _)| k == "$expand")
            .map(|(_, v)| v.clone());
        let expand_parties = match &expand {
            Some(e) if set == "phonecalls" && e.starts_with("phonecall_activity_parties") => true,
            Some(e) => {
                let name = e.split('(').next().unwrap_or("");
                return no_property(entity, name);
            }
            None => false,
        };
        self.queries
            .push((set.to_owned(), filter_text.clone().unwrap_or_default()));
        let mut rows = self.rows(set);
        if let Some(expr) = &filter {
            rows.retain(|row| expr.eval(row));
        }
        let count = rows.len();
        if let Some(top) = top {
            rows.truncate(top);
        }
        let value: Vec<Value> = rows
            .iter()
            .map(|row| Org::render(set, row, select.as_deref(), expand_parties, annotations))
            .collect();
        let mut body = Map::new();
        body.insert(
            "@odata.context".into(),
            json!(self.context(set, select.as_deref(), false)),
        );
        if params.iter().any(|(k, v)| k == "$count" && v == "true") {
            body.insert("@odata.count".into(), json!(count));
        }
        body.insert("value".into(), Value::Array(value));
        Reply::json(200, Value::Object(body))
    }

    /// `GET <set>(<id>)?$select=..`.
    pub(super) fn retrieve(
        &mut self,
        set: &str,
        id: &str,
        params: &[(String, String)],
        annotations: bool,
    ) -> Reply {
        let (entity, key, privilege, otc) = Org::table(set);
        if let Some(denied) = self.missing_privilege(privilege, entity, otc) {
            return denied;
        }
        let select = match self.select(set, params) {
            Ok(select) => select,
            Err(error) => return error,
        };
        let expand_parties = params.iter().any(|(k, v)| {
            k == "$expand" && set == "phonecalls" && v.starts_with("phonecall_activity_parties")
        });
        let row = self.rows(set).into_iter().find(|row| {
            row.get(key)
                .and_then(Value::as_str)
                .is_some_and(|k| k.eq_ignore_ascii_case(id))
        });
        match row {
            Some(row) => {
                let mut value =
                    Org::render(set, &row, select.as_deref(), expand_parties, annotations);
                value.as_object_mut().unwrap().insert(
                    "@odata.context".into(),
                    json!(self.context(set, select.as_deref(), true)),
                );
                Reply::json(200, value)
            }
            None => not_exist(entity, id),
        }
    }

    pub(super) fn check_filter(&self, set: &str, expr: &Filter) -> Result<(), Reply> {
        let (entity, ..) = Org::table(set);
        match expr {
            Filter::And(a, b) | Filter::Or(a, b) => {
                self.check_filter(set, a)?;
                self.check_filter(set, b)
            }
            Filter::Cmp {
                column,
                ne,
                literal,
            } => {
                let Some(kind) = self.kind(set, column) else {
                    return Err(no_property(entity, column));
                };
                let found = match literal {
                    Literal::Null => return Ok(()),
                    Literal::Str(_) => Kind::Str,
                    Literal::Guid(_) => Kind::Guid,
                    Literal::Int(_) => Kind::Int,
                    Literal::Bool(_) => Kind::Bool,
                };
                if found == kind {
                    return Ok(());
                }
                Err(query_syntax(&format!(
                    "A binary operator with incompatible types was detected. Found operand types '{}' and '{}' for operator kind '{}'.",
                    kind.edm(),
                    found.edm(),
                    if *ne { "NotEqual" } else { "Equal" }
                )))
            }
        }
    }

    // -----------------------------------------------------------------------
    // Writes
}
