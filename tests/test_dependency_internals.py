"""The internals of dependencies that filestore relies on, checked against the installed versions.

filestore subclasses uvicorn's httptools protocol (httpguard.py), reads the aiohttp response
inside aiobotocore's streaming body (remote/s3.py), rebinds prometheus-client's value class and
writes a histogram's buckets directly (metrics.py), and leans on a less visible behaviour of
Starlette. None of that is public API, so pyproject.toml bounds uvicorn,
aiobotocore and prometheus-client below the next minor version, and these tests say which
internal went missing, in which version, and which filestore module needs it. To move a bound:
install the new version, run this file, and fix what it names first.

Each check exercises the internal for real where that is cheap (a request through uvicorn's
protocol on a socket, a download from moto, metrics in a multiprocess directory), and none
depends on how the filestore module itself is written today, beyond the names it uses.
"""

from __future__ import annotations

import ast
import asyncio
import bisect
import inspect
import logging
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, NoReturn

import pytest

# How each dependency checked here is bounded in pyproject.toml.
BOUNDS = {
    "uvicorn": "uvicorn's upper bound in pyproject.toml",
    "aiobotocore": "aiobotocore's upper bound in pyproject.toml",
    "prometheus-client": "prometheus-client's upper bound in pyproject.toml",
    "aiohttp": "aiohttp is not bounded: readchunk() is its public API",
    "starlette": "starlette is not bounded for this",
}


def broken(dist: str, what: str, user: str) -> NoReturn:
    """Fail naming the dependency, its installed version, the internal and who needs it."""
    pytest.fail(f"{dist} {version(dist)}: {what}, which {user} relies on ({BOUNDS[dist]})",
                pytrace=False)


# -- uvicorn: filestore/httpguard.py subclasses HttpToolsProtocol -------------------------------

HTTPGUARD = "filestore/httpguard.py"
HTTPTOOLS_IMPL = "uvicorn.protocols.http.httptools_impl"
# The methods GuardedHttpToolsProtocol overrides (and calls through super()), with the
# positional parameters it passes on. The first three are asyncio.Protocol's, the others are
# the httptools parser's callbacks, which uvicorn's protocol receives because it hands
# `HttpRequestParser` itself.
OVERRIDES: dict[str, tuple[str, ...]] = {
    "connection_made": ("transport",),
    "connection_lost": ("exc",),
    "data_received": ("data",),
    "on_message_begin": (),
    "on_url": ("url",),
    "on_header": ("name", "value"),
    "on_headers_complete": (),
    "on_body": ("body",),
    "on_message_complete": (),
}
# What httpguard reads from the protocol uvicorn sets up, and from its request cycle.
PROTOCOL_READS = ("loop", "logger", "transport", "cycle")
CYCLE_READS = ("response_complete", "more_body")


def _httptools_protocol() -> type[asyncio.Protocol]:
    import importlib

    try:
        module = importlib.import_module(HTTPTOOLS_IMPL)
    except ImportError as exc:
        broken("uvicorn", f"{HTTPTOOLS_IMPL} cannot be imported ({exc})", HTTPGUARD)
    cls = getattr(module, "HttpToolsProtocol", None)
    if not isinstance(cls, type) or not issubclass(cls, asyncio.Protocol):
        broken("uvicorn", f"{HTTPTOOLS_IMPL}.HttpToolsProtocol is gone or no asyncio.Protocol "
               f"(found {cls!r})", f"{HTTPGUARD} (it subclasses it)")
    return cls


