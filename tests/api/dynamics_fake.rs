//! The fake Dataverse itself, driven with raw HTTP: what the `dynamics`
//! adapter's tests rely on it to do.

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::fakes::dataverse::{
    API_PATH, CLIENT_ID, CLIENT_SECRET, FakeDataverse, Limit, REFUSAL, TENANT_ID, USER_ID,
};

fn client() -> Client {
    Client::new()
}

fn form(fake: &FakeDataverse, secret: &str, scope: &str) -> Vec<(&'static str, String)> {
    let _ = fake;
    vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", CLIENT_ID.into()),
        ("client_secret", secret.into()),
        ("scope", scope.into()),
    ]
}

async fn token(fake: &FakeDataverse) -> String {
    let scope = format!("{}/.default", fake.uri());
    let answer: Value = client()
        .post(fake.token_url())
        .form(&form(fake, CLIENT_SECRET, &scope))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().unwrap().to_owned()
}

async fn patch(
    fake: &FakeDataverse,
    token: &str,
    id: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> Response {
    let mut request = client()
        .patch(format!("{}phonecalls({id})", fake.api_url()))
        .bearer_auth(token)
        .header("OData-Version", "4.0")
        .json(&body);
    if !headers.iter().any(|(name, _)| *name == "If-None-Match") {
        request = request.header("If-None-Match", "null");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn error_of(response: Response) -> (StatusCode, String, String) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: no error in '{text}'"));
    (
        status,
        body["error"]["code"].as_str().unwrap().to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// One request of a `$batch`: method, URL as written in the request line, body.
struct Op(&'static str, String, Option<Value>);

/// A `PATCH` of `url` with `body`, inside a `$batch`.
fn patch_op(url: impl Into<String>, body: Value) -> Op {
    Op("PATCH", url.into(), Some(body))
}

enum Item {
    Single(Op),
    ChangeSet(Vec<Op>),
}

fn http_part(out: &mut String, boundary: &str, content_id: Option<usize>, op: &Op) {
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
    ));
    if let Some(id) = content_id {
        out.push_str(&format!("Content-ID: {id}\r\n"));
    }
    out.push_str(&format!("\r\n{} {} HTTP/1.1\r\n", op.0, op.1));
    match &op.2 {
        Some(body) => out.push_str(&format!(
            "Content-Type: application/json; type=entry\r\n\r\n{body}\r\n"
        )),
        None => out.push_str("\r\n\r\n"),
    }
}

/// A `$batch` body as Microsoft's examples lay it out (CRLF throughout).
fn batch_body(boundary: &str, items: &[Item]) -> String {
    let mut out = String::new();
    let mut content_id = 0;
    for item in items {
        match item {
            Item::Single(op) => http_part(&mut out, boundary, None, op),
            Item::ChangeSet(ops) => {
                let cs = format!("changeset_{}", new_id());
                out.push_str(&format!(
                    "--{boundary}\r\nContent-Type: multipart/mixed; boundary=\"{cs}\"\r\n\r\n"
                ));
                for op in ops {
                    content_id += 1;
                    http_part(&mut out, &cs, Some(content_id), op);
                }
                out.push_str(&format!("--{cs}--\r\n\r\n"));
            }
        }
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out
}

async fn send_batch(
    fake: &FakeDataverse,
    token: &str,
    items: &[Item],
    continue_on_error: bool,
) -> (StatusCode, Vec<Answer>) {
    let boundary = format!("batch_{}", new_id());
    let mut request = client()
        .post(format!("{}$batch", fake.api_url()))
        .bearer_auth(token)
        .header("OData-Version", "4.0")
        .header("Accept", "application/json")
        .header(
            "Content-Type",
            format!("multipart/mixed; boundary=\"{boundary}\""),
        )
        .body(batch_body(&boundary, items));
    if continue_on_error {
        request = request.header("Prefer", "odata.continue-on-error");
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.text().await.unwrap();
    (status, answers(&content_type, &body))
}

/// One answer in a `$batch` response: a response, or a change set's responses.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_id: Option<String>,
    headers: Vec<(String, String)>,
    body: String,
    change_set: Vec<Answer>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn boundary_of(content_type: &str) -> String {
    let (_, boundary) = content_type.split_once("boundary=").unwrap();
    boundary.trim_matches('"').to_owned()
}

fn head_and_body(text: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let headers = head
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (headers, body)
}

fn answers(content_type: &str, body: &str) -> Vec<Answer> {
    let boundary = boundary_of(content_type);
    assert!(body.ends_with(&format!("--{boundary}--\r\n")), "{body}");
    let text = format!("\r\n{body}");
    text.split(&format!("\r\n--{boundary}"))
        .skip(1)
        .take_while(|piece| !piece.starts_with("--"))
        .map(|piece| {
            let piece = piece.strip_prefix("\r\n").unwrap();
            let (part_headers, content) = head_and_body(piece);
            let part_type = part_headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.clone())
                .unwrap();
            let content_id = part_headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-id"))
                .map(|(_, v)| v.clone());
            if part_type.starts_with("multipart/mixed") {
                return Answer {
                    status: 0,
                    content_id,
                    headers: Vec::new(),
                    body: String::new(),
                    change_set: answers(&part_type, &format!("{content}\r\n")),
                };
            }
            assert_eq!(part_type, "application/http");
            let (status_line, rest) = content.split_once("\r\n").unwrap();
            let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
            let (headers, body) = head_and_body(rest);
            Answer {
                status,
                content_id,
                headers,
                body: body.to_owned(),
                change_set: Vec::new(),
            }
        })
        .collect()
}

fn create(id: &str, subject: &str) -> Op {
    patch_op(
        format!("{API_PATH}phonecalls({id})"),
        json!({"subject": subject, "directioncode": false}),
    )
}

#[tokio::test]
async fn tokens_are_granted_to_the_registered_client_and_revoked_on_demand() {
    let fake = FakeDataverse::start().await;
    let scope = format!("{}/.default", fake.uri());
    let granted = client()
        .post(fake.token_url())
        .form(&form(&fake, CLIENT_SECRET, &scope))
        .send()
        .await
        .unwrap();
    assert_eq!(granted.status(), 200);
    let granted: Value = granted.json().await.unwrap();
    assert_eq!(granted["token_type"], "Bearer");
    assert_eq!(granted["expires_in"], 3599);
    let token = granted["access_token"].as_str().unwrap().to_owned();
    let recorded = fake.org().token_requests[0].clone();
    assert_eq!(recorded["grant_type"], "client_credentials");
    assert_eq!(recorded["client_id"], CLIENT_ID);
    assert_eq!(recorded["scope"], scope);

    let refused: Value = {
        let response = client()
            .post(fake.token_url())
            .form(&form(&fake, "wrong", &scope))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        response.json().await.unwrap()
    };
    assert_eq!(refused["error"], "invalid_client");
    assert_eq!(refused["error_codes"], json!([7000215]));
    assert!(
        refused["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215: Invalid client secret provided.")
    );

    let other_tenant = client()
        .post(format!(
            "{}/login/{}/oauth2/v2.0/token",
            fake.uri(),
            new_id()
        ))
        .form(&form(&fake, CLIENT_SECRET, &scope))
        .send()
        .await
        .unwrap();
    assert_eq!(other_tenant.status(), 400);
    let other_tenant: Value = other_tenant.json().await.unwrap();
    assert_eq!(other_tenant["error"], "invalid_request");
    assert_eq!(other_tenant["error_codes"], json!([90002]));

    for (scope, error) in [
        (fake.uri(), "invalid_scope"),
        (
            "https://other.crm.dynamics.com/.default".to_owned(),
            "invalid_resource",
        ),
    ] {
        let response = client()
            .post(fake.token_url())
            .form(&form(&fake, CLIENT_SECRET, &scope))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], error, "{scope}");
    }

    let who_am_i = format!("{}WhoAmI", fake.api_url());
    let anonymous = client().get(&who_am_i).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let challenge = anonymous.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with(&format!(
            "Bearer authorization_uri={}/login/{TENANT_ID}/oauth2/authorize",
            fake.uri()
        )),
        "{challenge}"
    );
    let me: Value = client()
        .get(&who_am_i)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["UserId"], USER_ID);

    fake.expire_tokens();
    let expired = client()
        .get(&who_am_i)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
    assert!(
        expired.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    let fresh = self::token(&fake).await;
    assert_ne!(fresh, token);
    let again = client()
        .get(&who_am_i)
        .bearer_auth(&fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);

    fake.org().token_down = true;
    let down = client()
        .post(fake.token_url())
        .form(&form(&fake, CLIENT_SECRET, &scope))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 503);
    assert_eq!(fake.org().token_requests.len(), 7);
}

