"""A half-open IKE_SA_INIT flood from one real address, as a non-spoofing attacker makes it
(RFC 7296 §2.6: cookies do not stop a sender that receives them).

Run inside a network namespace (``ip netns exec NS python -m tests.interop.ike_flood``):
sends ``--count`` IKE_SA_INIT requests to ``--gateway`` from UDP port 500, each with its
own initiator SPI and the same Curve25519 KE and nonce (the responder's DH work is the
same whatever we send), answers every COOKIE notify by repeating that request with the
cookie, at most ``--rate`` requests a second, then listens for ``--linger`` seconds.
Prints one JSON line: how many requests, cookie repeats and IKE_SA_INIT answers with KE
(new half-open SAs) there were. Plain sockets: the load must not wait on a reactor.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import time

from vpnaaa.ike import transforms
from vpnaaa.ike.const import (
    DhGroup,
    EncrId,
    ExchangeType,
    HeaderFlag,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from vpnaaa.ike.message import (
    Header,
    IkeError,
    Ke,
    Nonce,
    Notify,
    Proposal,
    Sa,
    Transform,
    decode_message,
    encode_message,
)


def request(spi: bytes, ke: bytes, nonce: bytes, cookie: bytes | None = None) -> bytes:
    proposal = Proposal(
        1,
        ProtocolId.IKE,
        b"",
        (
            Transform(TransformType.ENCR, EncrId.AES_GCM_16, 256),
            Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
            Transform(TransformType.DH, DhGroup.CURVE25519),
        ),
    )
    payloads = [
        (PayloadType.SA, Sa((proposal,))),
        (PayloadType.KE, Ke(DhGroup.CURVE25519, ke)),
        (PayloadType.NONCE, Nonce(nonce)),
    ]
    if cookie is not None:
        payloads.insert(0, (PayloadType.NOTIFY, Notify(NotifyType.COOKIE, cookie)))
    header = Header(spi, bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0)
    return encode_message(header, payloads)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, default=4000.0)
    parser.add_argument("--linger", type=float, default=2.0)
    args = parser.parse_args()
    _, ke = transforms.group_for(DhGroup.CURVE25519).generate()
    nonce = os.urandom(32)
    template = request(bytes(8), ke, nonce)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", 500))
    sock.setblocking(False)
    target = (args.gateway, 500)
    counts = {"sent": 0, "cookies": 0, "created": 0, "refused": 0, "send_errors": 0}

    def send(datagram: bytes) -> None:
        try:
            sock.sendto(datagram, target)
        except OSError:  # the socket buffer is full: that request is lost, like on a wire
            counts["send_errors"] += 1

    def drain(wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([sock], [], [], max(left, 0))
            if not ready:
                if left <= 0:
                    return
                continue
            data = sock.recv(65535)
            try:
                message = decode_message(data)
            except IkeError:
                continue
            cookie = message.notify(NotifyType.COOKIE)
            if cookie is not None:
                counts["cookies"] += 1
                send(request(message.header.spi_i, ke, nonce, cookie.data))
            elif message.get(PayloadType.KE) is not None:
                counts["created"] += 1
            else:
                counts["refused"] += 1

    start = time.monotonic()
    for n in range(args.count):
        send(struct.pack("!Q", n + 1) + template[8:])
        counts["sent"] += 1
        if n % 64 == 63:
            drain(0)
            ahead = counts["sent"] / args.rate - (time.monotonic() - start)
            if ahead > 0:
                drain(ahead)
    drain(args.linger)
    counts["seconds"] = round(time.monotonic() - start, 2)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
