//! Billing objects, the read endpoints, scopes, plan changes and cycles, over HTTP.

use std::time::SystemTime;

use super::*;

/// `GET path` with a bearer token.
fn get_with(emu: &Emulator, token: &str, path: &str) -> Resp {
    let auth = format!("Bearer {token}");
    send(
        emu.addr(),
        "GET",
        path,
        &[
            ("Authorization", auth.as_str()),
            ("Accept", "application/json"),
        ],
        b"",
    )
    .unwrap()
}

/// An emulator with plans `basic` (calls) and `pro` (calls, rows), and a token.
fn with_plans() -> (Emulator, String) {
    let emu = Emulator::builder()
        .plan("basic", ["calls"])
        .plan("pro", ["calls", "rows"])
        .start()
        .unwrap();
    let token = emu.issue_token();
    (emu, token)
}

/// `t` in RFC 3339 with nanoseconds.
fn precise(t: SystemTime) -> String {
    let nanos = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let whole = crate::clock::format_rfc3339(t);
    format!("{}.{nanos:09}Z", whole.trim_end_matches('Z'))
}

fn ids(body: &serde_json::Value) -> Vec<String> {
    body["agreements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn agreements_endpoint_lists_active_agreements_like_kinde() {
    let (emu, token) = with_plans();
    let made = emu.add_customer("pro").unwrap();
    assert!(made.customer_id.starts_with("customer_") && made.customer_id.len() == 9 + 32);
    assert!(made.agreement_id.starts_with("agreement_") && made.agreement_id.len() == 10 + 32);

    let path = format!(
        "/api/v1/billing/agreements?customer_id={}",
        made.customer_id
    );
    let r = get_with(&emu, &token, &path);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["code"], "OK");
    assert_eq!(body["message"], "Success");
    assert_eq!(body["has_more"], false);
    let a = &body["agreements"][0];
    assert_eq!(a["id"], made.agreement_id.as_str());
    assert_eq!(a["plan_code"], "pro");
    assert_eq!(a["expires_on"], serde_json::Value::Null);
    assert_eq!(a["billing_group_id"], BILLING_GROUP_ID);
    let features: Vec<_> = a["entitlements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["feature_code"].as_str().unwrap())
        .collect();
    assert_eq!(features, ["calls", "rows"]);
    assert!(
        a["entitlements"][0]["entitlement_id"]
            .as_str()
            .unwrap()
            .starts_with("entitlement_")
    );
    // RFC 3339 UTC, whole seconds, and a 30-day cycle from now.
    let start = a["current_period_start"].as_str().unwrap();
    let end = a["current_period_end"].as_str().unwrap();
    assert!(start.len() == 20 && start.ends_with('Z'), "{start}");
    let start = crate::clock::parse_rfc3339(start).unwrap();
    let end = crate::clock::parse_rfc3339(end).unwrap();
    assert_eq!(end.duration_since(start).unwrap(), DEFAULT_CYCLE_LENGTH);
    let age = SystemTime::now().duration_since(start).unwrap();
    assert!(age < Duration::from_secs(5), "{age:?}");

    // The lookup is in the request log, query included.
    let logged = emu.requests();
    let last = logged.last().unwrap();
    assert_eq!(last.method, "GET");
    assert_eq!(last.path, "/api/v1/billing/agreements");
    assert_eq!(
        last.query.as_deref(),
        Some(format!("customer_id={}", made.customer_id).as_str())
    );
    assert_eq!(last.outcome, RequestOutcome::Read);
    assert_eq!(emu.counts().reads, 1);
}

#[test]
fn agreements_endpoint_filters_by_feature_and_paginates() {
    let (emu, token) = with_plans();
    let made = emu.add_customer("basic").unwrap();
    // Five more agreements on the same customer, without cancelling (as a second
    // subscription would): made through the billing state directly.
    let mut all = vec![made.agreement_id.clone()];
    {
        let mut state = emu.shared.lock();
        for plan in ["pro", "basic", "pro", "basic", "pro"] {
            let id = state
                .billing
                .extra_agreement_for_tests(&made.customer_id, plan);
            all.push(id);
        }
    }
    let base = format!(
        "/api/v1/billing/agreements?customer_id={}",
        made.customer_id
    );
    let body = get_with(&emu, &token, &base).json();
    assert_eq!(ids(&body), all, "creation order");

    let rows = get_with(&emu, &token, &format!("{base}&feature_code=rows")).json();
    assert_eq!(ids(&rows), [all[1].clone(), all[3].clone(), all[5].clone()]);
    let none = get_with(&emu, &token, &format!("{base}&feature_code=nothing")).json();
    assert_eq!(ids(&none), Vec::<String>::new());

    let page1 = get_with(&emu, &token, &format!("{base}&page_size=4")).json();
    assert_eq!(ids(&page1), all[..4]);
    assert_eq!(page1["has_more"], true);
    let page2 = get_with(
        &emu,
        &token,
        &format!("{base}&page_size=4&starting_after={}", all[3]),
    )
    .json();
    assert_eq!(ids(&page2), all[4..]);
    assert_eq!(page2["has_more"], false);
    let exact = get_with(&emu, &token, &format!("{base}&page_size=6")).json();
    assert_eq!(exact["has_more"], false);
    let rows_page = get_with(
        &emu,
        &token,
        &format!(
            "{base}&feature_code=rows&page_size=1&starting_after={}",
            all[1]
        ),
    )
    .json();
    assert_eq!(ids(&rows_page), [all[3].clone()]);
    assert_eq!(rows_page["has_more"], true);

    for (query, status, code) in [
        (
            "customer_id=customer_nope".to_owned(),
            400,
            codes::CUSTOMER_NOT_FOUND,
        ),
        (String::new(), 400, codes::MISSING_PARAMETER),
        ("customer_id=".to_owned(), 400, codes::MISSING_PARAMETER),
        (
            format!("{}&page_size=0", &base[27..]),
            400,
            codes::INVALID_PARAMETER,
        ),
        (
            format!("{}&page_size=501", &base[27..]),
            400,
            codes::INVALID_PARAMETER,
        ),
        (
            format!("{}&page_size=x", &base[27..]),
            400,
            codes::INVALID_PARAMETER,
        ),
        (
            format!("{}&starting_after=agreement_nope", &base[27..]),
            400,
            codes::INVALID_PARAMETER,
        ),
        (
            format!("{0}&{0}", &base[27..]),
            400,
            codes::INVALID_PARAMETER,
        ),
    ] {
        let r = get_with(&emu, &token, &format!("/api/v1/billing/agreements?{query}"));
        assert_eq!(
            (r.status, r.codes()),
            (status, vec![code.to_owned()]),
            "{query}: {r:?}"
        );
        assert!(
            !r.json()["errors"][0]["message"]
                .as_str()
                .unwrap()
                .is_empty()
        );
    }
    let max = get_with(&emu, &token, &format!("{base}&page_size=500"));
    assert_eq!(max.status, 200);
}

#[test]
fn organization_and_user_endpoints_expand_billing() {
    let (emu, token) = with_plans();
    let org = emu
        .add_named_organization("org_1a2b", "Acme", "basic")
        .unwrap();
    let user = emu.add_user("kp_0123abcd", "pro").unwrap();
    assert_eq!(
        emu.organization_customer("org_1a2b"),
        Some(org.customer_id.clone())
    );
    assert_eq!(
        emu.user_customer("kp_0123abcd"),
        Some(user.customer_id.clone())
    );

    let r = get_with(
        &emu,
        &token,
        "/api/v1/organization?code=org_1a2b&expand=billing",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["code"], "org_1a2b");
    assert_eq!(body["name"], "Acme");
    assert_eq!(
        body["billing"],
        serde_json::json!({
            "billing_customer_id": org.customer_id,
            "agreements": [{"plan_code": "basic", "agreement_id": org.agreement_id}],
        })
    );
    let plain = get_with(&emu, &token, "/api/v1/organization?code=org_1a2b").json();
    assert!(plain.get("billing").is_none(), "{plain}");
    let several = get_with(
        &emu,
        &token,
        "/api/v1/organization?code=org_1a2b&expand=members,billing",
    )
    .json();
    assert!(several.get("billing").is_some());

    // After a plan change only the new agreement is listed.
    let new = emu.change_plan(&org.customer_id, "pro").unwrap();
    let body = get_with(
        &emu,
        &token,
        "/api/v1/organization?code=org_1a2b&expand=billing",
    )
    .json();
    assert_eq!(
        body["billing"]["agreements"],
        serde_json::json!([{"plan_code": "pro", "agreement_id": new}])
    );

    let r = get_with(&emu, &token, "/api/v1/user?id=kp_0123abcd&expand=billing");
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["id"], "kp_0123abcd");
    assert_eq!(
        body["billing"],
        serde_json::json!({"customer_id": user.customer_id})
    );
    assert!(
        get_with(&emu, &token, "/api/v1/user?id=kp_0123abcd")
            .json()
            .get("billing")
            .is_none()
    );

    for (path, status, code) in [
        (
            "/api/v1/organization?code=org_nope&expand=billing",
            404,
            codes::ORGANIZATION_NOT_FOUND,
        ),
        ("/api/v1/organization", 400, codes::MISSING_PARAMETER),
        (
            "/api/v1/user?id=kp_nope&expand=billing",
            404,
            codes::USER_NOT_FOUND,
        ),
        ("/api/v1/user?expand=billing", 400, codes::MISSING_PARAMETER),
    ] {
        let r = get_with(&emu, &token, path);
        assert_eq!(
            (r.status, r.codes()),
            (status, vec![code.to_owned()]),
            "{path}"
        );
    }
    // A POST to a read path is an unknown route.
    let r = send(emu.addr(), "POST", "/api/v1/user?id=kp_0123abcd", &[], b"").unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.codes(), [codes::ROUTE_NOT_FOUND]);
}