#[tokio::test]
async fn who_am_i_and_the_privileges_of_the_application_user() {
    let fake = FakeDataverse::start().await;
    let token = token(&fake).await;
    let url = format!(
        "{}systemusers({USER_ID})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()",
        fake.api_url()
    );
    let privileges: Value = client()
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = privileges["RolePrivileges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["Depth"], "Global");
            p["PrivilegeName"].as_str().unwrap()
        })
        .collect();
    assert!(names.contains(&"prvCreateActivity") && names.contains(&"prvReadContact"));

    fake.org().privileges.retain(|p| p != "prvCreateActivity");
    let denied = patch(&fake, &token, &new_id(), json!({"subject": "x"}), &[]).await;
    let (status, code, message) = error_of(denied).await;
    assert_eq!((status.as_u16(), code.as_str()), (403, "0x80040220"));
    assert!(
        message.contains("is missing prvCreateActivity privilege"),
        "{message}"
    );
    assert_eq!(fake.phonecalls(), 0);
}

#[tokio::test]
async fn phone_calls_are_upserted_by_id_as_dataverse_validates_them() {
    let fake = FakeDataverse::start().await;
    let token = token(&fake).await;
    let contact = fake.add_contact("Ada Lovelace", "+1 888 397 3342");
    let id = new_id();

    // Create only: If-None-Match: *.
    let created = patch(
        &fake,
        &token,
        &id,
        json!({
            "subject": "Inbound call",
            "directioncode": false,
            "actualstart": "2025-03-01T10:00:00.250+01:00",
            "regardingobjectid_contact_phonecall@odata.bind": format!("/contacts({contact})"),
            "phonecall_activity_parties": [
                {"participationtypemask": 1, "partyid_contact@odata.bind": format!("/contacts({contact})")},
                {"participationtypemask": 2, "addressused": "+18005550100"}
            ],
            "new_disposition": "Booked"
        }),
        &[("If-None-Match", "*")],
    )
    .await;
    assert_eq!(created.status(), 204);
    assert_eq!(
        created.headers()["odata-entityid"],
        format!("{}phonecalls({id})", fake.api_url()).as_str()
    );
    let call = fake.phonecall(&id);
    assert_eq!(
        (call["statecode"].clone(), call["statuscode"].clone()),
        (json!(0), json!(1))
    );
    assert_eq!(call["directioncode"], false);
    assert_eq!(
        call["actualstart"], "2025-03-01T09:00:00Z",
        "UTC, to the second"
    );
    assert_eq!(call["_regardingobjectid_value"], json!(contact));
    assert_eq!(
        call["phonecall_activity_parties"].as_array().unwrap().len(),
        2
    );

    let again = patch(
        &fake,
        &token,
        &id,
        json!({"subject": "x"}),
        &[("If-None-Match", "*")],
    )
    .await;
    let (status, code, message) = error_of(again).await;
    assert_eq!((status.as_u16(), code.as_str()), (412, "0x80040237"));
    assert_eq!(message, "A record with matching key values already exists.");

    // Update only: If-Match: *.
    let missing = new_id();
    let absent = patch(
        &fake,
        &token,
        &missing,
        json!({"subject": "x"}),
        &[("If-Match", "*")],
    )
    .await;
    let (status, _, message) = error_of(absent).await;
    assert_eq!(status, 404);
    assert_eq!(
        message,
        format!("phonecall With Id = {missing} Does Not Exist")
    );
    let updated = patch(
        &fake,
        &token,
        &id,
        json!({"description": "notes", "phonecall_activity_parties": [
            {"participationtypemask": 2, "addressused": "+18005550199"}
        ]}),
        &[("If-Match", "*")],
    )
    .await;
    assert_eq!(updated.status(), 204);
    let call = fake.phonecall(&id);
    assert_eq!(call["description"], "notes");
    assert_eq!(call["subject"], "Inbound call");
    let parties = call["phonecall_activity_parties"].as_array().unwrap();
    assert_eq!(
        parties.len(),
        1,
        "the collection written replaces the parties"
    );
    assert_eq!(parties[0]["addressused"], "+18005550199");
    assert_eq!(fake.history(&id).len(), 2);
    assert_eq!(fake.history(&id)[1]["description"], "notes");

    // What Dataverse refuses, and leaves the record as it was.
    let refusals = [
        (json!({"subjet": "typo"}), 400, "0x0"),
        (json!({"subject": "x".repeat(201)}), 400, "0x80044331"),
        (
            json!({"new_disposition": "y".repeat(101)}),
            400,
            "0x80044331",
        ),
        (json!({"directioncode": "incoming"}), 400, "0x80048d19"),
        (json!({"actualend": "yesterday"}), 400, "0x80048d19"),
        (
            json!({"regardingobjectid_lead@odata.bind": "/leads(00000000-0000-0000-0000-000000000001)"}),
            400,
            "0x80048d19",
        ),
        (
            json!({"regardingobjectid_contact@odata.bind": format!("/contacts({})", new_id())}),
            404,
            "0x80040217",
        ),
        (json!({"statuscode": 2}), 400, "0x80048408"),
        (json!({"statecode": 1, "statuscode": 3}), 400, "0x80048408"),
        (
            json!({"phonecall_activity_parties": [{"participationtypemask": 3, "addressused": "a"}]}),
            400,
            "0x80094006",
        ),
    ];
    for (body, status, code) in refusals {
        let answer = patch(&fake, &token, &id, body.clone(), &[]).await;
        let (got_status, got_code, message) = error_of(answer).await;
        assert_eq!(
            (got_status.as_u16(), got_code.as_str()),
            (status, code),
            "{body}: {message}"
        );
    }
    let (_, _, message) =
        error_of(patch(&fake, &token, &id, json!({"subjet": "typo"}), &[]).await).await;
    assert!(
        message.contains(
            "Invalid property 'subjet' was found in entity 'Microsoft.Dynamics.CRM.phonecall'"
        ),
        "{message}"
    );
    assert_eq!(fake.history(&id).len(), 2);

    // statecode isn't valid for create: the record is created Open, and a
    // Completed statuscode is refused against the Open state.
    let closed_on_create = patch(
        &fake,
        &token,
        &new_id(),
        json!({"subject": "x", "statecode": 1, "statuscode": 2}),
        &[],
    )
    .await;
    let (status, code, message) = error_of(closed_on_create).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "0x80048408"));
    assert!(
        message.starts_with("2 is not a valid status code for state code PhoneCallState.Open"),
        "{message}"
    );
    let ignored = new_id();
    let answer = patch(
        &fake,
        &token,
        &ignored,
        json!({"subject": "x", "statecode": 1}),
        &[],
    )
    .await;
    assert_eq!(answer.status(), 204);
    assert_eq!(fake.phonecall(&ignored)["statecode"], 0);

    // Read back, as Dataverse renders it.
    let read: Value = client()
        .get(format!(
            "{}phonecalls({id})?$select=subject,statecode,_regardingobjectid_value",
            fake.api_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["subject"], "Inbound call");
    assert_eq!(read["activityid"], json!(id));
    assert!(read["@odata.etag"].as_str().unwrap().starts_with("W/\""));
    assert!(
        read["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with("$metadata#phonecalls(subject,statecode,_regardingobjectid_value)/$entity")
    );
    assert!(
        read.get("_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname")
            .is_none()
    );
    let annotated: Value = client()
        .get(format!(
            "{}phonecalls({id})?$select=_regardingobjectid_value",
            fake.api_url()
        ))
        .header("Prefer", "odata.include-annotations=\"*\"")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        annotated["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"],
        "contact"
    );
}

