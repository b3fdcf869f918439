"""OpenAI-compatible endpoints: one place for how they are named in messages and how the API key
is found. Used by the judge transport and by the endpoint sampler (model-written principles).

The key is read from the environment variable whose *name* is configured, at the moment a client
is built; it is never stored in a config, an artifact or a message. A loopback endpoint (a local
vLLM server, a test server) needs no key and gets a placeholder.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOOPBACK_KEY = "sso-no-key"


def is_loopback_url(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "") if base_url else ""
    return host in ("localhost", "::1", "0.0.0.0") or host.startswith("127.")


def describe_endpoint(base_url: str) -> str:
    """The endpoint for messages, without any ``user:password@`` part of the URL."""
    if not base_url:
        return f"{DEFAULT_BASE_URL} (default)"
    parts = urlsplit(base_url)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def api_key_from_env(api_key_env: str, base_url: str) -> str | None:
    """The key in ``os.environ[api_key_env]``; a placeholder for a loopback endpoint; else None
    (the caller raises an error naming the variable, never a value)."""
    value = os.environ.get(api_key_env, "").strip()
    if value:
        return value
    if base_url and is_loopback_url(base_url):
        return LOOPBACK_KEY
    return None
