"""Connection strings: check them the way libpq parses them, learn the secrets they carry,
and say what is wrong with a malformed one without ever quoting it.

libpq's own messages quote what they were given: a parse error repeats the whole string
(``missing "=" after "postgresql//u:pw@h/db"``), and a connection error names the host and
port, which is where part of a password lands when a URL's ``@`` or ``/`` is not
percent-encoded. So a string is checked here before anything connects with it, and the
message of a malformed one is built from what is wrong, never from the string. The secrets
are learned by parsing (libpq's parser, and :mod:`urllib.parse` where a URL's two readings
differ), so :func:`redact` can take them out of any message that comes later.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mv_orchestration.errors import ConfigError

URL_SCHEMES = ("postgresql", "postgres")
SECRET_KEYS = ("password", "sslpassword")
EXPECTED_URL = "expected postgresql://user@host:5432/db"
EXPECTED_ANY = f"{EXPECTED_URL} or key=value pairs (host=h port=5432 dbname=db)"
# Shorter secrets are left alone in messages: they would match ordinary words, and
# a message never holds the password in the first place unless a URL was misread.
MIN_REDACTED = 4
MASK = "***"

# libpq's parse errors, matched to say in our own words what is wrong (their text is never
# shown: it quotes the string).
_LIBPQ_PROBLEMS = (
    ('missing "="', "it is neither a URL nor key=value pairs (a word has no '=')"),
    ("unterminated quoted string", "a quoted value is not closed"),
    ("invalid connection option", "it names a parameter libpq does not know"),
    (
        "invalid URI query parameter",
        "a query parameter is not a libpq one (e.g. sslmode, connect_timeout)",
    ),
    ("extra key/value separator", "a query parameter has more than one '='"),
    ("missing key/value separator", "a query parameter has no '='"),
    ("invalid percent-encoded token", "it has an invalid percent-encoding (write % as %25)"),
    ("forbidden value %00", "it has %00 in a percent-encoded value"),
    ("unexpected character", "an unexpected character follows the host (expected :port or /db)"),
    ('matching "]"', "an IPv6 host's '[' is not closed"),
    ("IPv6 host address may not be empty", "an IPv6 host is empty ([])"),
)


@dataclass(frozen=True)
class ConnInfo:
    """A checked connection string: libpq's parameters and the secrets it carries."""

    params: Mapping[str, str] = field(repr=False)
    secrets: frozenset[str] = field(repr=False)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)


def parse_conninfo(
    value: str,
    name: str,
    *,
    schemes: Sequence[str] = URL_SCHEMES,
    url_only: bool = False,
) -> ConnInfo:
    """Check ``value`` (from setting ``name``) as libpq will read it.

    Accepts ``postgresql://`` and ``postgres://`` URLs (or ``schemes``) and, unless
    ``url_only``, libpq's ``key=value`` strings. Raises :class:`ConfigError` with one line
    naming what is wrong, e.g. ``DATABASE_URL is not a valid PostgreSQL URL: missing '://'
    after the scheme; expected postgresql://user@host:5432/db``; no part of ``value`` is in
    it.
    """
    text = value.strip()
    is_url = "://" in text or _looks_like_url(text) or url_only
    problem, params = _problem(text, schemes, url_only)
    if problem is not None:
        kind = "URL" if is_url else "connection string"
        expected = EXPECTED_URL if is_url else EXPECTED_ANY
        raise ConfigError(f"{name} is not a valid PostgreSQL {kind}: {problem}; {expected}")
    return ConnInfo(params, secrets_in(value))


def libpq_url(value: str, schemes: Sequence[str] = URL_SCHEMES) -> str:
    """``value`` with a scheme of ``schemes`` (e.g. SQLAlchemy's ``postgresql+psycopg2``)
    replaced by ``postgresql``, the form libpq reads."""
    text = value.strip()
    head, sep, rest = text.partition("://")
    return f"postgresql://{rest}" if sep and head in schemes else text


def _problem(
    text: str, schemes: Sequence[str], url_only: bool
) -> tuple[str | None, dict[str, str]]:
    if not text:
        return "it is empty", {}
    head, sep, _ = text.partition("://")
    if sep:
        if head not in schemes:
            return f"the scheme must be {' or '.join(s + '://' for s in schemes)}", {}
        return _parse(libpq_url(text, schemes), url=True)
    if _looks_like_url(text):
        return "missing '://' after the scheme", {}
    if url_only:
        return "it is not a URL", {}
    return _parse(text, url=False)


def _looks_like_url(text: str) -> bool:
    """``postgresql//…``, ``postgres:/…``: a URL whose ``://`` is mistyped."""
    lowered = text.lower()
    for scheme in ("postgresql", "postgres"):
        if lowered.startswith(scheme) and lowered[len(scheme) : len(scheme) + 1] in (":", "/"):
            return True
    return False


