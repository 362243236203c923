"""Conditional requests (RFC 9110 section 13): `check_preconditions` and `if_range_allows` unit
tests, then the same rules end to end through the real server for GET, HEAD and PUT."""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
from collections.abc import Iterator

import httpx
import pytest
from conftest import LiveServer

from filestore.conditional import Validators, check_preconditions, file_etag, if_range_allows
from filestore.errors import PreconditionFailed
from filestore.registry import FileRecord

T = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT
IMF = "Sun, 06 Nov 1994 08:49:37 GMT"
RFC850 = "Sunday, 06-Nov-94 08:49:37 GMT"
ASCTIME = "Sun Nov  6 08:49:37 1994"
TAG = '"' + "a" * 64 + '"'
OTHER = '"' + "b" * 64 + '"'
V = Validators(etag=TAG, last_modified=T)


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


def run(method: str, headers: dict[str, str], current: Validators | None = V) -> int | None:
    return check_preconditions(method, {k.lower(): v for k, v in headers.items()}, current)


def fails(method: str, headers: dict[str, str], current: Validators | None = V) -> bool:
    try:
        run(method, headers, current)
    except PreconditionFailed as exc:
        assert exc.status == 412 and exc.code == "precondition_failed"
        return True
    return False


# --------------------------------------------------------------------------------------------
# Validators
# --------------------------------------------------------------------------------------------

def test_validators():
    record = FileRecord("a.png", 1024, "ab12", "image/png", 1.0, 1_700_000_000.7)
    assert file_etag(record) == '"ab12"'
    # nginx's own ETag of a static file: mtime and size in hex (ngx_http_set_etag)
    plain = dataclasses.replace(record, plain_etag=True)
    assert file_etag(plain) == '"6553f100-400"'
    assert V.http_date == IMF


# --------------------------------------------------------------------------------------------
# check_preconditions: If-None-Match and If-Modified-Since (GET/HEAD)
# --------------------------------------------------------------------------------------------

def test_no_conditions():
    for method in ("GET", "HEAD", "PUT"):
        assert run(method, {}) is None
    assert run("PUT", {}, None) is None


@pytest.mark.parametrize("value", [
    TAG,
    "W/" + TAG,  # If-None-Match uses the weak comparison
    f"{OTHER}, {TAG}",
    f'"x",W/{TAG} , "y"',
    f"{TAG},",
    "*",
    " * ",
])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_none_match_that_matches_is_304(method, value):
    assert run(method, {"If-None-Match": value}) == 304


@pytest.mark.parametrize("value", [
    OTHER,
    "W/" + OTHER,
    f"{OTHER}, W/{OTHER}",
    TAG.upper(),  # entity tags are case-sensitive
    TAG[:-2] + '"',
    '""',
])
def test_if_none_match_that_does_not_match(value):
    assert run("GET", {"If-None-Match": value}) is None


@pytest.mark.parametrize("value", [TAG.strip('"'), "W/", "garbage", f"{TAG} garbage"])
def test_malformed_if_none_match_is_ignored_on_get(value):
    assert run("GET", {"If-None-Match": value}) is None


def test_if_none_match_on_a_missing_file():
    assert run("GET", {"If-None-Match": "*"}, None) is None
    assert run("GET", {"If-None-Match": TAG}, None) is None


@pytest.mark.parametrize("value", [IMF, http_date(T + 1), http_date(T + 10**6), RFC850, ASCTIME])
def test_if_modified_since_at_or_after_last_modified_is_304(value):
    # RFC 9110 5.6.7: a recipient MUST accept all three HTTP-date formats.
    assert run("GET", {"If-Modified-Since": value}) == 304
    assert run("HEAD", {"If-Modified-Since": value}) == 304


@pytest.mark.parametrize("value", [http_date(T - 1), http_date(0), "not a date", "", "1994"])
def test_if_modified_since_before_or_invalid_is_ignored(value):
    assert run("GET", {"If-Modified-Since": value}) is None


def test_if_modified_since_only_applies_to_get_and_head():
    assert run("PUT", {"If-Modified-Since": IMF}) is None
    assert run("DELETE", {"If-Modified-Since": IMF}) is None


def test_if_none_match_takes_precedence_over_if_modified_since():
    # A non-matching If-None-Match makes If-Modified-Since be ignored (RFC 9110 13.1.3)...
    assert run("GET", {"If-None-Match": OTHER, "If-Modified-Since": http_date(T + 100)}) is None
    # ...and a matching one answers 304 whatever the date says.
    assert run("GET", {"If-None-Match": TAG, "If-Modified-Since": http_date(T - 100)}) == 304


