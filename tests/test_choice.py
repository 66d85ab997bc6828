"""Scored choices in the LLM layer: log-probabilities → P(choice), and the constrained fallback."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from cxrctx.llm import Sampling, get_engine
from cxrctx.llm.choice import (
    check_choices,
    choice_request,
    parse_choice,
    probs_from_top,
    scored_text,
)
from cxrctx.llm.runner import request_fingerprint
from tests._llm_helpers import smollm_gguf

MSGS = [{"role": "user", "content": "Is the sky blue? Answer positive or negative."}]


def test_probs_from_top_matches_token_prefixes_and_renormalises():
    top = {" pos": math.log(0.6), "negative": math.log(0.2), "Hello": math.log(0.2)}
    p = probs_from_top(top, ("positive", "negative"))
    assert p == pytest.approx({"positive": 0.75, "negative": 0.25})
    assert probs_from_top({'"ne': -0.1, "x": -0.2}, ("positive", "negative")) == {
        "positive": 0.0,
        "negative": 1.0,
    }
    assert probs_from_top({"Hello": -0.1, " ": -1.0}, ("positive", "negative")) is None


def test_choices_must_start_differently():
    with pytest.raises(ValueError, match="different letters"):
        check_choices(("left", "lower"))
    with pytest.raises(ValueError):
        check_choices(("only",))


def test_parse_choice_accepts_scored_and_unscored_answers_only_for_asked_choices():
    a = parse_choice(scored_text({"positive": 0.3, "negative": 0.7}), ("positive", "negative"))
    assert (a.choice, a.prob("negative")) == ("negative", 0.7)
    b = parse_choice('{"choice": "Positive"}', ("positive", "negative"))
    assert (b.choice, b.probs) == ("positive", None)
    with pytest.raises(ValueError, match="not one of"):
        parse_choice('{"choice": "maybe"}', ("positive", "negative"))
    with pytest.raises(ValueError, match="cover exactly"):
        parse_choice('{"choice": "positive", "probs": {"positive": 1.0}}', ("positive", "negative"))


def test_choices_enter_the_cache_fingerprint():
    a = choice_request(MSGS, ("positive", "negative"))
    b = choice_request(MSGS, ("present", "absent"))
    assert request_fingerprint(a) != request_fingerprint(b)
    assert a.json_schema["properties"]["choice"]["enum"] == ["positive", "negative"]


def test_fake_engine_answers_the_constrained_fallback_unscored():
    eng = get_engine("fake", "m")
    [c] = eng.complete([choice_request(MSGS, ("positive", "negative"))], Sampling())
    a = parse_choice(c.text, ("positive", "negative"))
    assert a.choice == "positive" and a.probs is None


# ---------------------------------------------------------------------------- OpenAI stub


class _LogprobStub(BaseHTTPRequestHandler):
    mode: ClassVar[str] = "logprobs"
    bodies: ClassVar[list] = []

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        if body.get("logprobs") and self.mode == "refuse":
            return self._send(400, {"error": {"message": "logprobs not supported"}})
        msg = {"role": "assistant", "content": '{"choice": "negative"}'}
        choice = {"index": 0, "message": msg, "finish_reason": "stop"}
        if body.get("logprobs") and self.mode == "logprobs":
            top = [
                {"token": "neg", "logprob": math.log(0.3), "bytes": None},
                {"token": "pos", "logprob": math.log(0.6), "bytes": None},
                {"token": "the", "logprob": math.log(0.1), "bytes": None},
            ]
            msg["content"] = "pos"
            choice["logprobs"] = {
                "content": [
                    {"token": "pos", "logprob": math.log(0.6), "bytes": None, "top_logprobs": top}
                ]
            }
        self._send(
            200,
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [choice],
                "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
            },
        )

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def logprob_server():
    _LogprobStub.bodies = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _LogprobStub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("mode", ["logprobs", "refuse", "ignore"])
def test_openai_scores_choices_or_falls_back_to_the_constrained_answer(logprob_server, mode):
    _LogprobStub.mode = mode
    eng = get_engine("openai", "m", base_url=logprob_server, backoff_s=0.01)
    reqs = [choice_request(MSGS, ("positive", "negative"), key=str(i)) for i in range(2)]
    out = eng.complete(reqs, Sampling())
    answers = [parse_choice(c.text, ("positive", "negative")) for c in out]
    first = _LogprobStub.bodies[0]
    assert first["logprobs"] is True and first["max_tokens"] == 1 and first["top_logprobs"] >= 5
    if mode == "logprobs":
        assert [a.choice for a in answers] == ["positive", "positive"]
        assert answers[0].prob("positive") == pytest.approx(2 / 3, abs=1e-4)
        assert len(_LogprobStub.bodies) == 2
    else:  # refused or ignored once: the rest of the run asks the constrained choice only
        assert [a.choice for a in answers] == ["negative", "negative"]
        assert all(a.probs is None for a in answers)
        assert [bool(b.get("logprobs")) for b in _LogprobStub.bodies] == [True, False, False]


# ---------------------------------------------------------------------------- llama.cpp


def test_llamacpp_scores_choices_from_logprobs():
    """Plumbing with the tiny real model: a probability per choice that sums to one."""
    eng = get_engine("llamacpp", smollm_gguf(), n_ctx=512, n_threads=1)
    try:
        req = choice_request(
            [{"role": "user", "content": "Answer with one word, yes or no: is fire hot?"}],
            ("yes", "no"),
        )
        [c] = eng.complete([req], Sampling())
    finally:
        eng.close()
    assert c.finish_reason == "stop", c.error
    a = parse_choice(c.text, ("yes", "no"))
    assert c.extra.get("scored") is True and a.probs is not None
    assert sum(a.probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert c.completion_tokens <= 1
