"""The S3 endpoint behind the shipped `deploy/nginx-s3.conf` with TLS, as operators run it: over
https, boto3 and the AWS CLI send aws-chunked bodies with a CRC32 trailer
(STREAMING-UNSIGNED-PAYLOAD-TRAILER) by default, single part and multipart; the bytes arrive
whole at `/files/`, and a corrupted trailer keeps nothing."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from conftest import LiveServer, free_port, wait_for
from test_accel import MAIN_CONF, NGINX, needs_nginx
from test_s3_clients import AWS, need

pytestmark = [pytest.mark.timeout(180), needs_nginx]

DEPLOY = Path(__file__).parent.parent / "deploy" / "nginx-s3.conf"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (cryptography, as secrets.py uses it)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls(make_server: Any, tmp_path: Path) -> Any:
    server: LiveServer = make_server(s3=True)
    upstream = int(server.s3_url.rsplit(":", 1)[1])
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    cert, key = self_signed(prefix)
    port = free_port()
    text = DEPLOY.read_text()
    for old, new in (("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
                     ("server 127.0.0.1:9000;", f"server 127.0.0.1:{upstream};"),
                     ("/etc/ssl/certs/s3.example.com.pem", str(cert)),
                     ("/etc/ssl/private/s3.example.com.key", str(key))):
        assert text.count(old) == 1, f"deploy/nginx-s3.conf no longer has {old!r}"
        text = text.replace(old, new)
    (prefix / "filestore.conf").write_text(text)
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(MAIN_CONF.format(user=user, prefix=prefix))
    assert NGINX is not None
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c",
                             str(prefix / "nginx.conf")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def up() -> bool:
        assert proc.poll() is None, (prefix / "error.log").read_text()
        import socket

        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    wait_for(up, timeout=10)
    server.https = f"https://127.0.0.1:{port}"
    server.cert = cert
    yield server
    proc.terminate()
    proc.wait(timeout=10)


def client(server: Any) -> Any:
    pair, _ = server.service.s3_keys.admin_pair()
    return boto3.client("s3", endpoint_url=server.https, region_name="us-east-1",
                        aws_access_key_id=pair.access_key_id,
                        aws_secret_access_key=pair.secret_access_key, verify=str(server.cert),
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"max_attempts": 1}))


def test_boto3_over_https_sends_checksum_trailers_and_they_are_checked(tls: Any,
                                                                        tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    s3 = client(tls)
    seen: list[str] = []
    s3.meta.events.register("before-send.s3.*", lambda request, **_: seen.append(
        request.headers.get("X-Amz-Content-SHA256", b"").decode()))
    s3.create_bucket(Bucket="secure")
    s3.put_object(Bucket="secure", Key="one.txt", Body=b"over tls")
    assert "STREAMING-UNSIGNED-PAYLOAD-TRAILER" in seen  # what current boto3 sends over https
    source = tmp_path / "big.bin"
    data = os.urandom(11 * 1024**2)
    source.write_bytes(data)
    s3.upload_file(str(source), "secure", "big.bin", Config=TransferConfig(
        multipart_threshold=5 * 1024**2, multipart_chunksize=5 * 1024**2))
    with tls.client() as files:
        assert files.get("/files/secure/one.txt").content == b"over tls"
        body = files.get("/files/secure/big.bin").content
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
    assert s3.get_object(Bucket="secure", Key="one.txt")["Body"].read() == b"over tls"

    # A trailer that does not match the bytes (framed and signed as boto3 does): refused, and
    # nothing kept.
    trusted = ssl.create_default_context(cafile=str(tls.cert))
    answer = httpx.put(f"{tls.https}/secure/bad.txt", verify=trusted,
                       content=chunked_body(b"data-two", b"data-one"),
                       headers=trailer_headers(tls, "/secure/bad.txt", 8))
    assert answer.status_code == 400 and b"<Code>BadDigest</Code>" in answer.content
    with tls.client() as files:
        assert files.get("/files/secure/bad.txt").status_code == 404


def chunked_body(sent: bytes, checksummed: bytes) -> bytes:
    """`sent` framed as aws-chunked by botocore, with the CRC32 trailer of `checksummed`."""
    import io

    from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

    body = AwsChunkedWrapper(io.BytesIO(checksummed), checksum_cls=Crc32Checksum,
                             checksum_name="x-amz-checksum-crc32").read()
    assert len(sent) == len(checksummed) and body.count(checksummed) == 1
    return body.replace(checksummed, sent)


def trailer_headers(server: Any, path: str, length: int) -> dict[str, str]:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    pair, _ = server.service.s3_keys.admin_pair()
    request = AWSRequest(method="PUT", url=server.https + path, headers={
        "Content-Encoding": "aws-chunked", "x-amz-trailer": "x-amz-checksum-crc32",
        "x-amz-decoded-content-length": str(length)})
    # As botocore's flexible checksums mark a request whose checksum goes in the trailer.
    request.context["checksum"] = {"request_algorithm": {"in": "trailer"}}
    S3SigV4Auth(Credentials(pair.access_key_id, pair.secret_access_key), "s3",
                "us-east-1").add_auth(request)
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}


def test_the_aws_cli_over_https(tls: Any, tmp_path: Path) -> None:
    aws = need(AWS, "the AWS CLI")
    pair, _ = tls.service.s3_keys.admin_pair()
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
           "AWS_ACCESS_KEY_ID": pair.access_key_id,
           "AWS_SECRET_ACCESS_KEY": pair.secret_access_key, "AWS_CONFIG_FILE": str(config),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CA_BUNDLE": str(tls.cert)}
    source = tmp_path / "file.bin"
    data = os.urandom(9 * 1024**2 + 1)  # above the CLI's 8 MiB threshold: multipart
    source.write_bytes(data)
    for args in (("s3", "mb", "s3://clitls"), ("s3", "cp", str(source), "s3://clitls/f.bin"),
                 ("s3", "cp", "s3://clitls/f.bin", str(tmp_path / "back.bin"))):
        done = subprocess.run([aws, "--endpoint-url", tls.https, *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert (tmp_path / "back.bin").read_bytes() == data
