"""The provider's few HTML pages: the sign-in form, and a message (an error or "signed out")."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from sandbox.http import Response

HTML_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto;padding:0 1rem}"
    "label{display:block;margin-top:1rem}"
    "input[type=text],input[type=password]{width:100%;padding:.4rem;box-sizing:border-box}"
    "button{margin:1.2rem .5rem 0 0;padding:.5rem 1rem}"
    ".error{color:#a40000}"
)
INVALID_CREDENTIALS = "Invalid username or password."


def _page(title: str, content: str, status: int) -> Response:
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<h1>{escape(title)}</h1>\n{content}</body>\n</html>\n"
    )
    return Response(status, document.encode(), dict(HTML_HEADERS))


def sign_in(
    request: Mapping[str, str], *, client_id: str, username: str = "", error: str = ""
) -> Response:
    """The form that posts the credentials, with the authorization request in hidden
    fields, back to the authorization endpoint."""
    hidden = "".join(
        f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">\n'
        for name, value in request.items()
    )
    alert = f'<p class="error" role="alert">{escape(error)}</p>\n' if error else ""
    content = (
        f"<p>to continue to <strong>{escape(client_id)}</strong></p>\n{alert}"
        '<form method="post" action="authorize">\n'
        f"{hidden}"
        '<label for="username">Username</label>\n'
        '<input type="text" id="username" name="username" autocomplete="username" '
        f'value="{escape(username)}" required autofocus>\n'
        '<label for="password">Password</label>\n'
        '<input type="password" id="password" name="password" '
        'autocomplete="current-password" required>\n'
        '<button type="submit" name="action" value="sign_in">Sign in</button>'
        '<button type="submit" name="action" value="cancel" formnovalidate>Cancel</button>\n'
        "</form>\n"
    )
    return _page("Sign in", content, 200)


def message(title: str, text: str, status: int = 200) -> Response:
    return _page(title, f"<p>{escape(text)}</p>\n", status)
