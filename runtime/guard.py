"""Who may talk to runtime/serve: the Host it was called by, the site a request came from, the
token, and what a body may be. Each rule is a function of the request's headers, so the server
applies them in one place, before any route runs.

- Host: a DNS-rebinding page reaches a loopback server under a name of its own, so only the
  names the server is known by are served (421 otherwise): localhost, 127.0.0.1 and [::1] on a
  loopback address; on any other, also the address the connection came in on, the machine's
  own name (NAME and NAME.local, as a Pi is found on its network) and each `--allow-host`
  name. With the server's port, or none when it listens on 80.
- Site: a page elsewhere can make a browser send requests here (a form post, a no-cors
  fetch) without reading the answer; a request whose Origin is not this server's own, or whose
  Sec-Fetch-Site is another site's, is refused (403), but for a top-level navigation to the
  page itself (a link or a bookmark).
- Token: a Bearer header (any case), the page's cookie, or `?token=` on the page only, which
  then sets the cookie; compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

COOKIE = "edgeconv_token"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
IMAGE_TYPES = ("image/",)
FORM_TYPE = "multipart/form-data"


@dataclass
class Guard:
    host: str  # the address listened on
    port: int
    token: str | None = None
    allow_hosts: list[str] = field(default_factory=list)

    def host_allowed(self, header: str | None, local_address: str | None) -> bool:
        """True when the Host header names this server (see the module's note)."""
        if not header:
            return False
        name, port = split_host(header.strip().lower())
        if port is None:
            port = 80
        if port != self.port:
            return False
        names = set(LOOPBACK_NAMES)
        if self.host not in LOOPBACK:
            names |= {name.lower() for name in self.allow_hosts}
            if local_address:
                names.add(f"[{local_address}]" if ":" in local_address else local_address)
        return name in names

    def cross_site(self, headers, host: str) -> bool:
        """True when the request comes from a page on another origin."""
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"http://{host.strip().lower()}":
            return True
        return headers.get("sec-fetch-site", "same-origin").lower() not in ("same-origin",
                                                                              "none")

    def authorized(self, headers, cookies: dict[str, str], query_token: str | None) -> bool:
        if self.token is None:
            return True
        offered = [cookies.get(COOKIE, "")]
        scheme, _, value = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip())
        if query_token is not None:
            offered.append(query_token)
        expected = self.token.encode()
        return any(value and hmac.compare_digest(value.encode(), expected) for value in offered)


def own_names() -> list[str]:
    """This machine's name as its network knows it: NAME and NAME.local (mDNS)."""
    name = socket.gethostname().lower().split(".")[0]
    return [name, f"{name}.local"] if name else []


def top_level_navigation(headers) -> bool:
    """A browser opening a URL in its window (typed, bookmarked or a link): it can show the
    page but no other site can read it or act through it."""
    return headers.get("sec-fetch-mode") == "navigate" and \
        headers.get("sec-fetch-dest") == "document"


def split_host(host: str) -> tuple[str, int | None]:
    """('name', port or None) of a Host header; a port that is not a number is -1."""
    if host.startswith("["):
        name, _, rest = host.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else None if not rest else "x"
    else:
        name, colon, port = host.rpartition(":") if ":" in host else (host, "", None)
        port = port if colon else None
    if port is None:
        return name, None
    return name, int(port) if port.isascii() and port.isdigit() and len(port) <= 5 else -1


def body_type_allowed(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith(IMAGE_TYPES) or media == FORM_TYPE


class TokenError(ValueError):
    """A token that cannot be used: empty, blank, or a token file that cannot be read."""


def check_token(token: str, where: str) -> str:
    if not token.strip() or token != token.strip() or not token.isprintable():
        raise TokenError(f"{where} is empty, blank or not one printable word")
    return token


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token stored at `path`, or a new one written there; (token, created).

    A new token goes to a temporary name in the same folder (0600), is fsynced and renamed,
    so that a crash or a full disk never leaves an empty or partial token file behind."""
    if path.exists():
        if not path.is_file():
            raise TokenError(f"token file {path} is not a regular file")
        try:
            text = path.read_text(errors="replace")
        except OSError as error:
            raise TokenError(f"token file {path}: {error.strerror or error}") from None
        return check_token(text.strip(), f"token file {path} (delete it for a new one)"), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(token + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)
    return token, True