# --------------------------------------------------------------------------------------------
# check_preconditions: If-Match and If-Unmodified-Since, and state-changing methods
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [TAG, f"{OTHER}, {TAG}", "*"])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
def test_if_match_that_matches_goes_on(method, value):
    assert not fails(method, {"If-Match": value})


@pytest.mark.parametrize("value", [OTHER, "W/" + TAG, f"W/{TAG}, {OTHER}", TAG.upper()])
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
def test_if_match_that_does_not_match_is_412(method, value):
    # If-Match uses the strong comparison: a weak tag never matches (RFC 9110 13.1.1).
    assert fails(method, {"If-Match": value})


@pytest.mark.parametrize("value", ["*", TAG])
def test_if_match_when_the_file_does_not_exist_is_412(value):
    assert fails("PUT", {"If-Match": value}, None)


def test_if_match_is_evaluated_before_if_none_match():
    assert fails("GET", {"If-Match": OTHER, "If-None-Match": TAG})


@pytest.mark.parametrize("value", [
    http_date(T - 1), http_date(0), RFC850.replace("08:49", "07:49")])
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_if_unmodified_since_before_last_modified_is_412(method, value):
    assert fails(method, {"If-Unmodified-Since": value})


@pytest.mark.parametrize("value", [IMF, http_date(T + 1), ASCTIME, "not a date"])
def test_if_unmodified_since_at_or_after_last_modified_or_invalid_goes_on(value):
    assert not fails("PUT", {"If-Unmodified-Since": value})
    assert run("GET", {"If-Unmodified-Since": value}) is None


def test_if_unmodified_since_is_ignored_when_if_match_is_present():
    assert not fails("PUT", {"If-Match": TAG, "If-Unmodified-Since": http_date(T - 100)})


def test_if_unmodified_since_on_a_new_file_goes_on():
    assert not fails("PUT", {"If-Unmodified-Since": http_date(T - 100)}, None)


@pytest.mark.parametrize("value", ["*", TAG, "W/" + TAG, f"{OTHER}, {TAG}"])
def test_put_with_if_none_match_that_matches_is_412(value):
    assert fails("PUT", {"If-None-Match": value})


@pytest.mark.parametrize("value", ["*", TAG])
def test_put_with_if_none_match_on_a_new_file_goes_on(value):
    assert run("PUT", {"If-None-Match": value}, None) is None


def test_put_with_if_none_match_that_does_not_match_goes_on():
    assert run("PUT", {"If-None-Match": OTHER}) is None


@pytest.mark.parametrize("value", [OTHER.strip('"'), "garbage", f"{OTHER} garbage"])
def test_malformed_if_match_does_not_let_a_write_through(value):
    assert fails("PUT", {"If-Match": value})


# --------------------------------------------------------------------------------------------
# if_range_allows
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "allowed"), [
    (None, True),
    (TAG, True),
    (f" {TAG} ", True),
    (OTHER, False),
    ("W/" + TAG, False),  # strong comparison: weak never matches
    (TAG.strip('"'), False),
    (IMF, True),  # the exact Last-Modified
    (http_date(T + 1), False),
    (http_date(T - 1), False),
    ("not a date", False),
    ("", False),
])
def test_if_range_allows(value, allowed):
    headers = {} if value is None else {"if-range": value}
    assert if_range_allows(headers, V) is allowed


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------

BODY = b"conditional requests, RFC 9110 section 13\n" * 100


class Env:
    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.client = server.client()  # one client for the module: each costs ~50 ms to make
        r = self.client.put("/files/doc.txt", content=BODY)
        assert r.status_code == 201
        self.etag = r.headers["etag"]
        head = self.client.head("/files/doc.txt")
        self.last_modified = head.headers["last-modified"]
        assert head.headers["etag"] == self.etag == f'"{hashlib.sha256(BODY).hexdigest()}"'

    def get(self, method: str = "GET", path: str = "doc.txt", **headers: str) -> httpx.Response:
        return self.client.request(method, f"/files/{path}", headers=headers)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    server = LiveServer(tmp_path_factory.mktemp("conditional") / "data")
    e = Env(server)
    yield e
    e.client.close()
    server.stop()


def _shift(date: str, seconds: int) -> str:
    return http_date(email.utils.parsedate_to_datetime(date).timestamp() + seconds)


def assert_304(r: httpx.Response, env: Env) -> None:
    assert r.status_code == 304, (r.status_code, r.content[:100])
    assert r.content == b""
    assert r.headers["etag"] == env.etag  # RFC 9110 15.4.5: the 200 would have had it
    assert r.headers["last-modified"] == env.last_modified


