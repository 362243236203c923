"""`[admin] listen`: the admin page on a listener of its own. A real `filestore serve` (one worker
and two) answers /admin and its API only there, and there nothing but /admin... and /healthz;
the main listener keeps the files and the probes, and answers /admin as a route that does not
exist. The shipped nginx configs put the two on origins of their own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ServeProcess, free_port, wait_for

DEPLOY = Path(__file__).parent.parent / "deploy"


def _start(serve_process: Any, tmp_path: Path, workers: int = 1, admin_host: str = "127.0.0.1",
           same_port: bool = False) -> tuple[ServeProcess, str]:
    """`filestore serve` with admin.listen; the process and the admin listener's URL."""
    proc = serve_process(tmp_path / "data", server__workers=str(workers))
    admin = f"{admin_host}:{proc.port if same_port else free_port()}"
    proc.env["FILESTORE_ADMIN__LISTEN"] = admin
    proc.start(timeout=60)
    url = f"http://{admin}"
    wait_for(lambda: _answers(f"{url}/healthz"), timeout=30, interval=0.05)
    return proc, url


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(url, timeout=2).status_code == 200
    return False


def _check_split(proc: ServeProcess, admin_url: str) -> None:
    bearer = {"authorization": f"Bearer {proc.token}"}
    with httpx.Client(base_url=proc.url, headers=bearer, timeout=30) as main, \
            httpx.Client(base_url=admin_url, headers=bearer, timeout=30) as admin:
        # The main listener: files and probes, as ever.
        assert main.put("/files/doc.txt", content=b"public bytes").status_code == 201
        assert main.get("/files/doc.txt").content == b"public bytes"
        assert main.get("/files/", params={"prefix": ""}).status_code == 200
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert main.get(probe).status_code == 200, probe
        # ... and no admin page at all: the 404 of a route that does not exist.
        missing = main.get("/no-such-route")
        assert missing.status_code == 404
        for path in ("/admin", "/admin/", "/admin/login", "/admin/settings", "/admin/api/stats",
                     "/admin/api/files/doc.txt", "/admin/static/admin.css"):
            reply = main.get(path, follow_redirects=False)
            assert (reply.status_code, reply.json()) == (404, missing.json()), path
        reply = main.post("/admin/api/sign", json={"path": "doc.txt"})
        assert reply.status_code == 404
        assert main.post("/admin/login", data={"token": proc.token}).status_code == 404

        # The admin listener: the page, its API, sign-in, and /healthz.
        assert admin.get("/healthz").status_code == 200
        login = admin.get("/admin/login")
        assert login.status_code == 200 and "API token" in login.text
        assert admin.get("/admin/api/stats").json()["files"]["count"] == 1
        assert admin.get("/admin/api/files/doc.txt").status_code == 200
        assert admin.get("/admin/static/admin.css").status_code == 200
        with httpx.Client(base_url=admin_url, timeout=30) as browser_like:
            signed_in = browser_like.post("/admin/login", data={"token": proc.token},
                                          follow_redirects=True)
            assert signed_in.status_code == 200 and signed_in.url.path == "/admin"
            assert "data-csrf" in signed_in.text
        # ... and nothing else: no files (not even a PUT lands), no metrics.
        for path in ("/files/doc.txt", "/files/", "/readyz", "/metrics", "/", "/adminx"):
            assert admin.get(path).status_code == 404, path
        assert admin.head("/files/doc.txt").status_code == 404
        assert admin.put("/files/sneaky.txt", content=b"x").status_code == 404
        assert admin.delete("/files/doc.txt").status_code == 404
    assert not (proc.data_dir / "files" / "sneaky.txt").exists()
    assert (proc.data_dir / "files" / "doc.txt").exists()


def test_the_admin_page_answers_only_on_its_own_listener(
        serve_process: Any, tmp_path: Path) -> None:
    proc, admin_url = _start(serve_process, tmp_path)
    try:
        _check_split(proc, admin_url)
    finally:
        code, out = proc.stop(signal.SIGINT)  # Ctrl-C: a clean exit 0
    assert code == 0, out
    # The command says where the admin page is now.
    assert f"filestore: admin page {admin_url}/admin " in out
    assert f"filestore: admin page {proc.url}/admin" not in out


def test_listeners_on_one_port_are_told_apart_by_address(
        serve_process: Any, tmp_path: Path) -> None:
    """127.0.0.1:P the files, 127.0.0.2:P the admin page (loopback has all of 127/8)."""
    proc, admin_url = _start(serve_process, tmp_path, admin_host="127.0.0.2", same_port=True)
    try:
        assert admin_url.endswith(f":{proc.port}")
        _check_split(proc, admin_url)
    finally:
        proc.stop()