#[tokio::test]
async fn a_closed_phone_call_is_read_only_until_reopened_in_the_same_change_set() {
    let fake = FakeDataverse::start().await;
    let token = token(&fake).await;
    let id = new_id();
    assert_eq!(
        patch(&fake, &token, &id, json!({"subject": "Call"}), &[])
            .await
            .status(),
        204
    );
    let close = patch(
        &fake,
        &token,
        &id,
        json!({"statecode": 1, "statuscode": 4}),
        &[],
    )
    .await;
    assert_eq!(close.status(), 204);

    let late = patch(
        &fake,
        &token,
        &id,
        json!({"description": "late notes"}),
        &[],
    )
    .await;
    let (status, code, message) = error_of(late).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "0x80040230"));
    assert_eq!(
        message,
        "The object cannot be updated because it is inactive."
    );
    let with_state = patch(
        &fake,
        &token,
        &id,
        json!({"description": "late notes", "statecode": 0, "statuscode": 1}),
        &[],
    )
    .await;
    assert_eq!(error_of(with_state).await.1, "0x80040230");

    let url = format!("{API_PATH}phonecalls({id})");
    let (status, answers) = send_batch(
        &fake,
        &token,
        &[Item::ChangeSet(vec![
            patch_op(url.as_str(), json!({"statecode": 0, "statuscode": 1})),
            patch_op(url.as_str(), json!({"description": "late notes"})),
            patch_op(url.as_str(), json!({"statecode": 1, "statuscode": 4})),
        ])],
        false,
    )
    .await;
    assert_eq!(status, 200);
    let change_set = &answers[0].change_set;
    assert_eq!(
        change_set
            .iter()
            .map(|a| (a.status, a.content_id.clone()))
            .collect::<Vec<_>>(),
        vec![
            (204, Some("1".into())),
            (204, Some("2".into())),
            (204, Some("3".into()))
        ]
    );
    let call = fake.phonecall(&id);
    assert_eq!(call["description"], "late notes");
    assert_eq!(
        (call["statecode"].clone(), call["statuscode"].clone()),
        (json!(1), json!(4))
    );
    let history = fake.history(&id);
    assert_eq!(history.len(), 5);
    assert_eq!(history[3]["description"], "late notes");

    // Without the reopen first, the change set fails as a whole.
    let (status, answers) = send_batch(
        &fake,
        &token,
        &[Item::ChangeSet(vec![
            patch_op(url.as_str(), json!({"description": "later"})),
            patch_op(url.as_str(), json!({"statecode": 1, "statuscode": 4})),
        ])],
        false,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].status, 400);
    assert_eq!(answers[0].json()["error"]["code"], "0x80040230");
    assert_eq!(fake.phonecall(&id)["description"], "late notes");
}

