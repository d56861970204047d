"""The official OpenAI Python SDK against Sluice's front door.

Usage: python client.py BASE_URL. Runs every scenario and prints one JSON object of what
the SDK saw, which the Rust test (tests/front_door/mod.rs) checks. Nothing is asserted
here: an exception the SDK raises is recorded as that scenario's result.
"""

import json
import sys

import openai

WEATHER_TOOL = [{
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
QUESTION = {"role": "user", "content": "What is the weather in Oslo?"}


def error_of(e):
    """What an SDK error says: its class, HTTP status, and OpenAI's error fields."""
    body = getattr(e, "body", None) or {}
    return {
        "error": type(e).__name__,
        "status": getattr(e, "status_code", None),
        "code": body.get("code") if isinstance(body, dict) else None,
        "param": body.get("param") if isinstance(body, dict) else None,
        "type": body.get("type") if isinstance(body, dict) else None,
        "message": str(e),
        "retry_after": e.response.headers.get("retry-after") if getattr(e, "response", None) is not None else None,
    }


def whole(client, **kwargs):
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    c = raw.parse()
    choice = c.choices[0]
    calls = [
        {"id": t.id, "type": t.type, "name": t.function.name, "arguments": t.function.arguments}
        for t in (choice.message.tool_calls or [])
    ]
    return {
        "run_id": raw.headers.get("x-sluice-run-id"),
        "id": c.id,
        "object": c.object,
        "model": c.model,
        "content": choice.message.content,
        "finish_reason": choice.finish_reason,
        "tool_calls": calls,
        "usage": c.usage.model_dump() if c.usage else None,
    }


def streamed(client, **kwargs):
    raw = client.chat.completions.with_raw_response.create(stream=True, **kwargs)
    text, finish, usage, objects, calls = "", None, None, set(), {}
    for chunk in raw.parse():
        objects.add(chunk.object)
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
            for t in choice.delta.tool_calls or []:
                call = calls.setdefault(t.index, {"id": "", "type": None, "name": "", "arguments": ""})
                if t.id:
                    call["id"] += t.id
                if t.type:
                    call["type"] = t.type
                if t.function and t.function.name:
                    call["name"] += t.function.name
                if t.function and t.function.arguments:
                    call["arguments"] += t.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    return {
        "run_id": raw.headers.get("x-sluice-run-id"),
        "content": text,
        "finish_reason": finish,
        "usage": usage,
        "objects": sorted(objects),
        "tool_calls": [calls[i] for i in sorted(calls)],
    }


def round_trip(client, model, stream):
    """A tool-call round trip: the call, then the follow-up with the tool's result."""
    ask = whole if not stream else streamed
    first = ask(client, model=model, messages=[QUESTION], tools=WEATHER_TOOL, tool_choice="auto")
    call = first["tool_calls"][0] if first["tool_calls"] else None
    if call is None:
        return {"first": first, "second": None}
    assistant = {
        "role": "assistant",
        "content": first["content"] or None,
        "tool_calls": [{"id": call["id"], "type": "function",
                        "function": {"name": call["name"], "arguments": call["arguments"]}}],
    }
    tool = {"role": "tool", "tool_call_id": call["id"], "content": "12 C"}
    second = ask(client, model=model, messages=[QUESTION, assistant, tool], tools=WEATHER_TOOL)
    return {"first": first, "second": second}


def attempt(fn):
    try:
        return fn()
    except openai.APIError as e:
        return error_of(e)


def main():
    base_url = sys.argv[1]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)
    hello = [{"role": "user", "content": "hello front door"}]
    out = {
        "models": attempt(lambda: [m.id for m in client.models.list()]),
        "whole": attempt(lambda: whole(client, model="sim", messages=hello)),
        "streamed": attempt(lambda: streamed(client, model="fast", messages=hello,
                                             stream_options={"include_usage": True})),
        "background": attempt(lambda: whole(client, model="sim", messages=hello,
                                            extra_headers={"x-sluice-class": "background"})),
        "same_key": [attempt(lambda: whole(client, model="sim", messages=hello,
                                           extra_headers={"Idempotency-Key": "front-door-1"}))
                     for _ in range(2)],
        "unknown_model": attempt(lambda: whole(client, model="gpt-nope", messages=hello)),
        "no_messages": attempt(lambda: whole(client, model="sim", messages=[])),
        "two_choices": attempt(lambda: whole(client, model="sim", messages=hello, n=2)),
        "bad_priority": attempt(lambda: whole(client, model="sim", messages=hello,
                                              extra_headers={"x-sluice-priority": "urgent"})),
    }
    # A background run its provider's admission refuses: the SDK's RateLimitError, with the
    # server's Retry-After.
    out["refused"] = attempt(lambda: whole(client, model="full", messages=hello,
                                           extra_headers={"x-sluice-class": "background"}))
    # The SDK times out while the run is still working and retries with the same key: each
    # retry follows the one run, which the provider answers once.
    patient = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=4, timeout=1.0)
    out["retried"] = attempt(lambda: whole(patient, model="slow", messages=hello,
                                           extra_headers={"Idempotency-Key": "sdk-retry-1"}))
    for model in ["weather-openai", "weather-anthropic"]:
        for stream in [False, True]:
            key = f"{model}{'-streamed' if stream else ''}"
            out[key] = attempt(lambda: round_trip(client, model, stream))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