def _checked_httptools_protocol() -> type[asyncio.Protocol]:
    """HttpToolsProtocol, once it has each method httpguard overrides, taking what
    httpguard passes on."""
    cls = _httptools_protocol()
    for name, params in OVERRIDES.items():
        method = getattr(cls, name, None)
        if not callable(method):
            broken("uvicorn", f"{HTTPTOOLS_IMPL}.HttpToolsProtocol has no {name}()",
                   f"{HTTPGUARD} (it overrides it and calls super().{name})")
        # Defined by uvicorn itself, not inherited from asyncio.Protocol's no-ops: httpguard's
        # super() calls must reach uvicorn's code.
        owner = next(klass for klass in cls.__mro__ if name in klass.__dict__)
        if not owner.__module__.startswith("uvicorn."):
            broken("uvicorn", f"HttpToolsProtocol.{name} is no longer uvicorn's own (it is "
                   f"{owner.__module__}.{owner.__qualname__}'s)", HTTPGUARD)
        signature = inspect.signature(method)
        positional = [p for p in list(signature.parameters.values())[1:]
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required_extra = [p.name for p in list(signature.parameters.values())[1:]
                          if p.default is p.empty and p not in positional
                          and p.kind is not p.VAR_POSITIONAL and p.kind is not p.VAR_KEYWORD]
        if len(positional) != len(params) or required_extra:
            broken("uvicorn", f"HttpToolsProtocol.{name}{signature} no longer takes "
                   f"({', '.join(('self', *params))})",
                   f"{HTTPGUARD} (it overrides {name} and passes those on)")
    return cls


async def _app(scope: dict[str, Any], receive: Callable[..., Any],
               send: Callable[..., Any]) -> None:
    """Reads the whole body, answers with its length."""
    if scope["type"] != "http":
        return
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    answer = str(received).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


def _uvicorn_config(http: Any) -> Any:
    import uvicorn

    # log_config=None: uvicorn would otherwise reconfigure the process's logging.
    config = uvicorn.Config(app=_app, http=http, lifespan="off", log_config=None,
                            ws="none", interface="asgi3")
    config.load()
    return config


def _probe_class() -> type[Any]:
    """HttpToolsProtocol recording each overridden method as it is called, the way httpguard
    overrides them (and, after each httptools callback, the request cycle's state)."""
    base: Any = _checked_httptools_protocol()

    class Probe(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.probe_calls: list[tuple[str, bool]] = []  # (method, inside data_received)
            self.probe_cycles: dict[str, tuple[bool, bool]] = {}
            self.probe_feeding = False

        def _record(self, name: str) -> None:
            self.probe_calls.append((name, self.probe_feeding))

        def _cycle_state(self, name: str) -> None:
            cycle = self.cycle
            if cycle is not None:
                self.probe_cycles[name] = (getattr(cycle, "response_complete", None),
                                           getattr(cycle, "more_body", None))

        def connection_made(self, transport: asyncio.Transport) -> None:
            self._record("connection_made")
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            self._record("connection_lost")
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._record("data_received")
            self.probe_feeding = True
            try:
                super().data_received(data)
            finally:
                self.probe_feeding = False

        def on_message_begin(self) -> None:
            self._record("on_message_begin")
            super().on_message_begin()

        def on_url(self, url: bytes) -> None:
            self._record("on_url")
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._record("on_header")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._record("on_headers_complete")
            super().on_headers_complete()
            self._cycle_state("on_headers_complete")

        def on_body(self, body: bytes) -> None:
            self._record("on_body")
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._record("on_message_complete")
            super().on_message_complete()
            self._cycle_state("on_message_complete")

    return Probe


async def _wait_for(condition: Callable[[], bool], what: str,
                    closed: Callable[[], bool] = lambda: False) -> None:
    """Until `condition()`; failing after 5 s, or once `closed()`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not condition():
        if closed() or loop.time() > deadline:
            broken("uvicorn", f"the protocol never got to {what}"
                   f"{' (it closed the connection)' if closed() else ''}", HTTPGUARD)
        await asyncio.sleep(0.005)


async def _one_put(protocol_class: type[Any]) -> tuple[Any, bytes, dict[str, Any]]:
    """A PUT with a 10-byte body through `protocol_class` (a `_probe_class()`), built the way
    uvicorn's server builds its protocols, on a real socket: the head first, the body once the
    head was parsed.

    The protocol instance, the response, and what the protocol held after the head."""
    from uvicorn.server import ServerState

    config = _uvicorn_config(protocol_class)
    loop = asyncio.get_running_loop()
    made: list[Any] = []
    server_state = ServerState()

    def factory() -> asyncio.Protocol:
        protocol = protocol_class(config=config, server_state=server_state, app_state={},
                                  _loop=loop)
        made.append(protocol)
        return protocol  # type: ignore[no-any-return]

    server = await loop.create_server(factory, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"PUT /files/x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n")
            await _wait_for(lambda: bool(made) and made[0].cycle is not None,
                            "a request cycle after a PUT's head",
                            lambda: bool(made) and made[0].transport.is_closing())
            protocol = made[0]
            after_head = {name: getattr(protocol, name, AttributeError)
                          for name in PROTOCOL_READS}
            after_head["cycle"] = {name: getattr(protocol.cycle, name, AttributeError)
                                   for name in CYCLE_READS}
            writer.write(b"0123456789")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            response = head + await asyncio.wait_for(reader.readexactly(length), 5)
        finally:
            writer.close()
            await writer.wait_closed()
        await _wait_for(lambda: ("connection_lost", False) in protocol.probe_calls,
                        "connection_lost")
    finally:
        server.close()
        await server.wait_closed()
    return protocol, response, after_head


def test_uvicorn_httptools_protocol_has_the_methods_httpguard_overrides() -> None:
    _checked_httptools_protocol()


def test_uvicorn_resolves_httpguard_as_the_http_protocol() -> None:
    """`filestore serve` passes `http="filestore.httpguard:GuardedHttpToolsProtocol"`."""
    from filestore.httpguard import GuardedHttpToolsProtocol

    config = _uvicorn_config("filestore.httpguard:GuardedHttpToolsProtocol")
    if getattr(config, "http_protocol_class", None) is not GuardedHttpToolsProtocol:
        broken("uvicorn", "Config(http='module:Class').load() no longer makes that class the "
               f"http_protocol_class (got {getattr(config, 'http_protocol_class', None)!r})",
               "filestore/cli/server.py (serve's http=...httpguard:GuardedHttpToolsProtocol)")
    if not issubclass(GuardedHttpToolsProtocol, _httptools_protocol()):
        pytest.fail(f"{HTTPGUARD}: GuardedHttpToolsProtocol is no HttpToolsProtocol subclass "
                    "any more: update this test", pytrace=False)


def test_uvicorn_calls_the_overridden_callbacks_in_order_inside_data_received() -> None:
    """httpguard counts a head's bytes around `super().data_received()` and in the parser's
    `on_url` / `on_header` callbacks, so the parser's
    callbacks must run inside it, on the protocol itself (not on a separate callback object),
    and the cycle must say whether a body is still coming."""
    protocol, response, after_head = asyncio.run(_one_put(_probe_class()))
    calls = protocol.probe_calls
    names = [name for name, _ in calls]
    for name, found in after_head.items():
        if found is AttributeError:
            broken("uvicorn", f"HttpToolsProtocol has no .{name} once a head is parsed",
                   f"{HTTPGUARD} (it reads self.{name})")
    if not isinstance(after_head["loop"], asyncio.AbstractEventLoop):
        broken("uvicorn", f"HttpToolsProtocol.loop is {after_head['loop']!r}, no event loop",
               f"{HTTPGUARD} (it calls self.loop.time() and call_at())")
    if not isinstance(after_head["logger"], logging.Logger):
        broken("uvicorn", f"HttpToolsProtocol.logger is {after_head['logger']!r}",
               f"{HTTPGUARD} (it logs a refused head there)")
    transport = after_head["transport"]
    if not all(callable(getattr(transport, name, None))
               for name in ("write", "close", "is_closing")):
        broken("uvicorn", f"HttpToolsProtocol.transport is {transport!r}",
               f"{HTTPGUARD} (it writes a 431 and closes it)")
    for name, found in after_head["cycle"].items():
        if found is AttributeError:
            broken("uvicorn", f"HttpToolsProtocol.cycle (RequestResponseCycle) has no .{name}",
                   f"{HTTPGUARD} (it reads self.cycle.{name} in data_received)")
    for name in OVERRIDES:
        if name not in names:
            broken("uvicorn", f"HttpToolsProtocol.{name} was never called on the protocol for a "
                   f"request (calls: {names})", f"{HTTPGUARD} (it overrides {name})")
    for name in ("on_message_begin", "on_url", "on_header", "on_headers_complete", "on_body",
                 "on_message_complete"):
        if not all(inside for called, inside in calls if called == name):
            broken("uvicorn", f"the httptools callback {name} ran outside data_received "
                   f"(calls: {calls})", f"{HTTPGUARD} (it counts head bytes around data_received)")
    order = ["connection_made", "on_message_begin", "on_headers_complete",
             "on_message_complete", "connection_lost"]
    if [name for name in names if name in order] != order:
        broken("uvicorn", f"HttpToolsProtocol's callbacks came in the order {names}", HTTPGUARD)
    # (response_complete, more_body): a body still to come after the head, none after the end.
    if protocol.probe_cycles.get("on_headers_complete") != (False, True):
        broken("uvicorn", "after a PUT's head, cycle.(response_complete, more_body) is "
               f"{protocol.probe_cycles.get('on_headers_complete')}, not (False, True)",
               f"{HTTPGUARD} (it keeps the body's deadline while more_body)")
    if protocol.probe_cycles.get("on_message_complete", (None, True))[1] is not False:
        broken("uvicorn", "after a PUT's body, cycle.more_body is "
               f"{protocol.probe_cycles.get('on_message_complete')}, not False", HTTPGUARD)
    if not response.startswith(b"HTTP/1.1 200") or not response.endswith(b"\r\n\r\n10"):
        broken("uvicorn", f"a PUT through HttpToolsProtocol was answered {response!r}",
               HTTPGUARD)


def _names_assigned_by(cls: type) -> set[str]:
    """The methods a class defines and the `self.<name>` attributes its methods assign."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    names = {node.name for node in tree.body[0].body  # type: ignore[attr-defined]
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if (isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name)
                        and sub.value.id == "self"):
                    names.add(sub.attr)
    return {name for name in names if not (name.startswith("__") and name.endswith("__"))}


def test_uvicorn_protocol_has_none_of_the_names_httpguard_adds() -> None:
    """httpguard keeps its own state on the protocol (`self._deadline`, `self._arm()`, ...): a
    uvicorn attribute or method of the same name would be silently overwritten."""
    from filestore.httpguard import GuardedHttpToolsProtocol

    cls = _httptools_protocol()
    added = _names_assigned_by(GuardedHttpToolsProtocol) - set(OVERRIDES)
    protocol, _, _ = asyncio.run(_one_put(_probe_class()))  # uvicorn's own, after a request
    theirs = set(dir(cls)) | set(vars(protocol))
    theirs -= {"probe_calls", "probe_cycles", "probe_feeding"}
    clash = sorted(added & theirs)
    if clash:
        broken("uvicorn", f"HttpToolsProtocol now has {', '.join(clash)} of its own",
               f"{HTTPGUARD} (it defines those names on its subclass; if it now means to "
               "override one, add it to OVERRIDES in this test)")


# -- uvicorn: filestore/serving.py runs a server on sockets it bound itself ----------------------

SERVING = "filestore/serving.py"


def test_uvicorn_serves_on_sockets_given_to_it() -> None:
    """With `admin.listen`, serving.py binds two sockets and hands them to uvicorn: a Server's
    `run(sockets=...)`, or the `Multiprocess` supervisor with `sockets=` for several workers."""
    import inspect

    import uvicorn
    from uvicorn import config as uvicorn_config

    if not isinstance(getattr(uvicorn_config, "STARTUP_FAILURE", None), int):
        broken("uvicorn", "uvicorn.config has no STARTUP_FAILURE exit code",
               f"{SERVING} (it exits with it when the server never started)")
    if not callable(getattr(uvicorn.Config, "bind_socket", None)):
        broken("uvicorn", "uvicorn.Config has no bind_socket()", f"{SERVING} (it binds the main "
               "listener with it, as uvicorn.run does)")
    if "sockets" not in inspect.signature(uvicorn.Server.run).parameters:
        broken("uvicorn", "uvicorn.Server.run takes no sockets=", f"{SERVING} (one worker, two "
               "listeners)")
    try:
        from uvicorn.supervisors import Multiprocess
    except ImportError:
        broken("uvicorn", "uvicorn.supervisors has no Multiprocess", f"{SERVING} (several "
               "workers, two listeners)")
    parameters = inspect.signature(Multiprocess).parameters
    if not {"config", "sockets"} <= set(parameters):
        broken("uvicorn", f"Multiprocess({', '.join(parameters)}) takes no config and sockets",
               f"{SERVING} (several workers, two listeners)")


# -- aiobotocore: filestore/remote/s3.py reads the aiohttp response inside the body --------------

S3 = "filestore/remote/s3.py"


@asynccontextmanager
async def _s3_client(moto: Any) -> AsyncIterator[Any]:
    """A client configured the way s3.py configures its own (as far as bodies and signing go)."""
    import aioboto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"total_max_attempts": 1, "mode": "standard"})
    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test",
                              config=config) as client:
        yield client