#[tokio::test]
async fn a_failing_change_set_is_rolled_back_and_the_batch_goes_on_when_asked() {
    let fake = FakeDataverse::start().await;
    let token = token(&fake).await;
    let (a, b, c, d) = (new_id(), new_id(), new_id(), new_id());
    let items = [
        Item::ChangeSet(vec![create(&a, "first"), create(&b, "second")]),
        Item::ChangeSet(vec![
            create(&c, "third"),
            patch_op(
                format!("{API_PATH}phonecalls({d})"),
                json!({"subject": "x".repeat(250)}),
            ),
        ]),
        Item::Single(Op(
            "GET",
            format!("phonecalls?$select=subject&$filter=activityid%20eq%20{a}"),
            None,
        )),
    ];
    let (status, answers) = send_batch(&fake, &token, &items, true).await;
    assert_eq!(status, 200);
    assert_eq!(answers.len(), 3);
    let committed = &answers[0].change_set;
    assert_eq!(committed.len(), 2);
    assert_eq!(committed[0].status, 204);
    assert_eq!(committed[0].content_id.as_deref(), Some("1"));
    assert!(
        committed[0]
            .header("OData-EntityId")
            .unwrap()
            .ends_with(&format!("phonecalls({a})"))
    );
    // The failed change set answers with the one failing response.
    assert!(answers[1].change_set.is_empty());
    assert_eq!(answers[1].status, 400);
    assert_eq!(answers[1].content_id.as_deref(), Some("4"));
    assert_eq!(answers[1].json()["error"]["code"], "0x80044331");
    assert_eq!(answers[2].status, 200);
    assert_eq!(answers[2].json()["value"][0]["subject"], "first");
    assert_eq!(fake.phonecalls(), 2);
    assert!(!fake.org().phonecalls.contains_key(&c), "rolled back");
    assert!(fake.history(&c).is_empty());
    assert_eq!(fake.org().writes.len(), 2);
    assert_eq!(fake.org().rollbacks, 1);
    assert_eq!(fake.org().operations, 5);
    assert_eq!(fake.api_requests().await, 1);

    // Without odata.continue-on-error the batch stops at the failure, which
    // gives the batch its status.
    let (e, f) = (new_id(), new_id());
    let items = [
        Item::ChangeSet(vec![Op(
            "PATCH",
            format!("{}phonecalls({e})", fake.api_url()),
            Some(json!({"subject": 7})),
        )]),
        Item::ChangeSet(vec![create(&f, "never")]),
    ];
    let (status, answers) = send_batch(&fake, &token, &items, false).await;
    assert_eq!(status, 400);
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].json()["error"]["code"], "0x80048d19");
    assert_eq!(fake.phonecalls(), 2);
}

