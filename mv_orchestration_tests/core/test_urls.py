"""Connection strings: a malformed one is named, never quoted; secrets are learned by parsing."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from mv_orchestration.core.urls import (
    libpq_url,
    parse_conninfo,
    redact,
    secrets_in,
    without_password,
)
from mv_orchestration.errors import ConfigError

PW = "Secr3tPw"
URL = "DATABASE_URL is not a valid PostgreSQL URL: "
DSN = "DATABASE_URL is not a valid PostgreSQL connection string: "
EXPECT_URL = "; expected postgresql://user@host:5432/db"
EXPECT_DSN = EXPECT_URL + " or key=value pairs (host=h port=5432 dbname=db)"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"postgresql//u:{PW}@h/db", URL + "missing '://' after the scheme" + EXPECT_URL),
        (f"postgres:/u:{PW}@h/db", URL + "missing '://' after the scheme" + EXPECT_URL),
        (
            f"mysql://u:{PW}@h/db",
            URL + "the scheme must be postgresql:// or postgres://" + EXPECT_URL,
        ),
        (
            f"postgresql://u:{PW}@x@h/db",
            URL + "it has more than one '@' before the host (percent-encode '@', '/' and ':' "
            "in the user or password)" + EXPECT_URL,
        ),
        (
            f"postgresql://u:{PW}/x@h/db",
            URL + "the port is not a number (percent-encode '@', '/' and ':' in the user or "
            "password)" + EXPECT_URL,
        ),
        (f"postgresql://u:{PW}@h:99999/db", URL + "the port is not from 1 to 65535" + EXPECT_URL),
        (
            f"postgresql://u:%zz{PW}@h/db",
            URL + "it has a '%' that is not followed by two hex digits (write % as %25)"
            + EXPECT_URL,
        ),
        (f"postgresql://u:{PW}%00@h/db", URL + "it has %00 in a percent-encoded value" + EXPECT_URL),
        (
            f"postgresql://u@h/db?password={PW}&bogus=1",
            URL + "a query parameter is not a libpq one (e.g. sslmode, connect_timeout)"
            + EXPECT_URL,
        ),
        (f"host=h password={PW} port=abc", DSN + "the port is not a number" + EXPECT_DSN),
        (f"host=h password='{PW}", DSN + "a quoted value is not closed" + EXPECT_DSN),
        (
            f"host=h {PW}",
            DSN + "it is neither a URL nor key=value pairs (a word has no '=')" + EXPECT_DSN,
        ),
        (f"host=h password={PW} bogus=1", DSN + "it names a parameter libpq does not know"
         + EXPECT_DSN),
        ("   ", DSN + "it is empty" + EXPECT_DSN),
    ],
)  # fmt: skip
def test_malformed_strings_are_named_never_quoted(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_conninfo(value, "DATABASE_URL")
    assert str(info.value) == message
    assert PW not in str(info.value)


@pytest.mark.parametrize(
    ("value", "password"),
    [
        (f"postgresql://u:{PW}@h:5432/db", PW),
        (f"postgres://u:{PW}@h", PW),
        (f"postgresql://u:{quote('p@ss/w:rd#%?', safe='')}@h/db", "p@ss/w:rd#%?"),
        (f"postgresql://u@h/db?password={PW}&sslmode=require", PW),
        (f"postgresql://u:{PW}@h1:5432,h2:5433/db", PW),
        (f"postgresql://u:{PW}@[::1]:5432/db", PW),
        (f"host=h port=5432 password={PW}", PW),
        (f"host=h password='with space {PW}'", f"with space {PW}"),
        (f"postgresql://u:{PW}#x@h/db", f"{PW}#x"),  # libpq keeps '#' in the password
    ],
)
def test_valid_strings_and_their_secrets(value: str, password: str) -> None:
    info = parse_conninfo(value, "DATABASE_URL")
    assert info.params["password"] == password
    assert password in info.secrets
    shown = without_password(value)
    assert password not in shown and quote(password, safe="") not in shown
    # the same connection without the password, in the same form
    expected = {k: v for k, v in conninfo_to_dict(value).items() if k != "password"}
    assert conninfo_to_dict(shown) == expected
    assert ("://" in shown) == ("://" in value)


def test_secrets_of_malformed_strings_read_every_way() -> None:
    # libpq reads the password up to the first '@', urllib up to the last
    assert {"a", "a@b"} <= secrets_in("postgresql://u:a@b@h/db")
    # an unencoded '/' ends the authority for both; the text up to the last '@' still counts
    assert "pa/ss" in secrets_in("postgresql://u:pa/ss@h/db")
    # raw and percent-decoded forms, a query-string password and sslpassword
    assert {"s%40cret", "s@cret", "q1", "k3y"} <= secrets_in(
        "postgresql://u:s%40cret@h/db?password=q1&sslpassword=k3y"
    )
    assert secrets_in("host=h password='unterminated") == frozenset()  # nothing to read


def test_redact_replaces_every_secret() -> None:
    text = 'connection to "h" failed for pa/ss and again pa/ss, not for pa'
    assert redact(text, {"pa/ss", "pa"}) == (
        'connection to "h" failed for *** and again ***, not for pa'
    )  # "pa" is too short to be told from ordinary text


def test_storage_schemes() -> None:
    schemes = ("postgresql", "postgresql+psycopg2")
    url = f"postgresql+psycopg2://u:{PW}@h/db"
    assert parse_conninfo(url, "S", schemes=schemes, url_only=True).params["password"] == PW
    assert libpq_url(url, schemes) == f"postgresql://u:{PW}@h/db"
    with pytest.raises(ConfigError, match="S is not a valid PostgreSQL URL: it is not a URL"):
        parse_conninfo(f"host=h password={PW}", "S", schemes=schemes, url_only=True)
