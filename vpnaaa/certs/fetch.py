"""The Twisted edge of revocation: HTTP for OCSP and for CRL distribution points.

:class:`HttpFetcher` does one bounded request with twisted.web.client.Agent: ``http://``
URLs only, the whole exchange (connect, request, body) within ``timeout`` seconds, a body
of at most ``max_bytes`` (a longer one is cut off and fails), status 200 only.

:class:`OcspClient` asks one configured responder (RFC 6960 Appendix A.1: HTTP POST of the
DER request, ``application/ocsp-request``) and checks the answer with
:func:`vpnaaa.certs.ocsp.ocsp_answer`, with a fresh 32-octet nonce each time.

:class:`CrlDistributionPoints` fetches the CRLs a certificate's cRLDistributionPoints name
(RFC 5280 §4.2.1.13; the ``http://`` fullName URIs; LDAP and others are skipped) for that
certificate's issuer, and keeps those the issuer signed (:func:`vpnaaa.certs.crl.issued_by`:
its name, its key, cRLSign) until their nextUpdate, at most :data:`MAX_CRL_LIFETIME` (also
when they have none; a stale one :data:`MIN_CRL_LIFETIME`): nothing a distribution point
says that the issuer did not sign decides how long it is believed. An answer with no CRL
of the issuer, or more than :data:`MAX_CRLS_PER_ANSWER` distinct CRLs, or one
cryptography cannot read, is a failed fetch. Look-ups are keyed on (URL, issuer);
concurrent ones share one request. A look-up whose fetch failed is not asked again for
:data:`FAILED_CRL_RETRY` seconds: look-ups meanwhile fail at once with the same reason (the
caller's soft or hard fail decides), so a dead distribution point costs one request a
minute, not one per login. At most :data:`MAX_URLS` look-ups are remembered, fetched and
failed ones each (beyond, the expired go first, then the oldest).
What a CRL of the issuer says about a certificate is the caller's question
(:func:`vpnaaa.certs.crl.signed_answer`), as for CRL files.

Every method returns a Deferred; nothing blocks.
"""

from __future__ import annotations

import datetime
import os
import urllib.parse
from typing import Any

from cryptography import x509
from twisted.internet import defer, protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from vpnaaa.certs.crl import CrlError, issued_by, parse_crls
from vpnaaa.certs.ocsp import OcspAnswer, OcspError, ocsp_answer, ocsp_request

MAX_CRL_LIFETIME = 3600.0  # seconds a fetched CRL is kept at most (also without nextUpdate)
MIN_CRL_LIFETIME = 60.0  # a stale CRL (nextUpdate passed) is fetched again at most this often
MAX_CRLS_PER_ANSWER = 4  # distinct CRLs one distribution point answer may hold
FAILED_CRL_RETRY = 60.0  # seconds a CRL distribution point that failed is not asked again
MAX_URLS = 1024  # (URL, issuer) look-ups remembered, fetched and failed ones each


class FetchError(Exception):
    """An HTTP look-up that failed (refused, timed out, too large, not 200, not a CRL of
    the issuer)."""


