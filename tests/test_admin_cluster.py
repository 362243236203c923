"""The admin page's Nodes section: each node sharing the registry (here the one node of a SQLite
registry, which heartbeats too), rendered on the server and kept current by the page's script
from `/admin/api/cluster`; node names and URLs come from the registry, so they are escaped on
both paths, and the cluster secret is never on the page."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from conftest import LiveServer, wait_for
from markupsafe import escape

NODE = "edge-1"
ADVERTISE = "http://edge-1.internal:8080"
SECRET = "cluster-secret-never-on-the-page-0123456789"
HOSTILE_NAME = "<script>x</script>"
HOSTILE_URL = 'http://h:1/"><img src=x onerror="document.title=1">'


def start(make_server: Any) -> LiveServer:
    server: LiveServer = make_server(upload__delay="10m", cluster__node=NODE,
                                     cluster__advertise=ADVERTISE, cluster__secret=SECRET)
    # The first heartbeat runs as the server starts: wait for this node's row.
    with server.client() as client:
        wait_for(lambda: client.get("/admin/api/cluster").json()["nodes"], timeout=10)
    return server


def beat(server: LiveServer, name: str, url: str, heartbeat: float) -> None:
    """A node row as another node's heartbeat would write it."""
    with server.store.registry.transaction() as tx:
        tx.nodes.beat(name, url, 0, heartbeat)


def dashboard_html(server: LiveServer) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        r = browser.post("/admin/login", data={"token": server.token, "next": "/admin"})
        assert r.status_code == 303, r.text
        page = browser.get("/admin")
        assert page.status_code == 200
        return page.text


def test_the_page_escapes_what_the_registry_says(make_server: Any) -> None:
    server = start(make_server)
    beat(server, HOSTILE_NAME, HOSTILE_URL, time.time() - 3600)
    page = dashboard_html(server)
    assert HOSTILE_NAME not in page and HOSTILE_URL not in page
    assert "<img" not in page
    assert escape(HOSTILE_NAME) in page  # in the row's attribute and its text
    assert f"<code>{escape(HOSTILE_URL)}</code>" in page
    # This node, marked, and the hostile one dead, server-rendered (no script needed).
    row = re.search(r'<tr data-node="edge-1">(.*?)</tr>', page, re.S)
    assert row and "this node" in row.group(1) and ">alive<" in row.group(1)
    assert f"<code>{ADVERTISE}</code>" in row.group(1)
    dead = re.search(rf'<tr data-node="{re.escape(str(escape(HOSTILE_NAME)))}" class="dead">'
                     r"(.*?)</tr>", page, re.S)
    assert dead and ">dead<" in dead.group(1) and "this node" not in dead.group(1)
    assert ('<span data-nodes-field="alive">1</span> of <span data-nodes-field="count">2</span>'
            " alive") in page
    with server.client() as client:
        assert SECRET not in client.get("/admin/api/cluster").text
    assert SECRET not in page


@pytest.mark.timeout(60)
def test_the_nodes_section_live(browser: Any, make_server: Any) -> None:
    from playwright.sync_api import expect

    server = start(make_server)
    page = browser.new_page()
    page.set_default_timeout(10_000)
    page.goto(server.url + "/admin")
    page.get_by_label("API token").fill(server.token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(server.url + "/admin")

    section = page.get_by_role("region", name="Nodes")
    rows = section.locator("tbody tr")
    expect(rows).to_have_count(1)
    row = section.locator(f'tr[data-node="{NODE}"]')
    expect(row.locator('[data-node-field="name"]')).to_have_text(NODE)
    expect(row.locator("th")).to_contain_text("this node")
    expect(row.locator('[data-node-field="url"]')).to_have_text(ADVERTISE)
    expect(row.locator('[data-node-field="state"]')).to_have_text("alive")
    expect(row).not_to_have_class("dead")
    expect(row.locator('[data-node-field="local_files"]')).to_have_text("0")
    expect(row.locator('[data-node-field="uploads_in_flight"]')).to_have_text("0")

    # Two PUTs (the 10-minute upload delay keeps them local): the refresh shows them.
    with server.client() as client:
        for i, size in enumerate((1000, 2000)):
            assert client.put(f"/files/n/{i}.bin", content=b"x" * size).status_code == 201
    expect(row.locator('[data-node-field="local_files"]')).to_have_text("2")
    expect(row.locator('[data-node-field="local_bytes"]')).to_have_text("2.9 KiB")
    expect(section.locator('[data-nodes-field="alive"]')).to_have_text("1")

    # A node that joins shows up on the next refresh; a silent one is dead, in the warning
    # style; the script sets what the registry says as text, never as markup.
    beat(server, HOSTILE_NAME, HOSTILE_URL, time.time() - 3600)
    expect(rows).to_have_count(2)
    dead = rows.filter(has=page.locator(".state.dead"))
    expect(dead.locator('[data-node-field="name"]')).to_have_text(HOSTILE_NAME)
    expect(dead.locator('[data-node-field="url"]')).to_have_text(HOSTILE_URL)
    expect(dead).to_have_class("dead")
    expect(dead.locator('[data-node-field="state"]')).to_have_text("dead")
    expect(section.locator('[data-nodes-field="count"]')).to_have_text("2")
    assert page.locator("tbody img, tbody script").count() == 0
    assert page.title() != "1"
    assert SECRET not in page.content()
    page.close()
