"""Node-to-node calls, signed with the cluster's shared secret.

A call carries the calling node's name, the time and an HMAC-SHA256 over the method, the path
(decoded, as the server's router sees it), the query, the node and the time. The receiving node
recomputes it and compares in constant time, and refuses a call older or newer than
`MAX_SKEW` seconds (a captured call cannot be replayed later). The secret never travels, and
never reaches a log line or an error (`ClusterSettings.secret` is kept out of repr). With no
secret configured no call is made and none accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from ..errors import Forbidden, Unauthorized

NODE_HEADER = "x-filestore-node"
TIME_HEADER = "x-filestore-time"
SIGNATURE_HEADER = "x-filestore-signature"
# Seconds a call's time may differ from the receiver's clock (nodes keep time with NTP).
MAX_SKEW = 300


def _digest(secret: str, method: str, path: str, query: str, node: str, when: str) -> str:
    message = "\n".join((method, path, query, node, when)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str, method: str, path: str, query: str, node: str,
                   now: float | None = None) -> dict[str, str]:
    """The headers that authenticate a call from `node` (`path`: decoded, `query`: as sent)."""
    when = str(int(time.time() if now is None else now))
    return {NODE_HEADER: node, TIME_HEADER: when,
            SIGNATURE_HEADER: _digest(secret, method, path, query, node, when)}


def verify(secret: str, method: str, path: str, query: str, headers: dict[str, str],
           now: float | None = None) -> str:
    """The calling node's name, if the call is signed with `secret` and recent; else
    `Unauthorized` (nothing that says who calls) or `Forbidden` (a wrong or stale one)."""
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
    expected = _digest(secret, method, path, query, node, when)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        raise Forbidden("the call's signature does not match (another cluster.secret?)")
    return node
