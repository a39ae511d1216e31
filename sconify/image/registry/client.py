"""An OCI distribution API client over ``requests``: TLS, the auth flows, retries, redirects.

One ``RegistryClient`` per registry host and operation (pull, or push with the repositories it
mounts from). It pings ``/v2/`` first: the answer picks HTTPS or (loopback or
``--tls-verify=false`` only) plain HTTP, and carries the auth challenge. The Authorization
header goes to the registry host only, never to a host a blob redirect points at.
"""

from __future__ import annotations

import base64
import functools
import glob
import ipaddress
import os
import random
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable

import requests
import requests.adapters
import urllib3

from sconify.errors import ImageError
from sconify.image.registry.auth import Challenge, Credentials, find_credentials, parse_challenges
from sconify.image.registry.options import RegistryOptions

CONNECT_TIMEOUT = 30  # seconds
READ_TIMEOUT = 300
MAX_ATTEMPTS = 4  # per request: 429, 5xx and dropped connections are retried with backoff
MAX_REDIRECTS = 5
RETRY_STATUSES = (429, 500, 502, 503, 504)
MAX_RETRY_AFTER = 30.0
SEND_BLOCK = 1 << 20  # bytes per socket write of an upload
USER_AGENT = "sconify (OCI distribution client)"
CERT_DIRS = ("/etc/containers/certs.d", "/etc/docker/certs.d")


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].partition("]")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def short_reason(exc: BaseException) -> str:
    """A short, secret-free reason for a connection problem (no URL, no headers)."""
    text = " ".join(str(exc).split())
    for pattern in (r"\[Errno -?\d+\] ([^'\")]+)", r"(certificate verify failed[^'\")]*)",
                    r"(Connection aborted|Read timed out|Connection reset by peer|IncompleteRead[^'\")]*)",
                    r"(wrong version number|record layer failure|unexpected eof[^'\")]*)"):
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            return match.group(1).strip().rstrip(".")
    return type(exc).__name__


class _ContextAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose HTTPS connections use our SSLContext (system CAs + --cert-dir)."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self._context = context
        super().__init__(pool_connections=4, pool_maxsize=8)

    def init_poolmanager(self, *args, **kwargs):
        if self._context is not None:
            kwargs["ssl_context"] = self._context
        kwargs["blocksize"] = SEND_BLOCK
        return super().init_poolmanager(*args, **kwargs)


@functools.lru_cache(maxsize=16)
def ssl_context(registry: str, cert_dir: str | None) -> ssl.SSLContext:
    """The system CAs, plus ``*.crt`` CAs and ``*.cert``/``*.key`` client pairs from ``cert_dir``
    (default: /etc/containers/certs.d/HOST[:PORT], /etc/docker/certs.d/HOST[:PORT]). Made once per
    process and registry (loading the system CAs takes ~35 ms; a conversion opens 2-3 clients)."""
    context = ssl.create_default_context()
    if cert_dir is not None:
        if not os.path.isdir(cert_dir):
            raise ImageError(f"--cert-dir {cert_dir} is not a directory; pass the directory holding ca.crt")
        directories = [cert_dir]
    else:
        directories = [os.path.join(base, registry) for base in CERT_DIRS
                       if os.path.isdir(os.path.join(base, registry))]
    for directory in directories:
        for path in sorted(glob.glob(os.path.join(directory, "*.crt"))):
            try:
                context.load_verify_locations(cafile=path)
            except (ssl.SSLError, OSError) as exc:
                raise ImageError(f"CA certificate {path} cannot be loaded ({short_reason(exc)}); "
                                 "it must be PEM") from None
        for cert in sorted(glob.glob(os.path.join(directory, "*.cert"))):
            key = cert[: -len(".cert")] + ".key"
            if not os.path.exists(key):
                raise ImageError(f"client certificate {cert} has no {os.path.basename(key)} beside it; add the key")
            try:
                context.load_cert_chain(cert, key)
            except (ssl.SSLError, OSError) as exc:
                raise ImageError(f"client certificate {cert} cannot be loaded ({short_reason(exc)})") from None
    return context


