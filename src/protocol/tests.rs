use super::*;

fn decode(line: &str) -> Request {
    decode_request(line.as_bytes()).unwrap().1
}

#[test]
fn every_request_round_trips_and_ops_agree() {
    let requests = [
        Request::Hello(HelloRequest {
            protocol: Some(1),
            client: Some("t".into()),
        }),
        Request::Status,
        Request::Start { component: None },
        Request::Stop {
            component: Some(Component::Drain),
        },
        Request::Reload,
        Request::Enqueue(Enqueue {
            events: vec![NewEvent {
                topic: "t".into(),
                key: None,
                id: Some("i".into()),
                payload: r#"{"a": [1, 2.50]}"#.into(),
            }],
            batch: false,
        }),
        Request::Flush(Flush {
            timeout_secs: Some(2.0),
        }),
        Request::DeadLetters(DeadLetters {
            action: DeadLetterAction::Requeue,
            seqs: vec![3],
            all: false,
            limit: None,
        }),
        Request::Config,
        Request::Metrics,
    ];
    assert_eq!(requests.len(), OPS.len());
    for (request, op) in requests.iter().zip(OPS) {
        assert_eq!(request.op(), *op);
        let line = encode_request(Some(7), request);
        let (id, decoded) = decode_request(line.strip_suffix(b"\n").unwrap()).unwrap();
        assert_eq!(id.unwrap().get(), "7");
        assert_eq!(&decoded, request, "{}", String::from_utf8_lossy(&line));
    }
}

#[test]
fn bad_lines_get_stable_codes() {
    let code = |line: &[u8]| decode_request(line).unwrap_err().error.code;
    assert_eq!(code(b"{not json"), ErrorCode::BadJson);
    assert_eq!(code(b"\xff\xfe"), ErrorCode::BadJson);
    assert_eq!(code(b"[1,2]"), ErrorCode::BadRequest);
    assert_eq!(code(b"{\"id\":1}"), ErrorCode::BadRequest);
    assert_eq!(code(b"{\"op\":\"launch\"}"), ErrorCode::UnknownOp);
    assert_eq!(
        code(b"{\"op\":\"stop\",\"component\":5}"),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(b"{\"op\":\"stop\",\"component\":\"nginx\"}"),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(b"{\"op\":\"enqueue\",\"event\":{\"topic\":\"t\"}}"),
        ErrorCode::BadRequest
    );
}

#[test]
fn ids_and_payloads_come_back_exactly_as_sent() {
    let line = br#"{"id":123456789012345678901234567890,"op":"status"}"#;
    let (id, _) = decode_request(line).unwrap();
    let response = Response::success(id, Stopping { stopping: true });
    let text = String::from_utf8(response.to_line()).unwrap();
    assert!(text.contains("123456789012345678901234567890"), "{text}");

    let request = decode(
        r#"{"op":"enqueue","id":1,"event":{"topic":"t","id":"e","payload":{"n":1.50, "x":[ ]}}}"#,
    );
    let Request::Enqueue(enqueue) = request else {
        panic!("not an enqueue")
    };
    assert_eq!(enqueue.events[0].payload, r#"{"n":1.50, "x":[ ]}"#);
}

#[test]
fn unknown_fields_are_ignored_and_the_id_is_echoed_on_errors() {
    assert_eq!(decode(r#"{"op":"status","future":true}"#), Request::Status);
    let rejected = decode_request(br#"{"id":"x","op":"nope"}"#).unwrap_err();
    assert_eq!(rejected.id.unwrap().get(), "\"x\"");
}

#[test]
fn unknown_codes_and_states_from_newer_daemons_still_parse() {
    let r =
        Response::from_line(br#"{"ok":false,"error":{"code":"new_code","message":"m"}}"#).unwrap();
    assert_eq!(r.into_result().unwrap_err().code, ErrorCode::Unknown);
    let state: DaemonState = serde_json::from_str("\"hibernating\"").unwrap();
    assert_eq!(state, DaemonState::Unknown);
    let drain: DrainStatus = serde_json::from_str(r#"{"state":"rebalancing"}"#).unwrap();
    assert_eq!(drain.state, DrainState::Unknown);
    let pg: PostgresStatus = serde_json::from_str(r#"{"mode":"cloud"}"#).unwrap();
    assert_eq!(pg.mode, PgMode::Unknown);
}

#[test]
fn states_are_spelled_on_the_wire_as_before() {
    fn wire<T: Serialize>(value: T) -> String {
        serde_json::to_value(value)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }
    for (state, name) in [
        (DrainState::Starting, "starting"),
        (DrainState::Running, "running"),
        (DrainState::Paused, "paused"),
        (DrainState::Waiting, "waiting"),
        (DrainState::BackingOff, "backing_off"),
        (DrainState::Failed, "failed"),
        (DrainState::Stopped, "stopped"),
    ] {
        assert_eq!((wire(state), state.to_string()), (name.into(), name.into()));
    }
    for (mode, name) in [
        (PgMode::Embedded, "embedded"),
        (PgMode::External, "external"),
    ] {
        assert_eq!((wire(mode), mode.to_string()), (name.into(), name.into()));
    }
    assert_eq!(wire(PgState::NotAnswering), "not_answering");
    assert_eq!(PgState::NotAnswering.describe(), "not answering");
}