#[test]
fn read_endpoints_need_a_token_and_their_scope() {
    let (emu, token) = with_plans();
    let org = emu.add_organization("org_9", "basic").unwrap();
    emu.add_user("kp_9", "basic").unwrap();
    let paths = [
        (
            SCOPE_BILLING_AGREEMENTS,
            format!("/api/v1/billing/agreements?customer_id={}", org.customer_id),
        ),
        (
            SCOPE_ORGANIZATIONS,
            "/api/v1/organization?code=org_9&expand=billing".to_owned(),
        ),
        (
            SCOPE_USERS,
            "/api/v1/user?id=kp_9&expand=billing".to_owned(),
        ),
    ];
    for (_, path) in &paths {
        assert_eq!(get_with(&emu, &token, path).status, 200, "{path}");
        let r = get_with(&emu, "emu_not_a_token", path);
        assert_eq!(
            (r.status, r.codes()),
            (403, vec![codes::UNAUTHORIZED.to_owned()])
        );
        let r = send(emu.addr(), "GET", path, &[], b"").unwrap();
        assert_eq!(r.status, 403);
    }
    for (missing, path) in &paths {
        let granted: Vec<&str> = DEFAULT_SCOPES
            .iter()
            .copied()
            .filter(|s| s != missing)
            .collect();
        emu.set_scopes(granted.iter().copied());
        let r = get_with(&emu, &token, path);
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.codes(), [codes::FORBIDDEN]);
        assert_eq!(
            r.json()["errors"][0]["message"],
            format!("the application lacks the scope {missing}")
        );
        // The other two still answer.
        for (other, other_path) in &paths {
            if other != missing {
                assert_eq!(get_with(&emu, &token, other_path).status, 200);
            }
        }
        // So does meter usage.
        let body = usage(&org.agreement_id, "calls", "1", None);
        assert_eq!(meter(&emu, &token, &body).unwrap().status, 200);
    }
    emu.set_scopes(["read:users"]);
    let body = usage(&org.agreement_id, "calls", "1", None);
    let r = meter(&emu, &token, &body).unwrap();
    assert_eq!(
        (r.status, r.codes()),
        (403, vec![codes::FORBIDDEN.to_owned()])
    );
    assert_eq!(
        r.json()["errors"][0]["message"],
        "the application lacks the scope create:meter_usage"
    );
    assert_eq!(
        emu.requests().last().unwrap().outcome,
        RequestOutcome::Forbidden
    );
    assert_eq!(emu.counts().forbidden, 4);
    // The token response lists the granted scopes.
    assert_eq!(
        post_token(&emu, &token_form(&emu), &[]).json()["scope"],
        "read:users"
    );
    assert_eq!(emu.scopes().into_iter().collect::<Vec<_>>(), ["read:users"]);

    let limited = Emulator::builder()
        .scopes([SCOPE_METER_USAGE])
        .start()
        .unwrap();
    let r = post_token(&limited, &token_form(&limited), &[]);
    assert_eq!(r.json()["scope"], "create:meter_usage");
}

