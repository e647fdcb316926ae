"""Moving a response body from dockerd to the client: as it arrives, or whole first.

Each relay follows the body's framing (length, chunked, until close) so it knows where the
answer ends and whether dockerd sent anything after it (then its connection is not reused).
The relays send the response head with the first body bytes when they are already here (one
write, one syscall), else on its own before waiting for dockerd.
"""

from __future__ import annotations

from gateway.client_end import ClientEnd
from gateway.framing import CHUNKED, LENGTH, MAX_CHUNK_LINE, NO_BODY, BadChunking, ChunkScanner
from gateway.upstream import Upstream, UpstreamGone


async def read_whole(
    up: Upstream, framing: int, length: int, rest: bytes, limit: int
) -> tuple[bytes, bytes, bool] | None:
    """(the body as framed on the wire, the body decoded, clean); None once it exceeds limit.

    ``clean`` is False when dockerd sent bytes after the body: its connection is not reused.
    """
    if framing == NO_BODY:
        return b"", b"", not rest
    if framing == LENGTH:
        if length > limit:
            return None
        whole, clean = await _read_exact(up, rest, length)
        return whole, whole, clean
    raw, body = bytearray(), bytearray()
    scanner = ChunkScanner() if framing == CHUNKED else None
    data = rest
    while True:
        if scanner is not None and data:
            pieces: list[memoryview] = []
            try:
                used = scanner.feed(data, pieces)
            except BadChunking as exc:
                raise UpstreamGone(f"bad chunked framing: {exc}") from exc
            raw += data[:used]
            for piece in pieces:
                body += piece
        elif data:
            raw += data
            body += data
        # Chunk framing may cost a few bytes per payload byte; bound both.
        if len(body) > limit or len(raw) > 2 * limit + MAX_CHUNK_LINE:
            return None
        if scanner is not None and scanner.done:
            return bytes(raw), bytes(body), used == len(data)
        data = await up.read()
        if not data:
            if scanner is not None:
                raise UpstreamGone("closed mid-response")
            return bytes(raw), bytes(body), True


async def _read_exact(up: Upstream, rest: bytes, length: int) -> tuple[bytes, bool]:
    parts = [rest[:length]]
    size = len(parts[0])
    clean = len(rest) <= length
    while size < length:
        data = await up.read()
        if not data:
            raise UpstreamGone("closed mid-response")
        if size + len(data) > length:
            data = data[: length - size]
            clean = False
        parts.append(data)
        size += len(data)
    return b"".join(parts), clean


async def relay_length(
    client: ClientEnd, up: Upstream, data: bytes, left: int, head: bytes
) -> bool:
    """Relay a Content-Length body; True when dockerd sent nothing after it."""
    send = client.send
    while True:
        if data:
            clean = len(data) <= left
            if not clean:
                data = data[:left]
            left -= len(data)
            send(head + data if head else data)
            head = b""
            if left == 0:
                return clean
            await client.drain()
        elif left == 0:
            send(head)
            return True
        if head:
            send(head)
            head = b""
        data = await up.read()
        if not data:
            raise UpstreamGone("closed mid-response")


async def relay_chunked(
    client: ClientEnd, up: Upstream, data: bytes, dechunk: bool, head: bytes
) -> bool:
    """Relay a chunked body as it came (or decoded, for an HTTP/1.0 client); True when clean."""
    send = client.send
    scanner = ChunkScanner()
    while True:
        if data:
            payload: list[memoryview] | None = [] if dechunk else None
            try:
                used = scanner.feed(data, payload)
            except BadChunking as exc:
                raise UpstreamGone(f"bad chunked framing: {exc}") from exc
            if payload is not None:
                send(b"".join((head, *payload)))
            else:
                send(head + (data if used == len(data) else data[:used]))
            head = b""
            if scanner.done:
                return used == len(data)
            await client.drain()
        elif head:
            send(head)
            head = b""
        data = await up.read()
        if not data:
            raise UpstreamGone("closed mid-response")


async def relay_until_close(client: ClientEnd, up: Upstream, data: bytes, head: bytes) -> bool:
    """Relay a body that ends when dockerd closes the connection."""
    send = client.send
    send(head + data)
    while data:
        await client.drain()
        data = await up.read()
        send(data)
    return True
