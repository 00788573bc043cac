"""The built-in issuer's login page: plain HTML, no script, styled by one inline sheet that the
page's Content-Security-Policy admits by nonce. It may not be framed (no clickjacking), sends
no referrer (the query holds the client's state) and is never cached."""

import secrets
from html import escape

from app.auth.authorize import AuthorizationRequest

__all__ = ["login_page", "page_headers"]

_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:22rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:8px;
box-shadow:0 1px 4px #0002}
h1{font-size:1.25rem;margin:0 0 1rem}label{display:block;margin:.75rem 0 .25rem;font-weight:600}
input{width:100%;box-sizing:border-box;padding:.5rem;font:inherit;border:1px solid #99a;border-radius:4px}
input:focus,button:focus{outline:3px solid #3b6fd6;outline-offset:1px}
button{margin-top:1.25rem;width:100%;padding:.6rem;font:inherit;font-weight:600;color:#fff;
background:#2a56b8;border:0;border-radius:4px;cursor:pointer}
p[role=alert]{color:#9b1c1c;background:#fde8e8;padding:.5rem;border-radius:4px}
.who{color:#555;font-size:.9rem}
"""


def page_headers(nonce: str) -> dict[str, str]:
    policy = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return {
        "content-security-policy": policy,
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
        "cache-control": "no-store",
        "x-content-type-options": "nosniff",
    }


def login_page(request: AuthorizationRequest | None, *, error: str = "", username: str = "") -> tuple[str, str]:
    """The page (the form, or only `error` when there is no request to sign in for) and its nonce."""
    nonce = secrets.token_urlsafe(16)
    alert = f'<p role="alert">{escape(error)}</p>' if error else ""
    if request is None:
        body = f"<h1>Cannot sign in</h1>{alert}"
    else:
        hidden = "".join(
            f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'
            for name, value in request.fields().items()
        )
        body = f"""<h1>Sign in to Switchyard</h1>
<p class="who">The console asks to act for you{_scopes(request)}.</p>{alert}
<form method="post" action="/oauth/authorize">{hidden}
<label for="username">User name</label>
<input id="username" name="username" autocomplete="username" required autofocus value="{escape(username)}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>"""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Sign in · Switchyard</title><style nonce="{nonce}">{_STYLE}</style></head>
<body><main>{body}</main></body></html>"""
    return page, nonce


def _scopes(request: AuthorizationRequest) -> str:
    return f" with: {escape(', '.join(request.scope))}" if request.scope else " with every scope your account has"
