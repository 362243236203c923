"""Node-to-node calls, signed with the cluster's shared secret.

A call carries the calling node's name, the time and an HMAC-SHA256 over the method, the path
(decoded, as the server's router sees it), the query, the calling and the called node's names,
the time, and the headers that say which bytes it asks for or sends (`SIGNED_HEADERS`). The
receiving node recomputes it and compares in constant time, and refuses a call older or newer than
`MAX_SKEW` seconds (a captured call cannot be replayed later). The secret never travels, and
never reaches a log line or an error (`ClusterSettings.secret` is kept out of repr). With no
secret configured no call is made and none accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from ..errors import Forbidden, Unauthorized

NODE_HEADER = "x-filestore-node"
TIME_HEADER = "x-filestore-time"
SIGNATURE_HEADER = "x-filestore-signature"
# The headers a call's signature also covers, when the call has them: which bytes it asks for,
# which bytes it sends.
SIGNED_HEADERS = ("range", "x-checksum-sha256")
# Seconds a call's time may differ from the receiver's clock (nodes keep time with NTP).
MAX_SKEW = 60


def _digest(secret: str, method: str, path: str, query: str, node: str, target: str,
            when: str, headers: Mapping[str, str]) -> str:
    signed = [f"{name}:{headers.get(name, '')}" for name in SIGNED_HEADERS]
    message = "\n".join((method, path, query, node, target, when, *signed)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(headers: dict[str, str], secret: str, method: str, path: str, query: str, node: str,
         target: str, now: float | None = None) -> dict[str, str]:
    """Add to `headers` (those the call sends) what authenticates a call from `node` to the
    node named `target` (`path`: decoded, `query`: as sent); `headers` itself."""
    when = str(int(time.time() if now is None else now))
    headers.update({NODE_HEADER: node, TIME_HEADER: when,
                    SIGNATURE_HEADER: _digest(secret, method, path, query, node, target, when,
                                              headers)})
    return headers


def verify(secret: str, method: str, path: str, query: str, headers: Mapping[str, str],
           me: str, now: float | None = None) -> str:
    """The calling node's name, if the call is signed with `secret`, for this node (`me`),
    and recent; else `Unauthorized` (nothing that says who calls) or `Forbidden` (a wrong or
    stale one). A captured call can be sent again only to this node, within `MAX_SKEW`, for
    the same bytes."""
    node, when, signature = (headers.get(NODE_HEADER), headers.get(TIME_HEADER),
                             headers.get(SIGNATURE_HEADER))
    if not node or not when or not signature:
        raise Unauthorized("a node-to-node call needs the X-Filestore-Node, -Time and "
                           "-Signature headers")
    if not secret:
        raise Forbidden("this node has no cluster.secret: it accepts no node-to-node call")
    if not when.isdigit() or len(when) > 12 or abs(
            (time.time() if now is None else now) - int(when)) > MAX_SKEW:
        raise Forbidden("the call's time is missing or too far from this node's clock")
    expected = _digest(secret, method, path, query, node, me, when, headers)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise Forbidden("the call's signature does not match (another cluster.secret, or "
                        "meant for another node?)")
    return node