def assert_200(r: httpx.Response, env: Env, method: str = "GET") -> None:
    assert r.status_code == 200, (r.status_code, r.content[:200])
    assert r.headers["etag"] == env.etag
    assert r.content == (BODY if method == "GET" else b"")


def assert_412(r: httpx.Response) -> None:
    assert r.status_code == 412, (r.status_code, r.content[:200])
    assert r.json()["error"] == "precondition_failed"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("form", ["exact", "weak", "list", "star"])
def test_if_none_match_hit_is_304(env, method, form):
    value = {
        "exact": env.etag,
        "weak": "W/" + env.etag,
        "list": f'"nope", W/"other", {env.etag}',
        "star": "*",
    }[form]
    assert_304(env.get(method, **{"if-none-match": value}), env)


@pytest.mark.parametrize("value", ['"nope"', 'W/"nope"', '"a", "b"', "unquoted", ""])
def test_if_none_match_miss_is_200(env, value):
    assert_200(env.get(**{"if-none-match": value}), env)


@pytest.mark.parametrize("seconds", [0, 1, 3600])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_modified_since_not_modified_is_304(env, method, seconds):
    value = _shift(env.last_modified, seconds)
    assert_304(env.get(method, **{"if-modified-since": value}), env)


@pytest.mark.parametrize("value", ["before", "epoch", "invalid", "empty"])
def test_if_modified_since_modified_or_invalid_is_200(env, value):
    date = {
        "before": _shift(env.last_modified, -1),
        "epoch": http_date(0),
        "invalid": "yesterday-ish",
        "empty": "",
    }[value]
    assert_200(env.get(**{"if-modified-since": date}), env)


def test_if_none_match_takes_precedence_over_if_modified_since_end_to_end(env):
    later = _shift(env.last_modified, 3600)
    earlier = _shift(env.last_modified, -3600)
    assert_200(env.get(**{"if-none-match": '"nope"', "if-modified-since": later}), env)
    assert_304(env.get(**{"if-none-match": env.etag, "if-modified-since": earlier}), env)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_match_on_get(env, method):
    assert_200(env.get(method, **{"if-match": env.etag}), env, method)
    assert_200(env.get(method, **{"if-match": f'"nope", {env.etag}'}), env, method)
    assert_200(env.get(method, **{"if-match": "*"}), env, method)
    r = env.get(method, **{"if-match": '"nope"'})
    assert r.status_code == 412 and r.content[:1] in (b"", b"{")
    r = env.get(method, **{"if-match": "W/" + env.etag})  # strong comparison
    assert r.status_code == 412


def test_if_match_failure_beats_if_none_match(env):
    assert_412(env.get(**{"if-match": '"nope"', "if-none-match": env.etag}))


def test_if_unmodified_since(env):
    assert_412(env.get(**{"if-unmodified-since": _shift(env.last_modified, -1)}))
    assert_412(env.get(**{"if-unmodified-since": http_date(0)}))
    assert_200(env.get(**{"if-unmodified-since": env.last_modified}), env)
    assert_200(env.get(**{"if-unmodified-since": _shift(env.last_modified, 60)}), env)
    assert_200(env.get(**{"if-unmodified-since": "not a date"}), env)
    # If-Match present: If-Unmodified-Since is not evaluated.
    r = env.get(**{"if-match": env.etag, "if-unmodified-since": http_date(0)})
    assert_200(r, env)


def test_preconditions_on_a_missing_file_are_404(env):
    for headers in ({"if-match": "*"}, {"if-none-match": "*"}, {"if-match": '"x"'},
                    {"if-unmodified-since": http_date(0)}):
        assert env.get(path="missing.txt", **headers).status_code == 404


def test_conditional_get_with_range(env):
    r = env.get(**{"if-none-match": env.etag, "range": "bytes=0-9"})
    assert_304(r, env)
    r = env.get(**{"if-match": env.etag, "range": "bytes=0-9"})
    assert r.status_code == 206 and r.content == BODY[:10]
    assert_412(env.get(**{"if-match": '"nope"', "range": "bytes=0-9"}))


# -- PUT ---------------------------------------------------------------------------------------

def _fresh(env: Env, path: str, body: bytes = b"version one") -> str:
    r = env.client.put(f"/files/{path}", content=body)
    assert r.status_code == 201, r.text
    return r.headers["etag"]


def _unchanged(env: Env, path: str, body: bytes, etag: str) -> None:
    r = env.client.get(f"/files/{path}")
    assert r.status_code == 200 and r.content == body and r.headers["etag"] == etag