def test_aiobotocore_body_wraps_an_aiohttp_response_with_readchunk(moto: Any, bucket: str) -> None:
    """s3.py's `_body_chunks` reads `body.__wrapped__.content.readchunk()` (aiohttp's buffers
    as they are, no joining copy); without it, it falls back to `iter_chunks` silently, and a
    cache fill costs a tenth more CPU. So this fails rather than falls back."""
    import aiohttp

    data = bytes(range(256)) * 1024  # 256 KiB

    async def download() -> tuple[bytes, list[Any]]:
        async with _s3_client(moto) as client:
            await client.put_object(Bucket=bucket, Key="body", Body=data)
            response = await client.get_object(Bucket=bucket, Key="body")
            body = response["Body"]
            try:
                kind = f"{type(body).__module__}.{type(body).__qualname__}"
                for name in ("iter_chunks", "close"):
                    if not callable(getattr(body, name, None)):
                        broken("aiobotocore", f"get_object's Body ({kind}) has no {name}()", S3)
                raw = getattr(body, "__wrapped__", None)
                if not isinstance(raw, aiohttp.ClientResponse):
                    broken("aiobotocore", f"get_object's Body ({kind}) no longer wraps an "
                           f"aiohttp.ClientResponse as __wrapped__ (found {type(raw)!r})",
                           f"{S3} (_body_chunks reads body.__wrapped__.content)")
                content = getattr(raw, "content", None)
                if not inspect.iscoroutinefunction(getattr(content, "readchunk", None)):
                    broken("aiohttp", f"ClientResponse.content ({type(content)!r}) has no "
                           "async readchunk()", f"{S3} (_body_chunks)")
                got, pieces = b"", []
                while True:
                    piece = await content.readchunk()
                    pieces.append(piece)
                    if (not isinstance(piece, tuple) or len(piece) != 2
                            or not isinstance(piece[0], bytes | bytearray | memoryview)):
                        broken("aiohttp", f"StreamReader.readchunk() returned {piece!r}, not "
                               "(bytes, end_of_http_chunk)", f"{S3} (_body_chunks)")
                    chunk, end_of_http_chunk = piece
                    if chunk:
                        got += chunk
                    elif not end_of_http_chunk:
                        break
                return got, pieces
            finally:
                body.close()

    got, pieces = asyncio.run(download())
    if got != data:
        broken("aiobotocore", f"reading body.__wrapped__.content.readchunk() to (b'', False) "
               f"gave {len(got)} of {len(data)} bytes ({len(pieces)} reads)", S3)


