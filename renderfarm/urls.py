"""URLs that may hold a secret (the farm's Redis, database and S3 endpoint): masked for output,
their passwords listed for scrubbing, and refused when their clients would misread them.

A password may sit in the user info (`redis://user:pw@host`) or in a query parameter
(`redis://host/0?password=pw`, which redis-py and libpq both read). Written raw, a '/', '?' or
'#' in it ends the user info early for urllib (and so for redis-py and botocore), and a second
'@' makes SQLAlchemy take the rest for the host: such a URL means different places to different
parsers, so it is refused (percent-encoded, the same password works everywhere). Masking trusts
no parser: it hides what lies between the user name and the last '@' (the whole user info when it
holds a raw '/', '?' or '#'), every secret query value, and any fragment.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

MASK = "***"
# A query parameter holding a secret (`password`, libpq's `sslpassword`, `token`...): its value
# runs to the next `&name=`, so a raw '&', '#' or '@' in it stays hidden too.
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&][^&=#?/]*(?:pass|secret|token|pwd|auth)[^&=#?/]*=)(?P<value>.*?)(?=&[^&=#]+=|$)",
    re.IGNORECASE | re.DOTALL,
)
ENCODE_HINT = "percent-encode the password (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A)"


def _params_masked(url: str) -> str:
    return _SECRET_PARAM.sub(lambda m: m["name"] + MASK, url)


def mask_url(url: str | None) -> str | None:
    """The URL with any password (in its user info or a query parameter) replaced by ***."""
    if not url:
        return url
    text = _params_masked(url)
    scheme, sep, rest = text.partition("://")
    if not sep:  # `:pw@host:6379`, a URL missing its scheme
        scheme, rest = "", text
    if not rest.startswith("/"):  # `sqlite:////path`, `file:///path`: no user info at all
        userinfo, at, place = rest.rpartition("@")
        if at and any(c in userinfo for c in "/?#"):
            rest = f"{MASK}@{place}"  # a raw password: no telling where the user name ends
        elif at and ":" in userinfo:
            rest = f"{userinfo.partition(':')[0]}:{MASK}@{place}"
    rest, fragment, _ = rest.partition("#")  # no client reads a fragment: it is a password's tail
    return scheme + sep + rest + (f"#{MASK}" if fragment else "")


def url_secrets(url: str | None) -> set[str]:
    """Every password `url` holds, as written and decoded, for scrubbing from a server's error."""
    if not url:
        return set()
    found = {m["value"] for m in _SECRET_PARAM.finditer(url)}
    _, sep, rest = _params_masked(url).partition("://")
    if sep and not rest.startswith("/"):
        userinfo, at, _ = rest.rpartition("@")
        if at and ":" in userinfo:
            found.add(userinfo.partition(":")[2])
    return {s for s in found | {unquote(s) for s in found} if s}


def misread_userinfo(url: str) -> str | None:
    """Why the farm's clients would read `url`'s user name or password other than as written
    (a raw '/', '?', '#' or '@' in it), or None when they read it as written. Never quotes it."""
    scheme, sep, rest = url.partition("://")
    if not sep or rest.startswith("/"):
        return None
    if "#" in url:
        return "has a '#', as a password with a raw '#' does"
    text = _params_masked(url)  # a ?password= value may hold an '@'
    netloc = urlsplit(text).netloc
    after_host = text.partition("://")[2][len(netloc):]
    if "@" in after_host:
        return "has an '@' after its host, as a password with a raw '/' or '?' does"
    # SQLAlchemy and libpq end the user info at the first '@', urllib and redis-py at the last.
    if netloc.count("@") > 1 and scheme.startswith("postgres"):
        return "has two '@', as a password with a raw '@' does"
    return None