class _Bounded(protocol.Protocol):
    """Collects a response body up to ``limit`` octets."""

    def __init__(self, limit: int, url: str) -> None:
        self.limit = limit
        self.url = url
        self.parts: list[bytes] = []
        self.size = 0
        self.done: defer.Deferred[bytes] = defer.Deferred(self._cancel)

    def _cancel(self, _: object) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done.errback(FetchError(f"{self.url}: the answer exceeds {self.limit} octets"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(FetchError(f"{self.url}: the answer broke off"))


class _Discard(protocol.Protocol):
    """Reads and drops the body of an answer we refuse."""

    def dataReceived(self, data: bytes) -> None:
        pass


class HttpFetcher:
    """Bounded HTTP requests (module docstring)."""

    def __init__(self, reactor: Any, timeout: float = 5.0, max_bytes: int = 1 << 20) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._agent = Agent(reactor, connectTimeout=timeout)

    def get(self, url: str) -> defer.Deferred[bytes]:
        return self._request(b"GET", url, None, None)

    def post(self, url: str, body: bytes, content_type: str) -> defer.Deferred[bytes]:
        return self._request(b"POST", url, body, content_type)

    def _request(
        self, method: bytes, url: str, body: bytes | None, content_type: str | None
    ) -> defer.Deferred[bytes]:
        if urllib.parse.urlsplit(url).scheme != "http":
            return defer.fail(FetchError(f"{url}: only http:// URLs are fetched"))
        headers = Headers({b"user-agent": [b"vpnaaa"]})
        if content_type is not None:
            headers.addRawHeader(b"content-type", content_type.encode())
        producer = _BytesProducer(body) if body is not None else None
        d = self._agent.request(method, url.encode(), headers, producer)
        d.addCallback(self._body, url)
        d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=self._timed_out(url))
        d.addErrback(self._failed, url)
        return d

    def _body(self, response: IResponse, url: str) -> defer.Deferred[bytes]:
        if response.code != 200:
            response.deliverBody(_Discard())
            raise FetchError(
                f"{url}: HTTP {response.code} {response.phrase.decode(errors='replace')}"
            )
        length = response.length
        if isinstance(length, int) and length > self.max_bytes:
            response.deliverBody(_Discard())
            raise FetchError(f"{url}: the answer exceeds {self.max_bytes} octets")
        reader = _Bounded(self.max_bytes, url)
        response.deliverBody(reader)
        return reader.done

    def _timed_out(self, url: str) -> Any:
        def replace(_result: object, _timeout: float) -> Failure:
            return Failure(FetchError(f"{url}: no answer within {self.timeout:g} s"))

        return replace

    def _failed(self, failure: Failure, url: str) -> Failure:
        if failure.check(FetchError):
            return failure
        # Agent wraps what broke the exchange (ResponseNeverReceived and the like)
        causes = getattr(failure.value, "reasons", None) or [failure]
        why = "; ".join(c.getErrorMessage() or c.type.__name__ for c in causes)
        raise FetchError(f"{url}: {why}")


@implementer(IBodyProducer)
class _BytesProducer:
    """A request body already in memory (an OCSP request: a few hundred octets)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        consumer.write(self.body)
        return defer.succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class OcspClient:
    """One OCSP responder, asked over HTTP POST (module docstring)."""

    def __init__(self, url: str, fetcher: HttpFetcher) -> None:
        self.url = url
        self.fetcher = fetcher

    def check(self, cert: x509.Certificate, issuer: x509.Certificate) -> defer.Deferred[OcspAnswer]:
        """The responder's checked answer for ``cert``; fails with FetchError or OcspError."""
        nonce = os.urandom(32)
        request = ocsp_request(cert, issuer, nonce)
        d = self.fetcher.post(self.url, request, "application/ocsp-request")

        def answer(data: bytes) -> OcspAnswer:
            now = datetime.datetime.fromtimestamp(self.fetcher.reactor.seconds(), datetime.UTC)
            try:
                return ocsp_answer(data, cert, issuer, nonce, now)
            except OcspError as e:
                raise OcspError(f"{self.url}: {e}") from None

        d.addCallback(answer)
        return d


_Crls = tuple[x509.CertificateRevocationList, ...]
_Key = tuple[str, x509.Certificate]  # (URL, the issuer asked for)


class CrlDistributionPoints:
    """CRLs from cRLDistributionPoints over HTTP, cached (module docstring)."""

    def __init__(self, fetcher: HttpFetcher) -> None:
        self.fetcher = fetcher
        self._cache: dict[_Key, tuple[_Crls, float]] = {}  # -> (the issuer's CRLs, until)
        self._pending: dict[_Key, list[defer.Deferred[_Crls]]] = {}
        self._failed: dict[_Key, tuple[FetchError, float]] = {}  # -> (why, retry at)

    @staticmethod
    def urls(cert: x509.Certificate) -> tuple[str, ...]:
        """The certificate's http:// CRL distribution point URLs."""
        try:
            points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            return ()
        found = []
        for point in points:
            for name in point.full_name or ():
                if isinstance(
                    name, x509.UniformResourceIdentifier
                ) and name.value.lower().startswith("http://"):
                    found.append(name.value)
        return tuple(found)

    def crls(self, url: str, issuer: x509.Certificate) -> defer.Deferred[_Crls]:
        """The CRLs at ``url`` that ``issuer`` signed (at least one): cached, else
        fetched; a failure of the last :data:`FAILED_CRL_RETRY` seconds again, without a
        request."""
        key = (url, issuer)
        now = self.fetcher.reactor.seconds()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return defer.succeed(cached[0])
        failed = self._failed.get(key)
        if failed is not None and failed[1] > now:
            retry = failed[1] - now
            return defer.fail(FetchError(f"{failed[0]} (asked again in {retry:.0f} s)"))
        waiter: defer.Deferred[_Crls] = defer.Deferred()
        waiting = self._pending.get(key)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._pending[key] = [waiter]
        d = self.fetcher.get(url)
        d.addCallback(self._parsed, key)
        d.addBoth(self._deliver, key)
        return waiter

    def _parsed(self, data: bytes, key: _Key) -> _Crls:
        """The issuer's CRLs in ``data``, cached until the earliest nextUpdate among them,
        at most :data:`MAX_CRL_LIFETIME`; FetchError when there is none."""
        url, issuer = key
        try:
            crls = parse_crls(data, MAX_CRLS_PER_ANSWER)
        except CrlError as e:
            raise FetchError(f"{url}: not a CRL ({e})") from None
        own = tuple(crl for crl in crls if issued_by(crl, issuer))
        if not own:
            raise FetchError(
                f"{url}: no CRL signed by {issuer.subject.rfc4514_string()} "
                f"({len(crls)} CRL(s) of others)"
            )
        now = self.fetcher.reactor.seconds()
        updates = [c.next_update_utc.timestamp() for c in own if c.next_update_utc is not None]
        expires = min([*updates, now + MAX_CRL_LIFETIME])
        expires = max(expires, now + MIN_CRL_LIFETIME)
        _keep(self._cache, key, (own, expires), now)
        return own

    def _deliver(self, result: _Crls | Failure, key: _Key) -> None:
        if isinstance(result, Failure) and result.check(FetchError):
            self._remember_failure(key, result.value)
        else:
            self._failed.pop(key, None)
        for waiter in self._pending.pop(key, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _remember_failure(self, key: _Key, error: FetchError) -> None:
        """Keep ``error`` for ``key`` for :data:`FAILED_CRL_RETRY` seconds."""
        now = self.fetcher.reactor.seconds()
        _keep(self._failed, key, (error, now + FAILED_CRL_RETRY), now)


def _keep(
    table: dict[_Key, tuple[Any, float]], key: _Key, entry: tuple[Any, float], now: float
) -> None:
    """``table[key] = entry`` (what, until when), newest last; with :data:`MAX_URLS`
    entries already, those expired by ``now`` go first, then the oldest."""
    table.pop(key, None)
    if len(table) >= MAX_URLS:
        for old in [k for k, (_, until) in table.items() if until <= now]:
            del table[old]
    while len(table) >= MAX_URLS:
        del table[next(iter(table))]
    table[key] = entry
