"""HTTPS to the utility's 2030.5 server: httpx stops here.

``Sep2Transport`` is an async context manager around one ``httpx.AsyncClient``
(connection reuse, the ``tls.client_context``). Every request names its
function set (a bounded metric label) and returns models from ``sep2``:

* ``get`` / ``get_list`` read a resource; ``get_list`` follows the standard's
  paging (``s`` start, ``l`` limit) until it has the list's ``all`` items, a
  page comes back empty, or ``max_items`` is reached.
* ``post`` returns the ``Location`` of what the server created; ``put`` and
  ``delete`` return nothing.
* Hrefs from the server are resolved against the server's base URL and must stay
  on that server (scheme, host and port): a document cannot send the client
  elsewhere.
* Bodies are read up to ``sep2.MAX_DOCUMENT_BYTES``; a longer one is refused.

Failures: ``TransportError`` (refused, reset, timeout, TLS), ``ServerStatusError``
(an HTTP status other than 2xx, with ``status``), ``Sep2Error`` (a body we refuse).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Callable, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic_xml import BaseXmlModel

from northbound import sep2
from northbound.errors import Sep2Error, ServerStatusError, TransportError

__all__ = ["Sep2Transport", "RequestObserver"]

log = logging.getLogger(__name__)

Model = TypeVar("Model", bound=BaseXmlModel)
RequestObserver = Callable[[str, str], None]
"""Called once per request with (function set, outcome): an HTTP status code as text, or ``error``."""

_HEADERS = {"Accept": sep2.MEDIA_TYPE}


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    location: str | None
    body: bytes


class Sep2Transport:
    """One HTTPS client for one 2030.5 server at ``base_url`` (``https://host[:port]``)."""

    def __init__(self, base_url: str, context: ssl.SSLContext, *, timeout: float = 10.0,
                 observe: RequestObserver | None = None, page_size: int = 50, max_items: int = 1000) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"base_url must be https://host[:port] (got {base_url!r})")
        self.base_url = f"{parts.scheme}://{parts.netloc}"
        self._origin = (parts.scheme, parts.hostname, parts.port or 443)
        self._context = context
        self._timeout = timeout
        self._observe = observe or (lambda function_set, outcome: None)
        self.page_size = page_size
        self.max_items = max_items
        self._client: httpx.AsyncClient | None = None
        self.last_cipher: str | None = None

    async def __aenter__(self) -> Sep2Transport:
        self._client = httpx.AsyncClient(verify=self._context, timeout=self._timeout, headers=_HEADERS,
                                         follow_redirects=False, trust_env=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def url(self, href: str) -> str:
        """``href`` resolved against the server; raises Sep2Error when it points to another origin."""
        if not isinstance(href, str) or not href or len(href) > 4096:
            raise Sep2Error("bad_link", f"href {str(href)[:80]!r} is empty or too long")
        absolute = urljoin(self.base_url + "/", href)
        parts = urlsplit(absolute)
        if (parts.scheme, parts.hostname, parts.port or 443) != self._origin:
            raise Sep2Error("bad_link", f"href {href[:200]!r} leaves the server {self.base_url}")
        return absolute

    async def _request(self, function_set: str, method: str, href: str, body: bytes | None = None,
                       params: dict[str, int] | None = None) -> _Reply:
        if self._client is None:
            raise RuntimeError("Sep2Transport used outside 'async with'")
        url = self.url(href)
        headers = {"Content-Type": sep2.MEDIA_TYPE} if body is not None else None
        try:
            async with self._client.stream(method, url, content=body, params=params, headers=headers) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > sep2.MAX_DOCUMENT_BYTES:
                        self._observe(function_set, "error")
                        raise Sep2Error("oversized", f"{method} {url}: body exceeds {sep2.MAX_DOCUMENT_BYTES} bytes")
                    chunks.append(chunk)
                self._note_cipher(response)
                status, location = response.status_code, response.headers.get("Location")
        except httpx.TimeoutException as exc:
            self._observe(function_set, "error")
            raise TransportError(url, f"timed out after {self._timeout:g} s ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            self._observe(function_set, "error")
            raise TransportError(url, f"{type(exc).__name__}: {exc}") from exc
        self._observe(function_set, str(status))
        if not 200 <= status < 300:
            raise ServerStatusError(url, status)
        return _Reply(status, location, b"".join(chunks))

    def _note_cipher(self, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        if ssl_object is not None:
            self.last_cipher = ssl_object.cipher()[0]

    async def get(self, function_set: str, href: str, model: type[Model]) -> Model:
        """GET ``href`` as ``model``."""
        response = await self._request(function_set, "GET", href)
        return sep2.parse(model, response.body)

    async def get_list(self, function_set: str, href: str, model: type[BaseXmlModel],
                       item: type[Model]) -> sep2.ListPage[Model]:
        """Every item of the list at ``href`` (paged with ``s``/``l``), as one ListPage."""
        items: list[Model] = []
        rejected: list[sep2.RejectedItem] = []
        start, total, poll_rate = 0, None, None
        while True:
            response = await self._request(function_set, "GET", href, params={"s": start, "l": self.page_size})
            page = sep2.parse_list(model, item, response.body)
            total = page.all if total is None else total
            poll_rate = page.poll_rate if poll_rate is None else poll_rate
            items.extend(page.items)
            rejected.extend(page.rejected)
            got = len(page.items) + len(page.rejected)
            start += got
            if got == 0 or start >= min(total, self.max_items):
                break
        if total > self.max_items:
            log.warning("%s %s lists %d items; reading the first %d", function_set, href, total, self.max_items)
        return sep2.ListPage(all=total, results=len(items) + len(rejected), items=items, rejected=rejected,
                             poll_rate=poll_rate)

    async def post(self, function_set: str, href: str, resource: BaseXmlModel) -> str | None:
        """POST ``resource`` to ``href``; the Location header of the created resource, if any."""
        response = await self._request(function_set, "POST", href, sep2.render(resource))
        return response.location

    async def put(self, function_set: str, href: str, resource: BaseXmlModel) -> None:
        """PUT ``resource`` at ``href``."""
        await self._request(function_set, "PUT", href, sep2.render(resource))