#[test]
fn plan_changes_cancel_agreements_and_cancelled_usage_is_refused() {
    let emu = Emulator::builder()
        .plan("basic", ["calls"])
        .plan("pro", ["calls", "rows"])
        .known_agreements(["agreement_listed"])
        .start()
        .unwrap();
    let token = emu.issue_token();
    let made = emu.add_organization("org_1", "basic").unwrap();
    // A billing agreement joins the known agreements.
    let body = usage(&made.agreement_id, "calls", "2", None);
    assert_eq!(meter(&emu, &token, &body).unwrap().status, 200);
    let r = meter(&emu, &token, &usage("agreement_other", "calls", "1", None)).unwrap();
    assert_eq!(r.codes(), [codes::AGREEMENT_NOT_FOUND]);

    let new = emu.change_plan(&made.customer_id, "pro").unwrap();
    assert_ne!(new, made.agreement_id);
    let old = emu.agreement(&made.agreement_id).unwrap();
    assert!(!old.is_active());
    let expired = old.expires_on.unwrap();
    assert!(SystemTime::now().duration_since(expired).unwrap() < Duration::from_secs(5));
    let current = emu.agreement(&new).unwrap();
    assert!(current.is_active());
    assert_eq!(current.plan_code, "pro");
    assert_eq!(emu.customer_agreements(&made.customer_id).len(), 2);

    // The list shows the new agreement only.
    let list = get_with(
        &emu,
        &token,
        &format!(
            "/api/v1/billing/agreements?customer_id={}",
            made.customer_id
        ),
    )
    .json();
    assert_eq!(ids(&list), std::slice::from_ref(&new));

    let r = meter(&emu, &token, &usage(&made.agreement_id, "calls", "5", None)).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.codes(), [codes::AGREEMENT_CANCELLED]);
    assert_eq!(
        r.json()["errors"][0]["message"],
        format!("the customer agreement {} was cancelled", made.agreement_id)
    );
    assert_eq!(emu.total(&made.agreement_id, "calls"), 2);
    assert_eq!(
        meter(&emu, &token, &usage(&new, "rows", "4", None))
            .unwrap()
            .status,
        200
    );

    emu.set_cancelled_agreements_accept_usage(true);
    let r = meter(&emu, &token, &usage(&made.agreement_id, "calls", "5", None)).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(emu.total(&made.agreement_id, "calls"), 7);
    emu.set_cancelled_agreements_accept_usage(false);

    emu.cancel_agreement(&new).unwrap();
    assert_eq!(
        emu.cancel_agreement(&new),
        Err(BillingError::AgreementCancelled(new.clone()))
    );
    let r = meter(&emu, &token, &usage(&new, "rows", "1", None)).unwrap();
    assert_eq!(r.codes(), [codes::AGREEMENT_CANCELLED]);
    let list = get_with(
        &emu,
        &token,
        &format!(
            "/api/v1/billing/agreements?customer_id={}",
            made.customer_id
        ),
    )
    .json();
    assert_eq!(ids(&list), Vec::<String>::new());
    // A customer with no active agreement gets a plan again.
    let again = emu.change_plan(&made.customer_id, "basic").unwrap();
    assert!(emu.agreement(&again).unwrap().is_active());

    let accepting = Emulator::builder()
        .plan("p", ["f"])
        .cancelled_agreements_accept_usage(true)
        .start()
        .unwrap();
    let c = accepting.add_customer("p").unwrap();
    accepting.cancel_agreement(&c.agreement_id).unwrap();
    let t = accepting.issue_token();
    let r = meter(&accepting, &t, &usage(&c.agreement_id, "f", "1", None)).unwrap();
    assert_eq!(r.status, 200);

    assert_eq!(
        emu.change_plan("customer_nope", "pro"),
        Err(BillingError::CustomerNotFound("customer_nope".to_owned()))
    );
    assert_eq!(
        emu.change_plan(&made.customer_id, "gold"),
        Err(BillingError::PlanNotFound("gold".to_owned()))
    );
    let err = emu.add_organization("org_2", "gold").unwrap_err();
    assert!(err.to_string().contains("add_plan"), "{err}");
}