#[tokio::test]
async fn a_refused_record_leaves_the_others_of_the_batch_written() {
    let fake = FakeDataverse::start().await;
    let token = token(&fake).await;
    let ids: Vec<String> = (0..3).map(|_| new_id()).collect();
    fake.org().refuse.insert(ids[1].clone());
    let items: Vec<Item> = ids
        .iter()
        .map(|id| Item::ChangeSet(vec![create(id, "call")]))
        .collect();
    let (status, answers) = send_batch(&fake, &token, &items, true).await;
    assert_eq!(status, 200);
    assert_eq!(answers[0].change_set[0].status, 204);
    assert_eq!(answers[1].status, 400);
    let error = answers[1].json();
    assert_eq!(error["error"]["code"], "0x80040265");
    assert_eq!(error["error"]["message"], REFUSAL);
    assert_eq!(answers[2].change_set[0].status, 204);
    assert_eq!(fake.phonecalls(), 2);
}

#[tokio::test]
async fn contacts_are_found_by_phone_with_a_filter_in_and_out_of_a_batch() {
    let fake = FakeDataverse::start().await;
    let token = token(&fake).await;
    let ada = fake.add_contact("Ada Lovelace", "+1 888 397 3342");
    let grace = fake.add_contact("Grace Hopper", "(888) 397-3342");
    fake.add_contact("Alan Turing", "+44 20 7946 0000");
    let acme = fake.add_account("Acme", "+18883973342");
    let filter = "telephone1 eq '+1 888 397 3342' or (mobilephone eq '(888) 397-3342' or telephone1 eq '(888) 397-3342')";

    let found: Value = client()
        .get(format!("{}contacts", fake.api_url()))
        .query(&[
            ("$select", "contactid,fullname,telephone1,mobilephone"),
            ("$filter", filter),
            ("$top", "10"),
        ])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        found["@odata.context"],
        format!(
            "{}$metadata#contacts(contactid,fullname,telephone1,mobilephone)",
            fake.api_url()
        )
    );
    let mut names: Vec<&str> = found["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["fullname"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["Ada Lovelace", "Grace Hopper"]);
    assert_eq!(
        fake.org().queries[0],
        ("contacts".to_owned(), filter.to_owned())
    );

    // Inside a batch, with the URL percent-encoded in the request line.
    let encoded: String = url::form_urlencoded::byte_serialize(
        format!("telephone1 eq '+18883973342' or accountid eq {acme}").as_bytes(),
    )
    .collect();
    let (status, answers) = send_batch(
        &fake,
        &token,
        &[
            Item::Single(Op(
                "GET",
                format!("{}accounts?$select=name&$filter={encoded}", fake.api_url()),
                None,
            )),
            Item::Single(Op("GET", format!("contacts({ada})?$select=fullname"), None)),
            Item::Single(Op("GET", format!("{API_PATH}contacts({grace})"), None)),
        ],
        false,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].json()["value"][0]["name"], "Acme");
    assert_eq!(answers[1].json()["fullname"], "Ada Lovelace");
    assert_eq!(answers[2].json()["telephone1"], "(888) 397-3342");
    assert_eq!(fake.org().operations, 3);

    // What the Web API refuses in a query.
    for (select, filter, code) in [
        ("fullname,phone", "fullname eq 'x'", "0x80060888"),
        ("fullname", "phone eq 'x'", "0x80060888"),
        ("fullname", "contactid eq 'x'", "0x80060888"),
        ("fullname", "contains(fullname,'x')", "0x80060888"),
    ] {
        let answer = client()
            .get(format!("{}contacts", fake.api_url()))
            .query(&[("$select", select), ("$filter", filter)])
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let (status, got, message) = error_of(answer).await;
        assert_eq!(
            (status.as_u16(), got.as_str()),
            (400, code),
            "{filter}: {message}"
        );
    }
}

