"""Keep secrets out of what a run writes: config.yaml, the hyper-parameters of every checkpoint,
the W&B config and metadata, launch scripts.

A secret is the value of an environment variable named like a credential (``WANDB_API_KEY``,
``*_TOKEN``, ``*PASSWORD*``, ``*SECRET*``, ...), any value under a recipe key named so
(``model.arch_args.api_key``), or a value shaped like a well-known credential wherever it is
(``sk-...``, ``ghp_...``, ``AKIA...``, ``hf_...``, a JWT, a private key, a password in a URL).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIAL|ACCESS_?KEY)", re.I)
MASK = "***"
# credentials recognizable by their shape (the issuers' documented prefixes)
CREDENTIAL = re.compile(
    r"(?:sk|rk|pk)[-_](?:live|test|proj)?[-_]?[A-Za-z0-9_-]{20,}"  # OpenAI, Stripe
    r"|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,}"  # GitHub
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|hf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[^-]*(?:-----END [A-Z ]*PRIVATE KEY-----)?"
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"  # user:password@ in URLs
)


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


def argv_has_secret(argv: list[str], env: Mapping[str, str] = os.environ) -> bool:
    """Whether a command line carries a secret: an environment secret's value, a credential-like
    value, or an override of a secret-named key (``--model.arch_args.api_key=...``).

    >>> argv_has_secret(["fit", "--model.arch_args.api_key=x"], {}), argv_has_secret(["fit", "--trainer.max_epochs=3"], {})
    (True, False)
    """
    text = " ".join(argv)
    if find_secret(text, env) or CREDENTIAL.search(text):
        return True
    return any(is_secret_name(part) for arg in argv if arg.startswith("--") for part in arg[2:].split("=")[0].split("."))


def redact(obj: Any, values: list[str] | None = None) -> Any:
    """A copy of ``obj`` with secret-named keys and secret values masked.

    >>> redact({"api_token": "x", "path": "/d/hunter2x/f", "n": 3}, ["hunter2x"])
    {'api_token': '***', 'path': '/d/***/f', 'n': 3}
    >>> redact({"note": "key ghp_" + "a" * 36, "url": "https://me:pa55@host/x"}, [])
    {'note': 'key ***', 'url': 'https://***@host/x'}
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
        obj = CREDENTIAL.sub(MASK, obj)
    return obj