# -- prometheus-client: filestore/metrics.py -----------------------------------------------------

METRICS = "filestore/metrics.py"
BUCKETS = (0.001, 0.01, 0.1, 1.0)


@pytest.fixture
def multiprocess_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A PROMETHEUS_MULTIPROC_DIR for this test; prometheus_client.values.ValueClass as it was
    afterwards."""
    from prometheus_client import values

    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    monkeypatch.setattr(values, "ValueClass", getattr(values, "ValueClass", None),
                        raising=False)
    yield directory
    close = getattr(getattr(values, "ValueClass", None), "close_all_files", None)
    if callable(close):
        close()


def _rebind_value_class() -> type:
    """What metrics.py does: `values.ValueClass = values.get_value_class()`."""
    from prometheus_client import values

    for name in ("ValueClass", "get_value_class"):
        if not hasattr(values, name):
            broken("prometheus-client", f"prometheus_client.values.{name} is gone",
                   f"{METRICS} (_Instruments rebinds values.ValueClass = "
                   "values.get_value_class())")
    cls: type = values.get_value_class()  # type: ignore[no-untyped-call]
    values.ValueClass = cls
    return cls


def _samples(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in registry.collect() for sample in family.samples}


def test_prometheus_rebinding_value_class_switches_new_metrics_to_multiprocess(
        multiprocess_dir: Path) -> None:
    """An earlier import of prometheus_client chose single-process values; metrics.py chooses
    again once PROMETHEUS_MULTIPROC_DIR is set, and metrics created afterwards must use it."""
    from prometheus_client import CollectorRegistry, Counter, values

    if not hasattr(values, "MutexValue"):
        pytest.fail("prometheus_client.values.MutexValue is gone: update this test",
                    pytrace=False)
    values.ValueClass = values.MutexValue  # as if imported before the directory was set
    Counter("probe_before", "d", registry=CollectorRegistry()).inc()
    if list(multiprocess_dir.iterdir()):
        pytest.fail("single-process values wrote to the multiprocess directory: update this "
                    "test", pytrace=False)
    cls = _rebind_value_class()
    if cls is values.MutexValue:
        broken("prometheus-client", "values.get_value_class() with PROMETHEUS_MULTIPROC_DIR set "
               "still returns the single-process MutexValue", METRICS)
    Counter("probe_after", "d", ("route",), registry=CollectorRegistry()).labels("r").inc(2)
    samples = _samples(multiprocess_dir)
    if samples.get(("probe_after_total", (("route", "r"),))) != 2:
        broken("prometheus-client", "a Counter created after rebinding values.ValueClass to "
               "get_value_class() is not in the multiprocess files (metrics no longer look the "
               f"class up when created; collected: {samples})",
               f"{METRICS} (_Instruments, after an earlier import of prometheus_client)")


def test_prometheus_histogram_child_buckets_and_sum_take_counts(multiprocess_dir: Path) -> None:
    """metrics.py's flush adds a second's requests to a histogram child directly:
    `child._buckets[bisect_left(BUCKETS, seconds)].inc(count)` (per bucket, not cumulative,
    +Inf last) and `child._sum.inc(seconds)`. That must come out as `observe()` would."""
    from prometheus_client import CollectorRegistry, Histogram

    _rebind_value_class()
    histogram = Histogram("probe_seconds", "d", ("route",), buckets=BUCKETS,
                          registry=CollectorRegistry())
    observed, added = histogram.labels("observed"), histogram.labels("added")
    for name in ("_buckets", "_sum"):
        if not hasattr(added, name):
            broken("prometheus-client", f"a Histogram child has no {name}",
                   f"{METRICS} (RequestMetrics.flush writes child.{name})")
    buckets = added._buckets
    if len(buckets) != len(BUCKETS) + 1 or not all(callable(getattr(b, "inc", None))
                                                   for b in buckets):
        broken("prometheus-client", f"a Histogram child's _buckets is {buckets!r}, not one value "
               f"with inc() per bucket and +Inf ({len(BUCKETS) + 1})",
               f"{METRICS} (RequestMetrics.flush)")
    if not callable(getattr(added._sum, "inc", None)):
        broken("prometheus-client", f"a Histogram child's _sum ({added._sum!r}) has no inc()",
               f"{METRICS} (RequestMetrics.flush)")
    times = [0.0001, 0.001, 0.0011, 0.05, 0.1, 0.5, 1.0, 7.0, 7.0]
    counts = [0] * (len(BUCKETS) + 1)
    for seconds in times:
        observed.observe(seconds)
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
    for index, count in enumerate(counts):
        if count:
            added._buckets[index].inc(count)
    added._sum.inc(sum(times))
    samples = _samples(multiprocess_dir)

    def series(route: str) -> dict[Any, float]:
        return {(name, tuple(label for label in labels if label[0] != "route")): value
                for (name, labels), value in samples.items()
                if ("route", route) in labels and name.startswith("probe_seconds")}

    if not series("observed"):
        broken("prometheus-client", "a Histogram created after rebinding values.ValueClass wrote "
               f"nothing to the multiprocess directory (collected: {samples})",
               f"{METRICS} (_Instruments)")
    added_series, observed_series = series("added"), series("observed")
    differ = {key: (added_series.get(key), observed_series.get(key))
              for key in added_series.keys() | observed_series.keys()
              if added_series.get(key) != observed_series.get(key)}
    if differ:
        broken("prometheus-client", "incrementing a Histogram child's _buckets[i] and _sum does "
               f"not give what observe() gives ((by _buckets, by observe): {differ})",
               f"{METRICS} (RequestMetrics.flush)")


# -- starlette: filestore/app.py's FastReads builds a Request without the router -----------------


def test_starlette_request_takes_app_and_path_params_from_the_scope() -> None:
    """FastReads skips Starlette's router for GET /files/...: it sets `scope["app"]` and
    `scope["path_params"]` itself, and the handler reads `request.app.state` and
    `request.path_params` (Starlette is not bounded for this: it is how Request has always
    read them; this says when it no longer is)."""
    from starlette.applications import Starlette
    from starlette.requests import Request

    app = Starlette()
    scope = {"type": "http", "method": "GET", "path": "/files/a/b.txt", "raw_path": b"",
             "query_string": b"", "headers": [], "app": app,
             "path_params": {"path": "a/b.txt"}}
    request = Request(scope)
    try:
        found = (request.app, request.path_params)
    except (KeyError, AttributeError) as exc:
        broken("starlette", f"Request(scope).app / .path_params raise {exc!r} for a scope with "
               "'app' and 'path_params'", "filestore/app.py (FastReads._serve_file)")
    if found[0] is not app or found[1] != {"path": "a/b.txt"}:
        broken("starlette", f"Request(scope) gives app {found[0]!r}, path_params {found[1]!r} "
               "instead of the scope's 'app' and 'path_params'",
               "filestore/app.py (FastReads._serve_file)")
    if request.app.state is not app.state:
        broken("starlette", "request.app.state is not the app's state",
               "filestore/app.py and filestore/api.py")
