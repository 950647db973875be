"""A real S3-compatible server on 127.0.0.1 for the tests: moto's standalone server (Werkzeug
serving moto's S3 over HTTP), started on a free port as a process of its own (in a thread of
the test process it would share the GIL with in-process training: every request slowed).

Clients reach it as a user's job reaches its object store: boto3 and LitData's obstore client
over HTTP, configured only by the standard AWS environment (:meth:`S3Server.env`); nothing
is patched or mocked on the client side.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from typing import Any

from test_metrics import free_port


class S3Server:
    """moto's server on ``127.0.0.1:<free port>``; :meth:`stop` ends it."""

    def __init__(self, timeout: float = 120) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:  # until it accepts connections
            assert self._proc.poll() is None, "moto's server exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.1)

    def env(self) -> dict[str, str]:
        """The AWS variables a client needs for this server (test credentials, accepted by moto)."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "trainkit-test-key",
            "AWS_SECRET_ACCESS_KEY": "trainkit-test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        import boto3

        env = self.env()
        return boto3.client("s3", endpoint_url=self.url, region_name=env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name (one per test: no state left between tests)."""
        name = f"trainkit-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=30)
