use super::*;

fn body(request: &str) -> Value {
    convert(request, "claude-test", false).unwrap().body
}

fn refused(request: &str) -> Unconvertible {
    convert(request, "m", false).unwrap_err()
}

#[test]
fn system_messages_sampling_and_stops_are_converted() {
    let body = body(
        r#"{"model":"ignored","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"developer","content":[{"type":"text","text":"Be kind."}]},
            {"role":"user","content":"Hi"},
            {"role":"assistant","content":"Hello!"},
            {"role":"user","content":[{"type":"text","text":"Again"}]}],
          "max_completion_tokens":50,"temperature":0.5,"top_p":0.9,"stop":"END","user":"u-1",
          "n":1,"stream":true,"stream_options":{"include_usage":true}}"#,
    );
    assert_eq!(
        body,
        json!({
            "model": "claude-test",
            "system": "Be brief.\nBe kind.",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
                {"role": "user", "content": [{"type": "text", "text": "Again"}]},
            ],
            "max_tokens": 50,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u-1"},
        })
    );
}

#[test]
fn max_tokens_defaults_and_stream_flag() {
    let converted = convert(
        r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":7,"max_completion_tokens":9,"stop":["a","b"]}"#,
        "m",
        true,
    )
    .unwrap();
    assert_eq!(converted.body["max_tokens"], 7);
    assert_eq!(converted.body["stream"], true);
    assert_eq!(converted.body["stop_sequences"], json!(["a", "b"]));
    assert!(converted.body.get("system").is_none());
    let plain = body(r#"{"messages":[{"role":"user","content":"Hi"}]}"#);
    assert_eq!(plain["max_tokens"], DEFAULT_MAX_TOKENS);
    assert!(plain.get("stream").is_none());
}

#[test]
fn tools_tool_calls_and_results_are_converted() {
    let body = body(
        r#"{"messages":[
            {"role":"user","content":"Weather in Oslo and Rome?"},
            {"role":"assistant","content":null,"tool_calls":[
                {"id":"call_1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}},
                {"id":"call_2","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Rome\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"12 C"},
            {"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"25 C"}]},
            {"role":"user","content":"Thanks"}],
          "tools":[{"type":"function","function":{"name":"weather","description":"Weather now",
                    "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},
                   {"type":"function","function":{"name":"clock"}}],
          "tool_choice":"required","parallel_tool_calls":false}"#,
    );
    assert_eq!(
        body["messages"][1],
        json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
        ]})
    );
    assert_eq!(
        body["messages"][2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "12 C"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "25 C"},
        ]}),
        "consecutive tool results share one user turn"
    );
    assert_eq!(
        body["messages"][3],
        json!({"role": "user", "content": "Thanks"})
    );
    assert_eq!(
        body["tools"],
        json!([
            {"name": "weather", "description": "Weather now",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
        ])
    );
    assert_eq!(
        body["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
}

#[test]
fn every_tool_choice_is_converted() {
    for (choice, want) in [
        (r#""auto""#, json!({"type": "auto"})),
        (r#""none""#, json!({"type": "none"})),
        (r#""required""#, json!({"type": "any"})),
        (
            r#"{"type":"function","function":{"name":"weather"}}"#,
            json!({"type": "tool", "name": "weather"}),
        ),
    ] {
        let request = format!(
            r#"{{"messages":[{{"role":"user","content":"x"}}],"tools":[{{"type":"function","function":{{"name":"weather"}}}}],"tool_choice":{choice}}}"#
        );
        assert_eq!(body(&request)["tool_choice"], want, "{choice}");
    }
}

#[test]
fn images_become_image_blocks() {
    let body = body(
        r#"{"messages":[{"role":"user","content":[
            {"type":"text","text":"What is this?"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
            {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg","detail":"auto"}}]}]}"#,
    );
    assert_eq!(
        body["messages"][0]["content"],
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        ])
    );
}

#[test]
fn json_output_goes_through_a_forced_tool() {
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}});
    let request = json!({"messages": [{"role": "user", "content": "ok?"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}});
    let converted = convert(&request.to_string(), "m", false).unwrap();
    assert_eq!(converted.json_tool, Some(JSON_OUTPUT_TOOL));
    assert_eq!(converted.body["tools"][0]["name"], JSON_OUTPUT_TOOL);
    assert_eq!(converted.body["tools"][0]["input_schema"], schema);
    assert_eq!(
        converted.body["tool_choice"],
        json!({"type": "tool", "name": JSON_OUTPUT_TOOL})
    );
    let object = body(
        r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
    );
    assert_eq!(
        object["tools"][0]["input_schema"],
        json!({"type": "object"})
    );
    let text = convert(
        r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"text"}}"#,
        "m",
        false,
    )
    .unwrap();
    assert_eq!(text.json_tool, None);
    assert!(text.body.get("tools").is_none());
}

#[test]
fn unconvertible_fields_are_refused_by_name() {
    let user = r#"{"role":"user","content":"x"}"#;
    for (request, field) in [
        (format!(r#"{{"messages":[{user}],"logit_bias":{{"50256":-100}}}}"#), "request.logit_bias"),
        (format!(r#"{{"messages":[{user}],"n":2}}"#), "request.n"),
        (format!(r#"{{"messages":[{user}],"seed":7}}"#), "request.seed"),
        (format!(r#"{{"messages":[{user}],"presence_penalty":0.5}}"#), "request.presence_penalty"),
        (format!(r#"{{"messages":[{user}],"temperature":1.5}}"#), "request.temperature"),
        (format!(r#"{{"messages":[{user}],"tool_choice":"sometimes"}}"#), "request.tool_choice"),
        (
            format!(r#"{{"messages":[{user}],"tools":[{{"type":"custom","custom":{{"name":"x"}}}}]}}"#),
            "request.tools[0].type",
        ),
        (
            format!(r#"{{"messages":[{user}],"tools":[{{"type":"function","function":{{"name":"f","strict":true}}}}]}}"#),
            "request.tools[0].function.strict",
        ),
        (
            format!(r#"{{"messages":[{user}],"response_format":{{"type":"json_object"}},"tools":[{{"type":"function","function":{{"name":"f"}}}}]}}"#),
            "request.response_format",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{}}]}]}"#.into(),
            "request.messages[0].content[0].type",
        ),
        (
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png","detail":"low"}}]}]}"#.into(),
            "request.messages[0].content[0].image_url.detail",
        ),
        (r#"{"messages":[{"role":"user","name":"ann","content":"x"}]}"#.into(), "request.messages[0].name"),
        (r#"{"messages":[{"role":"function","content":"x"}]}"#.into(), "request.messages[0].role"),
        (r#"{"messages":[{"role":"tool","content":"x"}]}"#.into(), "request.messages[0].tool_call_id"),
        (
            r#"{"messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"[1]"}}]}]}"#.into(),
            "request.messages[0].tool_calls[0].function.arguments",
        ),
        (r#"{"messages":[{"role":"user","content":null}]}"#.into(), "request.messages[0].content"),
        (r#"{"nope":1}"#.into(), "request.nope"),
    ] {
        let e = refused(&request);
        assert_eq!(e.field, field, "{request}: {}", e.message);
        assert!(check(&request).is_err());
    }
}

#[test]
fn defaults_that_ask_for_nothing_are_accepted() {
    check(
        r#"{"messages":[{"role":"user","content":"x"}],"n":1,"logprobs":false,"presence_penalty":0,"frequency_penalty":0.0,"seed":null}"#,
    )
    .unwrap();
}