def _listening_inode(port: int) -> str:
    """The inode of the socket listening on 127.0.0.1:port (from /proc/net/tcp)."""
    local = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[3] == "0A":  # LISTEN
            return fields[9]
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def _sockets_of(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                found.add(target[len("socket:["):-1])
    return found


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


@pytest.mark.slow  # two worker processes take ~5-10 s to start on this 2-core machine
@pytest.mark.timeout(180)
def test_with_two_workers_each_serves_both_listeners(serve_process: Any, tmp_path: Path) -> None:
    proc, admin_url = _start(serve_process, tmp_path, workers=2)
    try:
        admin_port = int(admin_url.rpartition(":")[2])
        main_socket, admin_socket = _listening_inode(proc.port), _listening_inode(admin_port)
        workers = [pid for pid in _children(proc.proc.pid) if main_socket in _sockets_of(pid)]
        assert len(workers) == 2
        for pid in workers:
            assert admin_socket in _sockets_of(pid), pid
        _check_split(proc, admin_url)
        # New connections, spread by the kernel over both workers: every one answers alike.
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as fresh:
            for _ in range(20):
                assert fresh.get(f"{admin_url}/admin/login").status_code == 200
                assert fresh.get(f"{proc.url}/admin/login").status_code == 404
                assert fresh.get(f"{admin_url}/files/doc.txt").status_code == 404
    finally:
        code, out = proc.stop(signal.SIGINT)  # Ctrl-C: a clean exit 0
    assert code == 0, out


def test_an_admin_address_in_use_is_one_line_at_start(
        serve_process: Any, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve_process(tmp_path / "data", admin__listen=f"127.0.0.1:{port}")
        with pytest.raises(AssertionError, match="filestore serve exited"):
            proc.start(timeout=30)
    code, out = proc.stop()
    assert code == 2, out
    assert f"filestore: error: admin.listen: cannot listen on 127.0.0.1:{port}" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(("listen", "server", "serves"), [
    ("127.0.0.1:8081", ("127.0.0.1", 8081), True),
    ("127.0.0.1:8081", ("127.0.0.1", 8080), False),
    ("127.0.0.2:8080", ("127.0.0.1", 8080), False),  # the main listener on the same port
    ("0.0.0.0:8081", ("10.1.2.3", 8081), True),
    ("[::]:8081", ("::ffff:10.1.2.3", 8081), True),
    ("[::1]:8081", ("::1", 8081), True),
    ("[::1]:8081", ("127.0.0.1", 8081), False),
    ("localhost:8081", ("127.0.0.1", 8081), True),
    ("127.0.0.1:8081", None, False),  # a Unix socket: never the admin listener
])
def test_which_requests_came_in_on_the_admin_listener(
        listen: str, server: tuple[str, int] | None, serves: bool) -> None:
    from filestore.serving import AdminListener

    assert AdminListener.of(listen).serves(server) is serves


# -- the shipped nginx configs: the public server and the admin page's own ---------------------


def test_the_nginx_configs_put_the_admin_page_on_its_own_port(
        serve_process: Any, tmp_path: Path) -> None:
    from test_accel import MAIN_CONF, NGINX, deploy_conf

    if NGINX is None:
        pytest.skip("nginx is not installed (CI installs it: apt-get install -y nginx)")
    proc, admin_url = _start(serve_process, tmp_path)
    public_port, admin_port = free_port(), free_port()
    admin_conf = (DEPLOY / "nginx-admin.conf").read_text()
    for old, new in (("listen 8443;", f"listen 127.0.0.1:{admin_port};"),
                     ("server 127.0.0.1:8081;", f"server {admin_url.removeprefix('http://')};")):
        assert admin_conf.count(old) == 1, f"deploy/nginx-admin.conf no longer has {old!r}"
        admin_conf = admin_conf.replace(old, new)
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    (prefix / "filestore.conf").write_text(
        deploy_conf(public_port, proc.port, proc.data_dir) + admin_conf)
    user = "user root;\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(MAIN_CONF.format(user=user, prefix=prefix))
    nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"),
                              "-c", str(prefix / "nginx.conf")], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        public, admin = f"http://127.0.0.1:{public_port}", f"http://127.0.0.1:{admin_port}"

        def up() -> bool:
            assert nginx.poll() is None, (prefix / "error.log").read_text()
            return _answers(f"{public}/healthz") and _answers(f"{admin}/admin/login")

        wait_for(up, timeout=15)
        bearer = {"authorization": f"Bearer {proc.token}"}
        assert httpx.put(f"{public}/files/a.txt", content=b"a", headers=bearer).status_code == 201
        assert httpx.get(f"{public}/files/a.txt").content == b"a"
        for path in ("/admin", "/admin/login", "/admin/api/stats"):
            assert httpx.get(f"{public}{path}", headers=bearer).status_code == 404, path
        assert httpx.get(f"{admin}/admin/api/stats", headers=bearer).status_code == 200
        for path in ("/files/a.txt", "/healthz", "/"):
            assert httpx.get(f"{admin}{path}", headers=bearer).status_code == 404, path
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        proc.stop()