class RegistryUnavailable(ImageError):
    """The registry dropped the connection or answered 429/5xx (after the request's retries):
    a whole upload may be tried again."""


class RegistryClient:
    """Requests to one registry host, authenticated for ``scopes`` (token auth) as needed."""

    def __init__(self, registry: str, repository: str, options: RegistryOptions, *,
                 writing: bool = False, mount_from: Iterable[str] = ()) -> None:
        self.registry = registry
        self.repository = repository
        self.options = options
        self.writing = writing
        actions = "pull,push" if writing else "pull"
        self.scopes = [f"repository:{repository}:{actions}"] + [
            f"repository:{name}:pull" for name in sorted(set(mount_from)) if name != repository]
        self.api_host = "registry-1.docker.io" if registry == "docker.io" else registry
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.auth = self._authorize  # also keeps requests from reading ~/.netrc
        self.verify: bool = options.tls_verify
        adapter = _ContextAdapter(ssl_context(registry, options.cert_dir) if options.tls_verify else None)
        self.session.mount("https://", adapter)
        self.session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=8))
        self.base = ""
        self._lock = threading.Lock()
        self._credentials: Credentials | None = None
        self._credentials_found = False
        self._challenge: Challenge | None = None
        self._authorization: str | None = None
        self._token_expiry = 0.0
        self._ping()

    # -- naming ---------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, {self.repository!r})"

    @property
    def label(self) -> str:
        return f"registry {self.registry}"

    def url(self, path: str) -> str:
        return self.base + path

    # -- connection ---------------------------------------------------------------------

    def _ping(self) -> None:
        plain_allowed = is_loopback(self.registry) or not self.options.tls_verify
        schemes = ("https", "http") if plain_allowed else ("https",)
        last: BaseException | None = None
        for scheme in schemes:
            self.base = f"{scheme}://{self.api_host}"
            try:
                response = self._send("GET", self.url("/v2/"))
            except requests.exceptions.SSLError as exc:
                if "certificate verify failed" in str(exc) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    raise ImageError(
                        f"{self.label}: its TLS certificate is not trusted ({short_reason(exc)}); pass "
                        "--cert-dir DIR holding its CA as ca.crt, or --tls-verify=false for a test registry"
                    ) from None
                last = exc
                continue
            except requests.exceptions.ConnectionError as exc:
                last = exc
                if scheme == "https" and plain_allowed:
                    continue
                break
            self._note_challenge(response)
            response.close()
            if response.status_code in (200, 401):
                return
            raise ImageError(f"{self.label} answered {response.status_code} at /v2/; it is no OCI "
                             "distribution registry there, check the address")
        raise ImageError(
            f"{self.label} is not reachable ({short_reason(last) if last else 'no answer'}); check that it "
            "runs and the address and port are right"
            + ("" if plain_allowed else " (plain HTTP is used only for localhost or with --tls-verify=false)")
        )

    def _send(self, method: str, url: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", (CONNECT_TIMEOUT, READ_TIMEOUT))
        kwargs.setdefault("allow_redirects", False)
        kwargs["verify"] = self.verify
        if not self.verify:
            with _quiet_insecure():
                return self.session.request(method, url, **kwargs)
        return self.session.request(method, url, **kwargs)

    def _authorize(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """requests' auth hook: our Authorization header, to the registry host only (a token
        realm gets the credentials as ``auth=`` instead, which replaces this hook)."""
        if self._authorization is None:
            return request
        target = urllib.parse.urlsplit(request.url)
        if f"{target.scheme}://{target.netloc}" == self.base:
            request.headers["Authorization"] = self._authorization
        return request

    # -- authentication -----------------------------------------------------------------

    def _note_challenge(self, response: requests.Response) -> None:
        if response.status_code != 401:
            return
        for challenge in parse_challenges(response.headers.get("WWW-Authenticate", "")):
            if challenge.scheme in ("bearer", "basic"):
                self._challenge = challenge
                return
        raise ImageError(f"{self.label} asks for an authentication scheme sconify does not know "
                         f"({response.headers.get('WWW-Authenticate', 'none')[:60]!r}); only Basic and Bearer are supported")

    def credentials(self) -> Credentials | None:
        if not self._credentials_found:
            self._credentials = find_credentials(self.registry, self.repository,
                                                 self.options.creds_for(self.writing), self.options.authfile)
            self._credentials_found = True
        return self._credentials

    def _authenticate(self, refresh: bool) -> None:
        """Set the Authorization header for the current challenge (a fresh token if ``refresh``)."""
        challenge = self._challenge
        if challenge is None:
            return
        credentials = self.credentials()
        if challenge.scheme == "basic":
            if credentials is None or not credentials.username:
                raise self._no_credentials()
            if refresh and self._authorization is not None:
                raise self._refused(credentials)
            pair = f"{credentials.username}:{credentials.password}".encode()
            self._authorization = "Basic " + base64.b64encode(pair).decode("ascii")
            return
        self._authorization = "Bearer " + self._fetch_token(challenge, credentials)

    def _fetch_token(self, challenge: Challenge, credentials: Credentials | None) -> str:
        realm = challenge.params.get("realm", "")
        parts = urllib.parse.urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ImageError(f"{self.label} names no valid token realm ({realm[:80]!r}); check the registry")
        if parts.scheme == "http" and not (is_loopback(parts.netloc) or not self.options.tls_verify):
            raise ImageError(f"{self.label} sends credentials to a plain-HTTP token realm {parts.netloc}; "
                             "refusing (use HTTPS for the token service, or --tls-verify=false for a test setup)")
        scopes = list(self.scopes)
        asked = challenge.params.get("scope")
        if asked:
            scopes += [scope for scope in asked.split(" ") if scope and scope not in scopes]
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        try:
            if credentials is not None and credentials.identity_token:
                form = params + [("grant_type", "refresh_token"), ("refresh_token", credentials.identity_token),
                                 ("client_id", "sconify"), ("scope", " ".join(scopes))]
                response = self._retrying("POST", realm, data=form)
            else:
                auth = (credentials.username, credentials.password) if credentials and credentials.username else None
                query = params + [("scope", scope) for scope in scopes]
                response = self._retrying("GET", realm, params=query, auth=auth)
        except requests.exceptions.RequestException as exc:
            raise ImageError(f"{self.label}: its token service {parts.netloc} is not reachable "
                             f"({short_reason(exc)}); check the registry's auth setup") from None
        with response:
            if response.status_code in (401, 403):
                if credentials is None:
                    raise self._no_credentials()
                raise self._refused(credentials)
            if response.status_code != 200:
                raise ImageError(f"{self.label}: its token service {parts.netloc} answered "
                                 f"{response.status_code}; try again later or check the registry")
            try:
                answer = response.json()
                token = answer.get("token") or answer.get("access_token")
            except ValueError:
                token = None
            if not isinstance(token, str) or not token:
                raise ImageError(f"{self.label}: its token service {parts.netloc} sent no token; check the registry")
            expires = answer.get("expires_in")
            self._token_expiry = time.monotonic() + (expires if isinstance(expires, int) and expires > 0 else 60) - 5
            return token

    def _no_credentials(self) -> ImageError:
        return ImageError(
            f"{self.label} requires a login for {self.repository} and no credentials were found "
            "(--creds, --authfile, REGISTRY_AUTH_FILE, ~/.docker/config.json); run `docker login "
            f"{self.registry}` or pass --creds USER:PASS"
        )

    def _refused(self, credentials: Credentials) -> ImageError:
        return ImageError(
            f"{self.label} refused the credentials from {credentials.source or 'the auth file'}; check the "
            f"user name and password (or log in again: docker login {self.registry})"
        )

    # -- requests -------------------------------------------------------------------------

    def _retrying(self, method: str, url: str, *, replayable: bool = True, **kwargs) -> requests.Response:
        """One request, retried with backoff on 429/5xx and dropped connections when its body
        can be sent again (bytes or none: ``replayable``)."""
        attempts = MAX_ATTEMPTS if replayable else 1
        for attempt in range(attempts):
            try:
                response = self._send(method, url, **kwargs)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                if isinstance(exc, requests.exceptions.SSLError) or attempt == attempts - 1:
                    raise
                backoff(attempt)
                continue
            if response.status_code in RETRY_STATUSES and attempt < attempts - 1:
                wait = retry_after(response)
                response.close()
                backoff(attempt, wait)
                continue
            return response
        raise AssertionError("unreachable")

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), what: str = "",
                follow: bool = False, replayable: bool = True, **kwargs) -> requests.Response:
        """``method`` on ``path`` (or an absolute URL of the registry), authenticated, retried;
        redirects followed when ``follow`` (without the Authorization header on another host).
        A status outside ``ok`` is an ImageError naming the registry and ``what``. A body that
        is a stream (not ``replayable``) is sent once: the caller retries the whole upload."""
        url = path if path.startswith(("http://", "https://")) else self.url(path)
        if self._challenge is not None and (self._authorization is None or
                                            (self._challenge.scheme == "bearer" and time.monotonic() > self._token_expiry)):
            with self._lock:
                self._authenticate(refresh=False)
        refreshed = False
        for _ in range(MAX_REDIRECTS + 2):
            try:
                response = self._retrying(method, url, replayable=replayable, **kwargs)
            except requests.exceptions.RequestException as exc:
                raise self.unreachable(exc, what) from None
            if (response.status_code == 401 and not refreshed and replayable
                    and urllib.parse.urlsplit(url).netloc == self.api_host):
                # no login yet, or an expired / too narrow token: (re)authenticate once
                self._note_challenge(response)
                response.close()
                with self._lock:
                    self._authenticate(refresh=True)
                refreshed = True
                continue
            if follow and response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers:
                url = urllib.parse.urljoin(url, response.headers["Location"])
                response.close()
                if response.status_code == 303:
                    method = "GET"
                continue
            if response.status_code not in ok:
                raise self.status_error(response, what)
            return response
        raise ImageError(f"{self.label}: too many redirects for {what or path}; check the registry")

    def unreachable(self, exc: BaseException, what: str) -> ImageError:
        return RegistryUnavailable(f"{self.label} dropped the connection{' while ' + what if what else ''} "
                          f"({short_reason(exc)}) after {MAX_ATTEMPTS} attempts; check that it runs, then try again")

    def status_error(self, response: requests.Response, what: str) -> ImageError:
        status = response.status_code
        code, message = _error_of(response)
        response.close()
        detail = f"{code}: {message}" if code else f"HTTP {status}"
        doing = f" {what}" if what else ""
        if status == 401:
            credentials = self.credentials()
            return self._refused(credentials) if credentials else self._no_credentials()
        if status == 403:
            action = "push to" if self.writing else "pull from"
            return ImageError(f"{self.label} denied access{doing} ({detail}); the credentials may not "
                              f"{action} {self.repository}, check the account's rights")
        if status == 404:
            return ImageError(f"{self.label} has no{doing or ' such object'} in {self.repository} ({detail}); "
                              "check the repository and the tag or digest")
        if status in RETRY_STATUSES:
            return RegistryUnavailable(f"{self.label} failed{doing} ({detail}) after {MAX_ATTEMPTS} attempts; "
                              "the registry is overloaded or down, try again later")
        return ImageError(f"{self.label} refused{doing} ({detail}); check the image and the registry")

    def close(self) -> None:
        self.session.close()


def _error_of(response: requests.Response) -> tuple[str, str]:
    """The first OCI error code and message of a response body (bounded, sanitized)."""
    try:
        if getattr(response, "_content_consumed", False):
            body = response.content[: 64 << 10]
        else:
            body = response.raw.read(64 << 10, decode_content=True) if response.raw is not None else b""
        import json

        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return str(first.get("code", ""))[:40], " ".join(str(first.get("message", "")).split())[:120]
    except Exception:  # noqa: BLE001 - any body that is not the OCI error form
        return "", ""


def retry_after(response: requests.Response) -> float | None:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(response.headers.get("Retry-After", ""))))
    except ValueError:
        return None


def backoff(attempt: int, wait: float | None = None) -> None:
    time.sleep(wait if wait is not None else min(8.0, 0.25 * (2 ** attempt)) * (0.5 + random.random()))


class _quiet_insecure:
    """Silence urllib3's per-request InsecureRequestWarning: --tls-verify=false was asked for."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