#[tokio::test]
async fn throttling_outages_and_malformed_batches_answer_as_documented() {
    let fake = FakeDataverse::start().await;
    let token = token(&fake).await;
    let who_am_i = format!("{}WhoAmI", fake.api_url());
    {
        let mut org = fake.org();
        org.throttle = Some((2, 7));
        org.throttle_limit = Limit::Requests;
    }
    for _ in 0..2 {
        let throttled = client()
            .get(&who_am_i)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(throttled.status(), 429);
        assert_eq!(throttled.headers()["retry-after"], "7");
        let (_, code, message) = error_of(throttled).await;
        assert_eq!(code, "0x80072322");
        assert_eq!(
            message,
            "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
        );
    }
    let fine = client()
        .get(&who_am_i)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), 200);
    assert_eq!(fake.org().throttled, 2);

    fake.org().down = true;
    let down = client()
        .get(&who_am_i)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 503);
    fake.org().down = false;

    // A body with bare LF line endings can't be read.
    let boundary = "batch_lf";
    let body = batch_body(boundary, &[Item::Single(create(&new_id(), "x"))]).replace("\r\n", "\n");
    let response = client()
        .post(format!("{}$batch", fake.api_url()))
        .bearer_auth(&token)
        .header(
            "Content-Type",
            format!("multipart/mixed; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let answers = answers(&content_type, &response.text().await.unwrap());
    assert_eq!(answers[0].json()["error"]["code"], "0x80048d19");
    assert!(answers[0].body.contains("Stream was not readable."));

    // No more than 1000 requests.
    let items: Vec<Item> = (0..1001)
        .map(|_| Item::Single(create(&new_id(), "x")))
        .collect();
    let (status, answers) = send_batch(&fake, &token, &items, true).await;
    assert_eq!(status, 400);
    assert_eq!(answers.len(), 1);
    assert_eq!(fake.phonecalls(), 0);

    // GET isn't allowed in a change set.
    let (status, answers) = send_batch(
        &fake,
        &token,
        &[Item::ChangeSet(vec![Op("GET", "contacts".into(), None)])],
        false,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answers[0].status, 400);
}