def _parse(text: str, *, url: bool) -> tuple[str | None, dict[str, str]]:
    if url:
        percent = _percent_problem(text)
        if percent is not None:
            return percent, {}
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(text).items()}
    except psycopg.Error as exc:
        message = str(exc)
        for marker, problem in _LIBPQ_PROBLEMS:
            if marker in message:
                return problem, {}
        return "libpq cannot parse it", {}
    return _params_problem(params, url=url), params


def _percent_problem(text: str) -> str | None:
    hexdigits = set(string.hexdigits)
    for i, char in enumerate(text):
        if char != "%":
            continue
        code = text[i + 1 : i + 3]
        if len(code) < 2 or not set(code) <= hexdigits:
            return "it has a '%' that is not followed by two hex digits (write % as %25)"
        if code == "00":
            return "it has %00 in a percent-encoded value"
    return None


def _params_problem(params: Mapping[str, str], *, url: bool) -> str | None:
    """What libpq would only find when connecting, and then quote: a host or port that is
    really part of the user or password (an unencoded ``@`` or ``/`` in a URL)."""
    hint = " (percent-encode '@', '/' and ':' in the user or password)" if url else ""
    if any("@" in host for host in params.get("host", "").split(",")):
        return f"it has more than one '@' before the host{hint}"
    for port in params.get("port", "").split(","):
        if port and not (port.isascii() and port.isdigit()):
            return f"the port is not a number{hint}"
        if port and (len(port) > 5 or not 1 <= int(port) <= 65535):
            return "the port is not from 1 to 65535"
    return None


def secrets_in(value: str) -> frozenset[str]:
    """Every secret ``value`` may carry, as libpq reads it and as a URL parser does
    (the two differ on an unencoded ``@``, ``/`` or ``#``); raw and percent-decoded.
    Never raises: a malformed string gives what can be read from it."""
    text = value.strip()
    found: set[str] = set()
    with suppress(psycopg.Error):
        params = conninfo_to_dict(libpq_url(text, (text.partition("://")[0],)))
        found.update(str(params[k]) for k in SECRET_KEYS if params.get(k))
    _, sep, rest = text.partition("://")
    if sep:
        found.update(_url_secrets(rest))
    return frozenset(s for s in found if s)


def _url_secrets(rest: str) -> set[str]:
    """Passwords of ``scheme://rest`` read three ways: up to the first ``@`` (libpq), up to
    the last one in the authority (urllib), and up to the last ``@`` anywhere (a password
    holding an unencoded ``/``), plus ``?password=`` in the query."""
    parts = urlsplit("postgresql://" + rest)
    candidates = {
        parts.netloc.partition("@")[0] if "@" in parts.netloc else "",
        parts.netloc.rpartition("@")[0],
        rest.rpartition("@")[0],
    }
    found: set[str] = set()
    for userinfo in candidates:
        _, colon, password = userinfo.partition(":")
        if colon and password:
            found.update((password, unquote(password)))
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        if key in SECRET_KEYS and raw:
            found.add(raw)
    for piece in parts.query.split("&"):
        key, _, raw = piece.partition("=")
        if unquote(key) in SECRET_KEYS and raw:
            found.add(raw)
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (learned by :func:`secrets_in`) replaced by ``***``."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= MIN_REDACTED:
            text = text.replace(secret, MASK)
    return text


def without_password(value: str) -> str:
    """A checked connection string with its password and ``sslpassword`` left out, rebuilt
    from libpq's reading of it (a URL stays a URL)."""
    text = libpq_url(value)
    params = {k: str(v) for k, v in conninfo_to_dict(text).items() if k not in SECRET_KEYS}
    shown = _as_url(params) if "://" in text else make_conninfo(**params)
    return redact(shown, secrets_in(value))


def _as_url(params: Mapping[str, str]) -> str:
    """``postgresql://user@host:port,…/dbname?rest`` from libpq parameters; with a socket
    directory (a host starting with ``/``) host and port go in the query, as libpq reads
    them there."""
    rest = dict(params)
    user = quote(rest.pop("user", ""), safe="")
    dbname = quote(rest.pop("dbname", ""), safe="")
    netloc = ""
    hosts = rest.get("host", "").split(",")
    if not any(h.startswith("/") for h in hosts):
        rest.pop("host", None)
        ports = rest.pop("port", "").split(",")
        ports += [ports[-1] if len(ports) == 1 else ""] * (len(hosts) - len(ports))
        netloc = ",".join(
            (f"[{h}]" if ":" in h else quote(h, safe="")) + (f":{p}" if p else "")
            for h, p in zip(hosts, ports, strict=False)
        )
    userinfo = f"{user}@" if user else ""
    query = f"?{urlencode(rest)}" if rest else ""
    return f"postgresql://{userinfo}{netloc}/{dbname}{query}"
