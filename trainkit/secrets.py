"""Keep secrets out of what a run writes: config.yaml, the W&B config and metadata, scripts.

A secret is the value of an environment variable named like a credential (``WANDB_API_KEY``,
``*_TOKEN``, ``*PASSWORD*``, ``*SECRET*``, ...), or any value under a recipe key named so.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIAL|ACCESS_?KEY)", re.I)
MASK = "***"


def is_secret_name(name: str) -> bool:
    """Whether a variable or key name looks like a credential.

    >>> is_secret_name("WANDB_API_KEY"), is_secret_name("hf_token"), is_secret_name("max_epochs")
    (True, True, False)
    """
    return bool(SECRET_NAME.search(name))


def secret_values(env: Mapping[str, str] = os.environ) -> list[str]:
    """Values of credential-like environment variables (6 characters or more), longest first."""
    return sorted({v for k, v in env.items() if is_secret_name(k) and len(v) >= 6}, key=len, reverse=True)


def find_secret(text: str, env: Mapping[str, str] = os.environ) -> str | None:
    """The name of the environment variable whose secret value ``text`` contains, if any."""
    for name, value in env.items():
        if is_secret_name(name) and len(value) >= 6 and value in text:
            return name
    return None


def redact(obj: Any, values: list[str] | None = None) -> Any:
    """A copy of ``obj`` with secret-named keys and secret values masked.

    >>> redact({"api_token": "x", "path": "/d/hunter2x/f", "n": 3}, ["hunter2x"])
    {'api_token': '***', 'path': '/d/***/f', 'n': 3}
    """
    values = secret_values() if values is None else values
    if isinstance(obj, Mapping):
        return {k: MASK if isinstance(k, str) and is_secret_name(k) and obj[k] is not None else redact(v, values)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, values) for v in obj)
    if isinstance(obj, str):
        for value in values:
            obj = obj.replace(value, MASK)
    return obj
