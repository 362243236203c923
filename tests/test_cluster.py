"""Three `filestore serve` nodes over one PostgreSQL registry and one moto bucket, each with its
own data directory, and the shipped `deploy/nginx-cluster.conf` in front: reads from the holder
before the upload, from the bucket after it (the holder killed with `kill -9`), a DELETE or
re-PUT on one node answered everywhere at once and the holder's stale bytes dropped, and paths
routed by consistent hashing."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Moto, ServeProcess, free_port, s3_overrides, wait_for
from test_accel import MAIN_CONF, NGINX, needs_nginx

pytest_plugins = ["pg"]

TOKEN = "cluster-test-token-0123456789abcdef"
SECRET = "cluster-secret-0123456789abcdef"
DEPLOY_CONF = Path(__file__).parent.parent / "deploy" / "nginx-cluster.conf"
pytestmark = pytest.mark.timeout(180)


class Cluster:
    def __init__(self, make: Callable[..., ServeProcess], tmp_path: Path, registry_url: str,
                 moto: Moto, bucket: str, **overrides: str) -> None:
        s3 = s3_overrides(moto, bucket)
        self.nodes = [
            make(tmp_path / f"n{i}", registry__url=registry_url, cluster__node=f"n{i}",
                 cluster__secret=SECRET, cluster__dead_after="3s", auth__token=TOKEN,
                 upload__delay="1h", **s3, **overrides)
            for i in (1, 2, 3)]
        # Together (the template database has the schema already: nothing to migrate).
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda node: node.start(), self.nodes))
        self.clients = [httpx.Client(base_url=n.url, timeout=60,
                                     headers={"authorization": f"Bearer {TOKEN}"})
                        for n in self.nodes]

    def put(self, i: int, path: str, body: bytes) -> httpx.Response:
        answer = self.clients[i].put(f"/files/{path}", content=body)
        assert answer.status_code in (200, 201), answer.text
        return answer

    def get(self, i: int, path: str) -> httpx.Response:
        return self.clients[i].get(f"/files/{path}")

    def state(self, i: int, path: str) -> dict[str, Any]:
        answer = self.clients[i].get(f"/admin/api/files/{path}")
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def upload_now(self, i: int, path: str) -> None:
        answer = self.clients[i].post(f"/admin/api/files/{path}/upload")
        assert answer.status_code == 200, answer.text
        wait_for(lambda: self.state(i, path)["location"] == "remote", timeout=30)

    def verify(self, i: int) -> None:
        """`filestore verify` on node i (its config: the same environment): clean."""
        import sys

        done = subprocess.run([sys.executable, "-m", "filestore", "verify"],
                              env=self.nodes[i].env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    def restart(self, i: int) -> None:
        self.nodes[i].kill()
        self.nodes[i].start()

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture
def cluster(serve_process: Any, tmp_path: Path, pg_registry_url: str, moto: Moto,
            bucket: str) -> Iterator[Cluster]:
    made = Cluster(serve_process, tmp_path, pg_registry_url, moto, bucket)
    yield made
    made.close()
    for node in made.nodes:
        if node.proc is not None and node.proc.poll() is None:
            _, output = node.stop()
            assert "Traceback" not in output, output


def body(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def test_peer_reads_then_the_bucket_after_the_holder_is_killed(cluster: Cluster) -> None:
    files = {"a/small.bin": body("s", 1024), "a/large.bin": body("l", 3 * 1024 * 1024 + 7),
             "a/empty.bin": b"", "b/unread.bin": body("u", 200_000)}
    for path, data in files.items():
        cluster.put(0, path, data)
    # Before any upload: nodes 2 and 3 read the bytes from node 1 (and cache them).
    for i in (1, 2):
        for path in ("a/small.bin", "a/large.bin", "a/empty.bin"):
            answer = cluster.get(i, path)
            assert answer.status_code == 200, answer.text
            assert answer.content == files[path]
            assert answer.headers["etag"] == f'"{hashlib.sha256(files[path]).hexdigest()}"'
    ranged = cluster.clients[1].get("/files/a/large.bin", headers={"range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == files["a/large.bin"][100:200]
    assert cluster.state(1, "a/large.bin")["location"] == "local"
    for path in files:
        cluster.upload_now(0, path)
    cluster.put(0, "c/only-local.bin", body("o", 5000))
    assert cluster.get(1, "c/only-local.bin").status_code == 200  # node 1 is alive still

    cluster.nodes[0].kill()
    for i in (1, 2):
        for path, data in files.items():  # cached, or read from the bucket (b/unread.bin)
            answer = cluster.get(i, path)
            assert answer.status_code == 200, (path, answer.text)
            assert answer.content == data
    # A file only node 1 holds: 503 with Retry-After (a fresh path: not cached anywhere).
    cluster.put(1, "c/elsewhere.bin", b"x")  # the survivors still take writes
    for i in (1, 2):
        answer = cluster.clients[i].get("/files/c/never-read.bin")
        assert answer.status_code == 404
    fresh = cluster.clients[2].get("/files/c/only-local.bin")
    assert fresh.status_code == 503, fresh.text
    assert fresh.json()["error"] == "remote_unavailable"
    assert fresh.headers["retry-after"]

    cluster.nodes[0].start()
    answer = wait_for(lambda: (lambda r: r if r.status_code == 200 else None)(
        cluster.get(2, "c/only-local.bin")), timeout=20)
    assert answer.content == body("o", 5000)
    for i in range(3):
        cluster.verify(i)


def test_a_change_on_one_node_wins_everywhere_at_once(cluster: Cluster) -> None:
    # Concurrent PUTs of one path on two nodes: every node then serves one whole version.
    one, two = body("one", 300_000), body("two", 300_000)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda args: cluster.put(*args), [(0, "same.bin", one),
                                                         (1, "same.bin", two)]))
    seen = {cluster.get(i, "same.bin").content for i in range(3)}
    assert len(seen) == 1 and seen <= {one, two}

    # DELETE on node 3 of a file node 1 holds (and node 3 has read, so cached).
    cluster.put(0, "victim.bin", b"v" * 10_000)
    assert cluster.get(2, "victim.bin").status_code == 200
    assert cluster.clients[2].delete("/files/victim.bin").status_code == 204
    for i in range(3):
        assert cluster.get(i, "victim.bin").status_code == 404
    held = cluster.nodes[0].data_dir / "files" / "victim.bin"
    cached = cluster.nodes[2].data_dir / "cache" / "victim.bin"
    wait_for(lambda: not held.exists() and not cached.exists(), timeout=10)

    # A re-PUT on node 3 of a file node 1 holds and node 2 cached: the new bytes everywhere.
    cluster.put(0, "x.bin", b"old" * 1000)
    assert cluster.get(1, "x.bin").content == b"old" * 1000
    cluster.put(2, "x.bin", b"new" * 1000)
    for i in range(3):
        assert cluster.get(i, "x.bin").content == b"new" * 1000
    old_holder = cluster.nodes[0].data_dir / "files" / "x.bin"
    wait_for(lambda: not old_holder.exists(), timeout=10)
    # Only the holder uploads: node 3's bytes go up from node 3.
    cluster.upload_now(2, "x.bin")
    for i in range(3):
        assert cluster.get(i, "x.bin").content == b"new" * 1000
    for i in range(3):
        cluster.verify(i)


def test_status_lists_every_node(cluster: Cluster) -> None:
    cluster.put(0, "s/one.bin", b"1" * 100)
    cluster.put(1, "s/two.bin", b"2" * 200)
    answer = cluster.clients[2].get("/admin/api/cluster")
    assert answer.status_code == 200, answer.text
    nodes = {n["name"]: n for n in answer.json()["nodes"]}
    assert set(nodes) == {"n1", "n2", "n3"}
    assert all(n["alive"] for n in nodes.values())
    assert (nodes["n1"]["local_files"], nodes["n1"]["local_bytes"]) == (1, 100)
    assert (nodes["n2"]["local_files"], nodes["n2"]["local_bytes"]) == (1, 200)
    assert nodes["n1"]["url"] == cluster.nodes[0].url
    assert SECRET not in answer.text
    cluster.nodes[1].kill()
    wait_for(lambda: not {n["name"]: n for n in cluster.clients[0].get(
        "/admin/api/cluster").json()["nodes"]}["n2"]["alive"], timeout=10)


def test_the_internal_endpoint_refuses_unsigned_and_forged_calls(cluster: Cluster) -> None:
    cluster.put(0, "secret/doc.txt", b"private")
    raw = httpx.get(f"{cluster.nodes[0].url}/_cluster/files/secret/doc.txt?version=1")
    assert raw.status_code == 401
    forged = httpx.get(f"{cluster.nodes[0].url}/_cluster/files/secret/doc.txt?version=1",
                       headers={"x-filestore-node": "n2", "x-filestore-time": "1",
                                "x-filestore-signature": "0" * 64})
    assert forged.status_code == 403
    from filestore.cluster.calls import sign

    version = cluster.state(0, "secret/doc.txt")["version"]
    url = f"{cluster.nodes[0].url}/_cluster/files/secret/doc.txt?version={version}"
    good = sign({}, SECRET, "GET", "/_cluster/files/secret/doc.txt", f"version={version}",
                "n2", "n1")
    assert httpx.get(url, headers=good).content == b"private"
    # Signed for another node (n3), or another range than the one asked: refused.
    elsewhere = sign({}, SECRET, "GET", "/_cluster/files/secret/doc.txt",
                     f"version={version}", "n2", "n3")
    assert httpx.get(url, headers=elsewhere).status_code == 403
    ranged = sign({"range": "bytes=0-0"}, SECRET, "GET", "/_cluster/files/secret/doc.txt",
                  f"version={version}", "n2", "n1")
    assert httpx.get(url, headers={**ranged, "range": "bytes=0-6"}).status_code == 403
    hostile = sign({}, SECRET, "GET", "/_cluster/files/../secret/doc.txt", "version=1", "n2",
                   "n1")
    answer = httpx.get(f"{cluster.nodes[0].url}/_cluster/files/%2E%2E/secret/doc.txt"
                       "?version=1", headers=hostile)
    assert answer.status_code in (400, 403, 404)


# -- nginx in front -----------------------------------------------------------------------------


class Router:
    """nginx with `deploy/nginx-cluster.conf`, its three servers the three nodes."""

    def __init__(self, prefix: Path, ports: list[int]) -> None:
        assert NGINX is not None
        prefix.mkdir()
        (prefix / "tmp").mkdir()
        self.prefix, self.port = prefix, free_port()
        text = DEPLOY_CONF.read_text()
        for old, new in [("listen 80;", f"listen 127.0.0.1:{self.port};"),
                         *((f"server 127.0.0.1:{8081 + i} ", f"server 127.0.0.1:{port} ")
                           for i, port in enumerate(ports))]:
            assert text.count(old) == 1, f"deploy/nginx-cluster.conf no longer has {old!r}"
            text = text.replace(old, new)
        (prefix / "filestore.conf").write_text(text)
        user = "user root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(MAIN_CONF.format(user=user, prefix=prefix))
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c",
             str(prefix / "nginx.conf")], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"

        def up() -> bool:
            with contextlib.suppress(httpx.TransportError):
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            return False

        wait_for(up, timeout=10)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@needs_nginx
def test_nginx_routes_each_path_to_one_node(cluster: Cluster, tmp_path: Path) -> None:
    router = Router(tmp_path / "nginx", [n.port for n in cluster.nodes])
    try:
        client = httpx.Client(base_url=router.url, timeout=30,
                              headers={"authorization": f"Bearer {TOKEN}"})
        paths = [f"r/{i}.bin" for i in range(24)]
        for path in paths:
            assert client.put(f"/files/{path}", content=path.encode()).status_code == 201
        first = {}
        for path in paths:
            answer = client.get(f"/files/{path}")
            assert answer.status_code == 200 and answer.content == path.encode()
            first[path] = answer.headers["x-filestore-upstream"]
        # The same node for a path every time (its cache), and more than one node in all.
        for path in paths:
            assert client.get(f"/files/{path}").headers["x-filestore-upstream"] == first[path]
        assert len(set(first.values())) >= 2
        assert client.get("/_cluster/files/r/0.bin?version=1").status_code == 404
        # A node down: its paths go to the next node, which reads them from their holder or
        # answers 503 if it was the holder; uploaded files are served by the others.
        for path in paths:
            holder = next(i for i, n in enumerate(cluster.nodes) if n.port == int(
                first[path].rsplit(":", 1)[1]))
            cluster.upload_now(holder, path)
        cluster.nodes[0].kill()
        for path in paths:
            answer = client.get(f"/files/{path}")
            assert answer.status_code == 200, (path, answer.text)
            assert answer.content == path.encode()
        client.close()
    finally:
        router.stop()


def test_start_up_cleanup_spares_uploads_other_nodes_run(serve_process: Any, tmp_path: Path,
                                                         pg_registry_url: str, moto: Moto,
                                                         bucket: str) -> None:
    """A node starting aborts the multipart uploads a crash left, but not one whose path
    another live node's worker leases right now (its upload is running)."""
    from filestore.registry.postgres import PostgresRegistry

    s3 = moto.client()
    running = s3.create_multipart_upload(Bucket=bucket, Key="fs/big/running.bin")["UploadId"]
    crashed = s3.create_multipart_upload(Bucket=bucket, Key="fs/big/crashed.bin")["UploadId"]
    registry = PostgresRegistry(pg_registry_url, node="n2")
    try:
        with registry.transaction() as tx:
            tx.queue.schedule("big/running.bin", "upload", 1, "default", 0.0, 0.0)
            tx.queue.schedule("big/crashed.bin", "upload", 1, "default", 0.5, 0.0)
            tx.queue.lease_due("n2:1:abcd", 1.0, 4e9, 1)  # running.bin: first in due order
            assert tx.queue.get("big/running.bin").lease_owner == "n2:1:abcd"
            tx.queue.drop("big/crashed.bin")
    finally:
        registry.close()
    node = serve_process(tmp_path / "n1", registry__url=pg_registry_url, cluster__node="n1",
                         cluster__secret=SECRET, auth__token=TOKEN, upload__delay="1h",
                         **s3_overrides(moto, bucket)).start()

    def open_uploads() -> set[str]:
        listed = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return {u["UploadId"] for u in listed}

    wait_for(lambda: crashed not in open_uploads(), timeout=15)
    assert running in open_uploads()
    node.stop()


