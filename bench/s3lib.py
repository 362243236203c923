"""The S3 side shared by the benchmarks that need a store: moto's server, filestore's client
settings (and an aioboto3 client with them) and its remote settings (kept apart from benchlib,
which needs nothing beyond the standard library)."""

from __future__ import annotations

import os
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import aioboto3
import boto3
from aiobotocore.config import AioConfig
from benchlib import HOST, BenchError, Process, console_script, free_port, log
from botocore.config import Config

REGION = "us-east-1"
ACCESS_KEY = SECRET_KEY = "test"
MAX_CONNECTIONS = 32  # filestore's remote.max_connections default


def client_config() -> AioConfig:
    """filestore's S3 client configuration (remote/s3.py, `S3Remote.open`)."""
    return AioConfig(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=MAX_CONNECTIONS,
        connect_timeout=10,
        read_timeout=60,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )


def aio_client(endpoint: str) -> Any:
    """An aioboto3 S3 client of the S3 server `endpoint`, configured as filestore's own
    (`client_config`); an async context manager."""
    return aioboto3.Session().client(
        "s3", endpoint_url=endpoint, region_name=REGION, config=client_config(),
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)


def remote_settings(url: str, endpoint: str) -> dict[str, str]:
    """filestore's settings for the remote `url` (s3://bucket/prefix) at the S3 server
    `endpoint` (moto's: any region and keys do)."""
    return {
        "FILESTORE_REMOTE__URL": url,
        "FILESTORE_REMOTE__ENDPOINT_URL": endpoint,
        "FILESTORE_REMOTE__REGION": REGION,
        "FILESTORE_REMOTE__ACCESS_KEY_ID": ACCESS_KEY,
        "FILESTORE_REMOTE__SECRET_ACCESS_KEY": SECRET_KEY,
    }


# `client_config` as the reports describe it.
CLIENT_CONFIG_TEXT = (
    "addressing_style=path, request_checksum_calculation=when_required, "
    "response_checksum_validation=when_required, max_pool_connections="
    f"{MAX_CONNECTIONS}, connect_timeout=10, read_timeout=60, retries total_max_attempts=1")


class Moto:
    """`moto_server` on a free port of 127.0.0.1, its spooled objects under `work/moto-tmp`; it
    logs one line per request, which is how requests that reached the store are counted."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        tmp = work / "moto-tmp"
        tmp.mkdir()
        moto_server = console_script("moto_server")
        if moto_server is None:
            raise BenchError(f"moto_server not found next to {sys.executable} or on PATH")
        self.process = Process("moto_server", [moto_server, "-H", HOST, "-p", str(self.port)],
                               work / "moto.log", {**os.environ, "TMPDIR": str(tmp)},
                               log_command=True)
        self.client: Any = None

    def start(self, poll: float, port_timeout: float) -> None:
        self.process.start()
        self.process.wait_port(self.port, poll, port_timeout)
        self.client = boto3.client(
            "s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )
        log(f"moto_server: pid {self.process.pid} at {self.url}")

    def stop(self) -> None:
        self.process.stop()

    def reset(self) -> None:
        """Drop every bucket and object, so that each measurement starts from an empty store."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    def fresh_bucket(self, name: str) -> str:
        self.reset()
        self.client.create_bucket(Bucket=name)
        return name

    def listing(self, bucket: str) -> dict[str, int]:
        """key -> size of every object in `bucket`."""
        found: dict[str, int] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                found[item["Key"]] = int(item["Size"])
        return found

    def etag(self, bucket: str, key: str) -> str:
        return str(self.client.head_object(Bucket=bucket, Key=key)["ETag"])

    def object_size(self, bucket: str, key: str) -> int:
        return int(self.client.head_object(Bucket=bucket, Key=key)["ContentLength"])

    def gets_of(self, bucket: str, key: str) -> int:
        """GET requests of `key` that moto has logged so far (a ranged GET counts, too)."""
        needle = f"GET /{bucket}/{urllib.parse.quote(key)} HTTP/"
        text = self.process.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if needle in line)
