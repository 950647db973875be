"""Where packed shards live and what describes them: a local folder or ``s3://bucket/prefix``.

``trainkit pack`` writes, under one root::

    trainkit.json        the metadata: classes, input shape, pixel scale, how inputs are stored,
                         the training split's standardization statistics, split sizes, the recipe
    train/ val/ test/    one LitData dataset per split (index.json + chunk-*.bin)

Object stores are reached with the standard AWS environment (``AWS_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL_S3`` for an S3-compatible server, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` or a profile, ``AWS_DEFAULT_REGION``), never from the recipe, so no
credential reaches config.yaml or W&B. Every problem found here is a ConfigError naming the
root, the file or the variable, raised before a run dir is touched.

LitData is optional: it declares torchvision as a requirement, which breaks this stack's
torchmetrics (PITFALLS.md), so it is installed with ``--no-deps`` beside the ``streaming``
extra that holds its real requirements (:data:`INSTALL`).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainkit.data.datasets import DATASETS
from trainkit.errors import ConfigError

META_FILE = "trainkit.json"
FORMAT = "trainkit-shards"
VERSION = 1
SPLITS = ("train", "val", "test")
INSTALL = "pip install 'trainkit[streaming]' && pip install --no-deps 'litdata==0.2.76'"
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# keys a metadata file must hold (FORMAT_VERSION 1)
META_KEYS = ("format", "version", "classes", "input_shape", "is_image", "encoding", "max_value", "mean", "std", "splits")


def require_litdata(key: str) -> Any:
    """The ``litdata`` module, configured for this stack.

    Raises:
        ConfigError: LitData is not installed (the message is the install command).
    """
    try:
        import litdata
    except ImportError:
        raise ConfigError(f"streaming shards need LitData, installed without torchvision: {INSTALL}", key) from None
    _allow_plain_http()
    return litdata


def _allow_plain_http() -> None:
    # LitData 0.2.76 builds its obstore S3 client (chunk uploads and downloads) from the boto3
    # client's endpoint but with fixed client options that lack `allow_http`, so every request
    # to an http:// S3-compatible endpoint (MinIO, a cluster-local store) fails with "HTTP
    # error: builder error" while boto3 itself works. Allow plain HTTP exactly when the user's
    # endpoint is plain HTTP; this runs at import in spawned `optimize` workers as well.
    endpoint = endpoint_url()
    if endpoint and endpoint.startswith("http://"):
        from litdata.streaming import downloader

        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True


def endpoint_url() -> str | None:
    """The S3 endpoint from the environment (None: AWS itself)."""
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)


def is_remote(root: str) -> bool:
    """Whether ``root`` names an object store (``s3://``) rather than a local folder."""
    return "://" in str(root)


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a folder or an ``s3://`` prefix.

    >>> join("s3://bucket/data/", "train"), join("/tmp/d", "train", "index.json")
    ('s3://bucket/data/train', '/tmp/d/train/index.json')
    """
    if is_remote(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(Path(root, *parts))


def _bucket_prefix(url: str, key: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"{url!r}: object stores are named s3://bucket/prefix (other schemes are not supported)", key)
    return parsed.netloc, parsed.path.strip("/")


def s3_client(key: str) -> Any:
    """A boto3 S3 client from the environment, with short timeouts (a probe must not hang).

    Raises:
        ConfigError: no credentials in the environment.
    """
    env = tuple(os.environ.get(v) for v in (*ENDPOINT_VARS, "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_DEFAULT_REGION"))
    client = _client(os.getpid(), env)
    if client is None:
        raise ConfigError(
            "no AWS credentials for the object store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) in the environment; they are never read from the recipe", key
        )
    return client


@functools.lru_cache(maxsize=4)
def _client(pid: int, env: tuple[str | None, ...]) -> Any:
    # one client per process and environment: building one parses botocore's JSON models
    # (~0.1 s each on a busy machine), and each metadata or index read would build another
    import boto3
    from botocore.config import Config

    session = boto3.Session()
    if session.get_credentials() is None:
        return None
    config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
    return session.client("s3", config=config, region_name=session.region_name or "us-east-1")


def _s3_error(e: Exception, url: str, key: str) -> ConfigError:
    """One message for what a probe of ``url`` met."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    where = endpoint_url() or "AWS S3 (no AWS_ENDPOINT_URL set)"
    if isinstance(e, NoCredentialsError):
        return ConfigError(f"no AWS credentials for {url!r}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", key)
    if isinstance(e, EndpointConnectionError):
        return ConfigError(f"cannot reach the S3 endpoint {where} for {url!r}: set AWS_ENDPOINT_URL to your "
                           "S3-compatible server (or check the network)", key)
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404"):
            return ConfigError(f"{url!r}: bucket {_bucket_prefix(url, key)[0]!r} does not exist on {where}", key)
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return ConfigError(f"{url!r}: {where} refused the credentials ({code}); check AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY", key)
    return ConfigError(f"{url!r} on {where}: {type(e).__name__}: {e}", key)


def exists(root: str, key: str) -> bool:
    """Whether anything is stored at ``root`` (a folder, a file, or any object under the prefix).

    Raises:
        ConfigError: an object store that cannot be reached or refuses the credentials.
    """
    if not is_remote(root):
        return os.path.lexists(root)
    bucket, prefix = _bucket_prefix(root, key)
    client = s3_client(key)
    try:
        found = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "", MaxKeys=1)
    except Exception as e:  # noqa: BLE001  (botocore's errors, mapped to one message)
        raise _s3_error(e, root, key) from None
    return found.get("KeyCount", 0) > 0


