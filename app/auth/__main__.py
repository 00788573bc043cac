"""`python -m app.auth`: tokens and secrets for the built-in issuer.

    python -m app.auth token [--scope chat] [--subject dev]   an access token, for development
    python -m app.auth hash-secret [SECRET]                   a client secret and its hash
    python -m app.auth rotate-key                             a new signing key

`token` signs with the gateway's own key (in its data_dir), so it takes the same settings
(`--config`, `--host`, `--port`, or SWITCHYARD_*) as the gateway it is meant for.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from app.auth.keys import SigningKeys, mint
from app.auth.secrets import hash_secret, new_secret
from app.settings import GatewaySettings, load_settings


def _settings(args: argparse.Namespace) -> GatewaySettings:
    overrides: dict[str, Any] = {k: v for k in ("host", "port") if (v := getattr(args, k)) is not None}
    try:
        return load_settings(overrides, args.config)
    except (ValidationError, ValueError) as exc:
        sys.exit(f"invalid settings: {exc}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.auth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    commands = parser.add_subparsers(dest="command", required=True)
    token = commands.add_parser("token", help="print an access token signed by the built-in issuer")
    token.add_argument("--scope", action="append", choices=["chat", "finetune", "adapters", "admin"])
    token.add_argument("--subject", default="dev", help="the token's `sub`: the tenant it speaks for")
    token.add_argument("--ttl", type=int, default=None, help="seconds (default: auth_token_ttl_s)")
    secret = commands.add_parser("hash-secret", help="print a client secret (new unless given) and its hash")
    secret.add_argument("secret", nargs="?")
    commands.add_parser("rotate-key", help="make a new signing key; the old one verifies until its tokens expire")
    args = parser.parse_args(argv)

    if args.command == "hash-secret":
        value = args.secret or new_secret()
        print(f"secret: {value}\nsecret_hash: {hash_secret(value)}")
        return
    settings = _settings(args)
    if settings.auth_mode != "builtin":
        sys.exit(
            f"auth_mode is {settings.auth_mode}: tokens come from {settings.issuer if settings.auth_jwks else '-'}"
        )
    if args.command == "rotate-key":
        kid = SigningKeys(settings.data_dir / "auth", token_ttl_s=settings.auth_token_ttl_s).rotate()
        print(f"new signing key: {kid}")
        return
    ttl = args.ttl or settings.auth_token_ttl_s
    print(mint(settings, subject=args.subject, scopes=args.scope or ["chat"], ttl_s=ttl))


if __name__ == "__main__":
    main()