#[test]
fn cycles_roll_and_records_show_their_cycle() {
    let emu = Emulator::builder()
        .plan("basic", ["calls"])
        .cycle_length(Duration::from_secs(3600))
        .start()
        .unwrap();
    let token = emu.issue_token();
    let made = emu.add_customer("basic").unwrap();
    let id = made.agreement_id.as_str();
    let first = emu.agreement(id).unwrap().current_period;
    assert_eq!(first.index, 0);
    assert_eq!(
        first.end.duration_since(first.start).unwrap(),
        Duration::from_secs(3600)
    );

    assert_eq!(
        meter(&emu, &token, &usage(id, "calls", "1", None))
            .unwrap()
            .status,
        200
    );
    let end = SystemTime::now() + Duration::from_millis(300);
    let moved = emu.set_period_end(id, end).unwrap();
    assert_eq!(moved.current_period.end, end);
    assert_eq!(moved.current_period.index, 0);
    std::thread::sleep(Duration::from_millis(400));

    // Rolled on read: the next cycle starts at the old end.
    let list = get_with(
        &emu,
        &token,
        &format!(
            "/api/v1/billing/agreements?customer_id={}",
            made.customer_id
        ),
    )
    .json();
    let start = crate::clock::parse_rfc3339(
        list["agreements"][0]["current_period_start"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        start,
        crate::clock::parse_rfc3339(&crate::clock::format_rfc3339(end)).unwrap()
    );
    let second = emu.agreement(id).unwrap().current_period;
    assert_eq!(second.index, 1);
    assert_eq!(second.start, end);
    assert_eq!(second.end, end + Duration::from_secs(3600));

    // Usage now, and usage stamped in the first cycle but sent late.
    assert_eq!(
        meter(&emu, &token, &usage(id, "calls", "2", None))
            .unwrap()
            .status,
        200
    );
    let late = serde_json::json!({
        "customer_agreement_id": id,
        "billing_feature_code": "calls",
        "meter_value": "3",
        "meter_usage_timestamp": precise(first.start + Duration::from_millis(100)),
    })
    .to_string();
    assert_eq!(meter(&emu, &token, &late).unwrap().status, 200);
    let accepted = emu.accepted();
    let cycles: Vec<_> = accepted
        .iter()
        .map(|a| (a.cycle.map(|c| c.index), a.arrival_cycle.map(|c| c.index)))
        .collect();
    assert_eq!(
        cycles,
        [(Some(0), Some(0)), (Some(1), Some(1)), (Some(0), Some(1))]
    );
    assert_eq!(accepted[1].cycle.unwrap().start, end);
    // Records for agreements that are not billing agreements have no cycle.
    assert_eq!(
        meter(&emu, &token, &usage("agr_x", "calls", "1", None))
            .unwrap()
            .status,
        200
    );
    assert_eq!(emu.accepted()[3].cycle, None);
    assert_eq!(
        emu.cycle_at(id, end - Duration::from_millis(1))
            .unwrap()
            .index,
        0
    );

    assert!(matches!(
        emu.set_period_end(id, end - Duration::from_secs(1)),
        Err(BillingError::Invalid(_))
    ));
    assert!(matches!(
        emu.set_period_end("agreement_nope", end),
        Err(BillingError::AgreementNotFound(_))
    ));
    // A shorter cycle length applies to cycles that start from now on.
    emu.set_cycle_length(Duration::from_millis(200));
    emu.set_period_end(id, SystemTime::now() + Duration::from_millis(100))
        .unwrap();
    std::thread::sleep(Duration::from_millis(350));
    let now = emu.agreement(id).unwrap().current_period;
    assert!(now.index >= 3, "{now:?}");
    assert_eq!(
        now.end.duration_since(now.start).unwrap(),
        Duration::from_millis(200)
    );

    assert!(
        Emulator::builder()
            .cycle_length(Duration::ZERO)
            .start()
            .is_err()
    );
}

#[test]
fn builder_fixtures_exist_at_start_and_bad_ones_fail_it() {
    let emu = Emulator::builder()
        .plan("basic", ["calls"])
        .organization("org_f", "basic")
        .user("kp_f", "basic")
        .known_agreements(Vec::<String>::new())
        .start()
        .unwrap();
    let customer = emu.organization_customer("org_f").unwrap();
    let agreements = emu.customer_agreements(&customer);
    assert_eq!(agreements.len(), 1);
    let token = emu.issue_token();
    let body = usage(&agreements[0].id, "calls", "1", None);
    assert_eq!(meter(&emu, &token, &body).unwrap().status, 200);
    assert!(emu.user_customer("kp_f").is_some());

    let err = Emulator::builder()
        .organization("org_f", "missing")
        .start()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("missing"), "{err}");
}
