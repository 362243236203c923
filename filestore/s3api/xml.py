"""The S3 API's XML, written and read.

Answers are small documents of known shape, written as text with every value escaped (no tree
is built for a listing of a thousand keys). Request bodies (DeleteObjects, CompleteMultipartUpload)
are parsed with the standard library's expat, after a size limit and with DTDs refused, so an
entity cannot expand (no "billion laughs"), nothing external is fetched.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from xml.sax.saxutils import escape

MAX_BODY = 1024 * 1024  # DeleteObjects takes at most 1000 keys of at most 1 KiB
_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def element(tag: str, value: str | int | bool | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{tag}>{escape(str(value))}</{tag}>"


def group(tag: str, children: Iterable[str]) -> str:
    return f"<{tag}>{''.join(children)}</{tag}>"


def document(root: str, namespace: str | None, children: Iterable[str]) -> bytes:
    ns = f' xmlns="{namespace}"' if namespace else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}{ns}>{"".join(children)}'
            f"</{root}>").encode()


def s3_document(root: str, children: Iterable[str]) -> bytes:
    return document(root, _NS, children)


def timestamp(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds, as S3 lists times: 2026-12-04T10:00:00.000Z."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + \
        f".{int((seconds - whole) * 1000):03d}Z"


class BadXML(ValueError):
    """A request body that is not the XML expected (the caller answers MalformedXML)."""


def parse(body: bytes) -> ET.Element:
    """A request's XML document, namespaces stripped from the tags."""
    if len(body) > MAX_BODY:
        raise BadXML(f"the XML body is larger than {MAX_BODY} bytes")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise BadXML("DTDs and entities are not accepted")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise BadXML(f"not XML: {exc}") from None
    for node in root.iter():
        if isinstance(node.tag, str) and node.tag.startswith("{"):
            node.tag = node.tag.split("}", 1)[1]
    return root