def read_text(root: str, name: str, key: str) -> str:
    """The text of file ``name`` under ``root``.

    Raises:
        ConfigError: the root or the file is missing or unreadable, naming it.
    """
    path = join(root, name)
    if not is_remote(root):
        if not os.path.isdir(root):
            raise ConfigError(f"{root!r} is not a folder (expected the output of `trainkit pack`)", key)
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            raise ConfigError(f"{path!r} is missing: {root!r} is not a `trainkit pack` output", key) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read {path!r}: {e}", key) from None
    bucket, prefix = _bucket_prefix(root, key)
    client = s3_client(key)
    try:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{name}".lstrip("/"))["Body"].read()
    except Exception as e:  # noqa: BLE001
        from botocore.exceptions import ClientError

        if isinstance(e, ClientError) and e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise ConfigError(f"{path!r} is missing: {root!r} is not a `trainkit pack` output", key) from None
        raise _s3_error(e, root, key) from None
    return body.decode("utf-8", errors="replace")


def write_text(root: str, name: str, text: str, key: str) -> None:
    """Write file ``name`` under ``root`` (a folder that exists, or an object store prefix)."""
    if not is_remote(root):
        path = Path(root, name)
        tmp = path.with_name(f".{name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    bucket, prefix = _bucket_prefix(root, key)
    try:
        s3_client(key).put_object(Bucket=bucket, Key=f"{prefix}/{name}".lstrip("/"), Body=text.encode())
    except Exception as e:  # noqa: BLE001
        raise _s3_error(e, root, key) from None


def read_meta(root: str, key: str = "data.root") -> dict[str, Any]:
    """The checked metadata of the shards under ``root``, each split's LitData index present.

    Raises:
        ConfigError: a missing root, metadata or split index; a file that is not trainkit's.
    """
    meta_path = join(root, META_FILE)
    text = read_text(root, META_FILE, key)
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{meta_path!r} is not valid JSON ({e}); re-run `trainkit pack`", key) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{meta_path!r} is not a trainkit shard description (format {FORMAT!r})", key)
    missing = [k for k in META_KEYS if k not in meta]
    if missing or meta["version"] != VERSION:
        raise ConfigError(f"{meta_path!r}: version {meta.get('version')!r} with keys missing {missing}; this trainkit "
                          f"reads version {VERSION}: re-run `trainkit pack`", key)
    for split, n in meta["splits"].items():
        if split not in SPLITS or not isinstance(n, int) or n < 0:
            raise ConfigError(f"{meta_path!r}: bad split entry {split!r}: {n!r}", key)
        if n:
            _check_index(root, split, key)
    if not meta["splits"].get("train"):
        raise ConfigError(f"{meta_path!r}: the shards hold no training split", key)
    return meta


def _check_index(root: str, split: str, key: str) -> None:
    """A split's LitData ``index.json`` is there and parses (LitData itself fails deep in a worker)."""
    name = f"{split}/index.json"
    text = read_text(root, name, key)
    try:
        index = json.loads(text)
        chunks = index["chunks"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"{join(root, name)!r} is not a LitData index (corrupt or truncated); re-run `trainkit pack`",
                          key) from None
    if not is_remote(root):
        for chunk in chunks:
            path = Path(root, split, chunk["filename"])
            if not path.is_file():
                raise ConfigError(f"shard {str(path)!r} listed in {join(root, name)!r} is missing", key)


@DATASETS.register("streaming")
def streaming(root: str | None = None, **packed_args: Any) -> Any:
    """Shards written by `trainkit pack` (LitData extra): data.root is the folder or s3://bucket/prefix.

    ``packed_args``: the packed source's own ``data.dataset_args`` (a recipe keeps them when
    only ``data.dataset`` and ``data.root`` are overridden); applied when packing, so a value
    that differs from the pack's only warns.
    """
    from trainkit.data.streaming import StreamingSource

    return StreamingSource(root, packed_args)