def test_put_if_none_match_star_on_an_existing_path_is_412(env):
    etag = _fresh(env, "put/inm-existing.txt")
    r = env.client.put("/files/put/inm-existing.txt", content=b"overwrite!",
                       headers={"if-none-match": "*"})
    assert_412(r)
    _unchanged(env, "put/inm-existing.txt", b"version one", etag)


def test_put_if_none_match_star_on_a_new_path_is_201(env):
    r = env.client.put("/files/put/inm-new.txt", content=b"created",
                       headers={"if-none-match": "*"})
    assert r.status_code == 201
    assert r.headers["etag"] == f'"{hashlib.sha256(b"created").hexdigest()}"'
    assert env.client.get("/files/put/inm-new.txt").content == b"created"
    # Now that it exists, the same request is refused.
    r = env.client.put("/files/put/inm-new.txt", content=b"again",
                       headers={"if-none-match": "*"})
    assert_412(r)
    assert env.client.get("/files/put/inm-new.txt").content == b"created"


def test_put_if_none_match_with_the_current_etag_is_412(env):
    etag = _fresh(env, "put/inm-etag.txt")
    assert_412(env.client.put("/files/put/inm-etag.txt", content=b"x",
                              headers={"if-none-match": etag}))
    _unchanged(env, "put/inm-etag.txt", b"version one", etag)
    r = env.client.put("/files/put/inm-etag.txt", content=b"x",
                       headers={"if-none-match": '"other"'})
    assert r.status_code == 200


def test_put_if_match_current_etag_replaces(env):
    etag = _fresh(env, "put/im-current.txt")
    r = env.client.put("/files/put/im-current.txt", content=b"version two",
                       headers={"if-match": etag})
    assert r.status_code == 200
    new_etag = r.headers["etag"]
    assert new_etag == f'"{hashlib.sha256(b"version two").hexdigest()}"'
    _unchanged(env, "put/im-current.txt", b"version two", new_etag)
    # The etag it replaced is stale now: a second writer holding it is refused.
    assert_412(env.client.put("/files/put/im-current.txt", content=b"lost update",
                              headers={"if-match": etag}))
    _unchanged(env, "put/im-current.txt", b"version two", new_etag)


@pytest.mark.parametrize("value", ['"' + "0" * 64 + '"', "W/{etag}", '"nope", "nada"'])
def test_put_if_match_stale_etag_is_412(env, value):
    path = "put/im-stale-" + hashlib.md5(value.encode()).hexdigest()[:8] + ".txt"
    etag = _fresh(env, path)
    r = env.client.put(f"/files/{path}", content=b"overwrite!",
                       headers={"if-match": value.format(etag=etag)})
    assert_412(r)
    _unchanged(env, path, b"version one", etag)


def test_put_if_match_on_a_missing_path_is_412_and_creates_nothing(env):
    for value in ("*", '"' + "0" * 64 + '"'):
        assert_412(env.client.put("/files/put/im-missing.txt", content=b"x",
                                  headers={"if-match": value}))
        assert env.client.get("/files/put/im-missing.txt").status_code == 404


def test_put_if_match_star_on_an_existing_path_replaces(env):
    _fresh(env, "put/im-star.txt")
    r = env.client.put("/files/put/im-star.txt", content=b"v2", headers={"if-match": "*"})
    assert r.status_code == 200
    assert env.client.get("/files/put/im-star.txt").content == b"v2"


def test_put_if_unmodified_since(env):
    etag = _fresh(env, "put/ius.txt")
    last_modified = env.client.head("/files/put/ius.txt").headers["last-modified"]
    assert_412(env.client.put("/files/put/ius.txt", content=b"x",
                              headers={"if-unmodified-since": http_date(0)}))
    assert_412(env.client.put("/files/put/ius.txt", content=b"x",
                              headers={"if-unmodified-since": _shift(last_modified, -1)}))
    _unchanged(env, "put/ius.txt", b"version one", etag)
    r = env.client.put("/files/put/ius.txt", content=b"v2",
                       headers={"if-unmodified-since": _shift(last_modified, 60)})
    assert r.status_code == 200


def test_put_with_an_unquoted_stale_if_match_is_412(env):
    etag = _fresh(env, "put/im-unquoted.txt")
    r = env.client.put("/files/put/im-unquoted.txt", content=b"lost update",
                       headers={"if-match": "0" * 64})
    assert r.status_code == 412
    _unchanged(env, "put/im-unquoted.txt", b"version one", etag)


def test_delete_with_a_stale_if_match_is_412(env):
    etag = _fresh(env, "delete/im-stale.txt")
    r = env.client.delete("/files/delete/im-stale.txt", headers={"if-match": '"nope"'})
    assert r.status_code == 412
    _unchanged(env, "delete/im-stale.txt", b"version one", etag)
