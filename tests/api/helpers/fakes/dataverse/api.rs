//! The Web API: the bearer checked, scripted outages and throttling, then
//! each request routed; privileges and the tables' columns.

use super::*;

impl Org {
    pub(super) fn api(&mut self, request: &Request) -> Reply {
        self.requests += 1;
        if self.down {
            return Reply::raw(503, "text/plain", "Service Unavailable".into());
        }
        let headers: Vec<(String, String)> = request
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let challenge = format!(
            "Bearer authorization_uri={}/login/{TENANT_ID}/oauth2/authorize, resource_id={}/",
            self.base, self.base
        );
        let bearer = header(&headers, "authorization").and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        match bearer {
            None => {
                return Reply::empty(401).header("WWW-Authenticate", &challenge);
            }
            Some(token) if !self.valid_tokens.contains(token.trim()) => {
                return Reply::empty(401).header(
                    "WWW-Authenticate",
                    &format!(
                        "Bearer error=\"invalid_token\", error_description=\"The access token is expired or is not valid\", {}",
                        challenge.trim_start_matches("Bearer ")
                    ),
                );
            }
            Some(_) => {}
        }
        if let Some((left, secs)) = self.throttle {
            self.throttle = (left > 1).then_some((left - 1, secs));
            if left > 0 {
                self.throttled += 1;
                let (code, message) = match self.throttle_limit {
                    Limit::Requests => (
                        "0x80072322",
                        "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
                    ),
                    Limit::ExecutionTime => (
                        "0x80072321",
                        "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds over time window of 300 seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later.",
                    ),
                    Limit::Concurrency => (
                        "0x80072326",
                        "Number of concurrent requests exceeded the limit of 52.",
                    ),
                };
                return odata_error(429, code, message).header("Retry-After", &secs.to_string());
            }
        }
        let path = request.url.path();
        let target = match request.url.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let method = request.method.as_str();
        if percent_decode(path) == format!("{API_PATH}$batch") {
            if method != "POST" {
                return method_not_allowed(method);
            }
            return self.batch(&headers, &request.body);
        }
        self.route(method, &target, &headers, &request.body)
    }

    /// One Web API request (alone or out of a `$batch`), by method and
    /// `path?query`.
    pub(super) fn route(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Reply {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let path = percent_decode(path);
        let Some(rest) = path.strip_prefix(API_PATH) else {
            let segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
            return resource_not_found(segment);
        };
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if rest == "WhoAmI" || rest == "WhoAmI()" {
            if method != "GET" {
                return odata_error(
                    404,
                    "",
                    &format!(
                        "No HTTP resource was found that matches the request URI '{}{path}'.",
                        self.base
                    ),
                );
            }
            return Reply::json(
                200,
                json!({
                    "@odata.context": format!("{}{API_PATH}$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse", self.base),
                    "BusinessUnitId": BUSINESS_UNIT_ID,
                    "UserId": USER_ID,
                    "OrganizationId": ORGANIZATION_ID,
                }),
            );
        }
        if rest == "$batch" {
            return bad_request("Batch requests can't contain other batch requests.");
        }
        let (set, key, tail) = match rest.split_once('(') {
            Some((set, after)) => match after.split_once(')') {
                Some((key, tail)) => (set, Some(key), tail),
                None => return query_syntax("Bad Request - Error in query syntax."),
            },
            None => (rest, None, ""),
        };
        if !matches!(set, "contacts" | "accounts" | "phonecalls" | "systemusers") {
            return resource_not_found(set);
        }
        let key = match key {
            Some(key) => match parse_guid(key) {
                Some(id) => Some(id),
                None => return query_syntax("Bad Request - Error in query syntax."),
            },
            None => None,
        };
        match (method, set, key, tail) {
            (
                "GET",
                "systemusers",
                Some(user),
                "/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()",
            ) => self.user_privileges(&user),
            ("GET", "systemusers", _, _) => resource_not_found(tail.trim_start_matches('/')),
            ("GET", set, None, "") => self.query(set, &params, annotations(headers)),
            ("GET", set, Some(id), "") => self.retrieve(set, &id, &params, annotations(headers)),
            ("PATCH", "phonecalls", Some(id), "") => {
                self.upsert(&id, &params, headers, body, false)
            }
            ("POST", "phonecalls", None, "") => {
                let id = uuid::Uuid::new_v4().to_string();
                self.upsert(&id, &params, headers, body, true)
            }
            (_, _, _, "") => method_not_allowed(method),
            (_, _, _, tail) => resource_not_found(tail.trim_start_matches('/')),
        }
    }

    pub(super) fn missing_privilege(
        &self,
        privilege: &str,
        entity: &str,
        otc: u32,
    ) -> Option<Reply> {
        if self.privileges.iter().any(|p| p == privilege) {
            return None;
        }
        Some(odata_error(
            403,
            "0x80040220",
            &format!(
                "Principal user (Id={USER_ID}, type=8, roleCount=1, privilegeCount={}, accessMode=4), is missing {privilege} privilege (Id={}) on OTC={otc} for entity '{entity}'. context.Caller={USER_ID}",
                self.privileges.len(),
                privilege_id(privilege)
            ),
        ))
    }

    pub(super) fn user_privileges(&self, user: &str) -> Reply {
        if user != USER_ID {
            return not_exist("systemuser", user);
        }
        let privileges: Vec<Value> = self
            .privileges
            .iter()
            .map(|name| {
                json!({
                    "Depth": "Global",
                    "PrivilegeId": privilege_id(name),
                    "BusinessUnitId": BUSINESS_UNIT_ID,
                    "PrivilegeName": name,
                })
            })
            .collect();
        Reply::json(
            200,
            json!({
                "@odata.context": format!("{}{API_PATH}$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse", self.base),
                "RolePrivileges": privileges,
            }),
        )
    }

    // -----------------------------------------------------------------------
    // Reads

    /// The logical name, primary key, read privilege and type code of a set.
    pub(super) fn table(set: &str) -> (&'static str, &'static str, &'static str, u32) {
        match set {
            "contacts" => ("contact", "contactid", "prvReadContact", 2),
            "accounts" => ("account", "accountid", "prvReadAccount", 1),
            _ => ("phonecall", "activityid", "prvReadActivity", 4210),
        }
    }

    /// The type of a readable column of a set, if it has that column.
    pub(super) fn kind(&self, set: &str, column: &str) -> Option<Kind> {
        match set {
            "contacts" => match column {
                "contactid" => Some(Kind::Guid),
                "fullname" | "firstname" | "lastname" | "telephone1" | "telephone2"
                | "mobilephone" => Some(Kind::Str),
                _ => None,
            },
            "accounts" => match column {
                "accountid" => Some(Kind::Guid),
                "name" | "telephone1" | "telephone2" => Some(Kind::Str),
                _ => None,
            },
            _ => match column {
                "activityid" | "_regardingobjectid_value" => Some(Kind::Guid),
                "statecode" | "statuscode" | "versionnumber" => Some(Kind::Int),
                "createdon" | "modifiedon" => Some(Kind::DateTime),
                "activitytypecode" => Some(Kind::Str),
                _ => standard_column(column)
                    .or_else(|| self.custom_columns.get(column).copied())
                    .map(|c| match c {
                        Column::Text(_) | Column::Memo(_) => Kind::Str,
                        Column::Integer(..) => Kind::Int,
                        Column::Boolean => Kind::Bool,
                        Column::DateTime => Kind::DateTime,
                    }),
            },
        }
    }
}
