"""The S3 endpoint against S3 clients as operators run them: the AWS CLI (`awscli` from PyPI, in a
venv of its own, `.venv-awscli`, since it pins its own botocore) and Debian's rclone, both
against a live `filestore serve --workers 2` with moto as the cloud. The files are then checked
at `/files/` and, once uploaded, in the moto bucket.

`.ci/run` installs both; elsewhere a missing client skips its test (and fails it under CI)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Moto, free_port, s3_overrides, wait_for

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).parent.parent
AWS = ROOT / ".venv-awscli" / "bin" / "aws"
RCLONE = shutil.which("rclone") or "/usr/bin/rclone"


def need(tool: Path | str, what: str) -> str:
    if not Path(tool).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{what} is not installed ({tool}): .ci/run installs it")
        pytest.skip(f"{what} is not installed ({tool})")
    return str(tool)


@pytest.fixture
def served(serve_process: Any, moto: Moto, bucket: str, tmp_path: Path) -> Any:
    s3_port = free_port()
    overrides = {key: value for key, value in s3_overrides(moto, bucket).items()}
    process = serve_process(tmp_path / "data", server__workers="2", s3__port=str(s3_port),
                            upload__delay="0", **overrides).start()
    keys = subprocess.run([sys.executable, "-m", "filestore", "s3", "keys", "--json"],
                          env=process.env, capture_output=True, text=True, check=True)
    process.keys = json.loads(keys.stdout)
    process.s3_url = f"http://127.0.0.1:{s3_port}"
    return process


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)


def moto_keys(moto: Moto, bucket: str) -> dict[str, int]:
    found = moto.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["Size"] for page in found for o in page.get("Contents", [])}


def test_the_aws_cli(served: Any, moto: Moto, bucket: str, tmp_path: Path) -> None:
    aws = need(AWS, "the AWS CLI")
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
           "AWS_ACCESS_KEY_ID": served.keys["access_key_id"],
           "AWS_SECRET_ACCESS_KEY": served.keys["secret_access_key"],
           "AWS_CONFIG_FILE": str(config), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no")}

    def run(*args: str) -> str:
        done = subprocess.run([aws, "--endpoint-url", served.s3_url, *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    run("s3", "mb", "s3://cli")
    sizes = {"empty.bin": 0, "small.txt": 1024, "big.bin": 100 * 1024**2 + 3}  # big: multipart
    source = tmp_path / "up"
    make_tree(source, {name: os.urandom(size) for name, size in sizes.items()})
    for name in sizes:
        run("s3", "cp", str(source / name), f"s3://cli/one/{name}")
    back = tmp_path / "down"
    for name in sizes:
        run("s3", "cp", f"s3://cli/one/{name}", str(back / name))
    assert tree(back) == tree(source)
    # sync both ways, with --delete
    local = tmp_path / "site"
    make_tree(local, {"index.html": b"<h1>hi</h1>", "css/a.css": b"a{}", "img/x.png": b"\x89PNG"})
    run("s3", "sync", str(local), "s3://cli/site")
    (local / "css" / "a.css").unlink()
    (local / "img" / "y.png").write_bytes(b"\x89PNG2")
    run("s3", "sync", str(local), "s3://cli/site", "--delete")
    mirror = tmp_path / "mirror"
    make_tree(mirror, {"stale.txt": b"old"})
    run("s3", "sync", "s3://cli/site", str(mirror), "--delete")
    assert tree(mirror) == tree(local)
    listed = run("s3", "ls", "--recursive", "s3://cli/")
    assert sorted(line.split()[-1] for line in listed.splitlines()) == sorted(
        [f"one/{n}" for n in sizes] + ["site/index.html", "site/img/x.png", "site/img/y.png"])
    head = json.loads(run("s3api", "head-object", "--bucket", "cli", "--key", "one/small.txt"))
    assert head["ContentLength"] == 1024
    url = run("s3", "presign", "s3://cli/one/small.txt", "--expires-in", "60").strip()
    assert httpx.get(url).content == (source / "small.txt").read_bytes()
    # The same files at /files/, and in the cloud once uploaded.
    with served.client() as files:
        body = files.get("/files/cli/one/big.bin").content
        assert hashlib.sha256(body).hexdigest() == tree(source)["big.bin"]
    wait_for(lambda: moto_keys(moto, bucket).get("fs/cli/one/big.bin") == sizes["big.bin"],
             timeout=60)


def test_rclone(served: Any, moto: Moto, bucket: str, tmp_path: Path) -> None:
    rclone = need(RCLONE, "rclone")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone 1.60 refuses it
    remote = (f":s3,provider=Other,access_key_id={served.keys['access_key_id']},"
              f"secret_access_key={served.keys['secret_access_key']},"
              f"endpoint='{served.s3_url}',region=us-east-1,force_path_style=true:")

    def run(*args: str) -> str:
        done = subprocess.run([rclone, "--config", "/dev/null", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    source = tmp_path / "src"
    make_tree(source, {"a.txt": b"alpha", "deep/b.bin": os.urandom(70 * 1024),
                       "deep/er/c.bin": os.urandom(6 * 1024**2)})
    run("mkdir", f"{remote}rcb")
    run("copy", str(source), f"{remote}rcb/data")
    run("check", str(source), f"{remote}rcb/data")  # sizes and MD5s, as the ETags say
    assert sorted(run("lsf", "-R", "--files-only", f"{remote}rcb/data").split()) == sorted(
        tree(source))
    (source / "a.txt").write_bytes(b"alpha, changed")
    (source / "deep" / "b.bin").unlink()
    run("sync", str(source), f"{remote}rcb/data")
    run("check", str(source), f"{remote}rcb/data")
    back = tmp_path / "back"
    run("sync", f"{remote}rcb/data", str(back))
    assert tree(back) == tree(source)
    with served.client() as files:
        assert files.get("/files/rcb/data/a.txt").content == b"alpha, changed"
        assert files.get("/files/rcb/data/deep/b.bin").status_code == 404
    wait_for(lambda: "fs/rcb/data/deep/er/c.bin" in moto_keys(moto, bucket), timeout=60)