@pytest.fixture
def replicated(serve_process: Any, tmp_path: Path, pg_registry_url: str, moto: Moto,
               bucket: str) -> Iterator[Cluster]:
    made = Cluster(serve_process, tmp_path, pg_registry_url, moto, bucket,
                   cluster__replicas="1")
    yield made
    made.close()


def test_with_a_replica_losing_the_holder_loses_nothing(replicated: Cluster,
                                                        tmp_path: Path) -> None:
    import sys

    cluster = replicated
    files = {f"rep/{i}.bin": body(f"r{i}", 1000 * i + 3) for i in range(6)}
    for path, data in files.items():
        cluster.put(0, path, data)
    # `filestore import` on the holder: each file recorded once another node has its copy.
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(2):
        data = body(f"imported{i}", 700 + i)
        (tree / f"{i}.bin").write_bytes(data)
        files[f"imp/{i}.bin"] = data
    done = subprocess.run([sys.executable, "-m", "filestore", "import", str(tree), "--prefix",
                           "imp"], env=cluster.nodes[0].env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    replicas = {path: cluster.state(0, path)["replica"] for path in files}
    assert set(replicas.values()) <= {"n2", "n3"} and all(replicas.values()), replicas
    for path, node in replicas.items():  # the copy is on the replica's disk, fsync'd
        data_dir = cluster.nodes[int(node[1]) - 1].data_dir
        digest = hashlib.sha256(files[path]).hexdigest()
        named = hashlib.sha256(path.encode()).hexdigest()
        assert (data_dir / "replicas" / f"{named}-{digest}").read_bytes() == files[path]

    cluster.nodes[0].kill()  # the holder, before any upload
    for i in (1, 2):
        for path, data in files.items():
            answer = cluster.get(i, path)
            assert answer.status_code == 200, (i, path, answer.text)
            assert answer.content == data
    # The replicas upload them (either holder may): everything reaches the bucket.
    for path in replicas:
        answer = cluster.clients[1].post(f"/admin/api/files/{path}/upload")
        assert answer.status_code == 200, answer.text
    for path in files:
        wait_for(lambda p=path: cluster.state(1, p)["location"] == "remote", timeout=30)
    cluster.nodes[0].start()
    for path, data in files.items():
        assert cluster.get(0, path).content == data
    for i in range(3):
        cluster.verify(i)


def test_with_a_replica_a_put_no_other_node_can_copy_is_refused(replicated: Cluster) -> None:
    cluster = replicated
    cluster.nodes[1].kill()
    cluster.nodes[2].kill()
    # Until the dead nodes' heartbeats age past dead_after, a PUT tries them and fails; after,
    # it finds nobody: a 503 either way, and nothing recorded.
    answer = cluster.clients[0].put("/files/lonely.bin", content=b"x" * 100)
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"]
    assert cluster.get(0, "lonely.bin").status_code == 404
    cluster.nodes[1].start()
    wait_for(lambda: cluster.clients[0].put("/files/lonely.bin", content=b"y").status_code
             == 201, timeout=20)
    assert cluster.state(0, "lonely.bin")["replica"] == "n2"


def test_copies_in_the_earlier_replica_layout_are_still_read_and_swept(tmp_path: Path) -> None:
    """Earlier versions kept a copy as `replicas/<path hash>/<bytes hash>`: still found, read
    and swept (with its directory) after an upgrade to the flat layout."""
    from filestore.local import LocalStore

    local = LocalStore(tmp_path)
    data = b"kept for another node"
    digest = hashlib.sha256(data).hexdigest()
    named = hashlib.sha256(b"old/x.bin").hexdigest()
    (local.replica_root / named).mkdir()
    (local.replica_root / named / digest).write_bytes(data)
    fd = local.open_replica("old/x.bin", digest)
    assert fd is not None
    with os.fdopen(fd, "rb") as copy:
        assert copy.read() == data
    new = tmp_path / "tmp" / "new"
    new.write_bytes(b"new")
    local.install_replica(new, "new/y.bin", hashlib.sha256(b"new").hexdigest())
    found = sorted((h, d) for h, d, _ in local.replica_copies())
    assert found == sorted([(named, digest), (hashlib.sha256(b"new/y.bin").hexdigest(),
                                              hashlib.sha256(b"new").hexdigest())])
    for _, _, where in list(local.replica_copies()):
        assert local.drop_replica(where, written_before=time.time() + 60)
    assert list(local.replica_root.iterdir()) == []
