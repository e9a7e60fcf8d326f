"""``python -m sandbox.idp``: serve the simulated OpenID Connect provider until SIGTERM or SIGINT.

Prints ``{"url": ..., "issuer": ...}`` on one line once it answers requests. Clients and users
come from the options below or from the control API (``IdpSandbox``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from sandbox.idp.model import DEFAULT_AUDIENCE, IdpSettings
from sandbox.idp.provider import IdentityProvider

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _user(text: str) -> tuple[str, str, list[str]]:
    username, colon, rest = text.partition(":")
    password, _, roles = rest.partition(":")
    if not username or not colon:
        raise argparse.ArgumentTypeError("expected USERNAME:PASSWORD[:ROLE,ROLE...]")
    return username, password, [role for role in roles.split(",") if role]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.idp", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--issuer", help="the issuer, if not http://HOST:PORT")
    parser.add_argument("--token-lifetime-s", type=int, default=IdpSettings().token_lifetime_s)
    parser.add_argument("--roles-claim", default=IdpSettings().roles_claim)
    parser.add_argument("--audience", default=DEFAULT_AUDIENCE, help="of access tokens")
    parser.add_argument("--client-id", help="register a client with this id")
    parser.add_argument("--client-secret", default="")
    parser.add_argument("--redirect-uri", action="append", default=[], help="repeatable")
    parser.add_argument(
        "--post-logout-redirect-uri", action="append", default=[], help="repeatable"
    )
    parser.add_argument(
        "--client-role", action="append", default=[], help="of its client credentials tokens"
    )
    parser.add_argument(
        "--user",
        type=_user,
        action="append",
        default=[],
        metavar="USERNAME:PASSWORD[:ROLE,ROLE...]",
        help="register a user (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the fault dice")
    options = parser.parse_args(argv)
    if options.client_id and not options.client_secret:
        parser.error("--client-id needs --client-secret")
    provider = IdentityProvider(
        host=options.host,
        port=options.port,
        issuer=options.issuer,
        settings=IdpSettings(
            token_lifetime_s=options.token_lifetime_s,
            roles_claim=options.roles_claim,
            audience=options.audience,
        ),
        seed=options.seed,
    )
    if options.client_id:
        provider.add_client(
            options.client_id,
            options.client_secret,
            redirect_uris=options.redirect_uri,
            post_logout_redirect_uris=options.post_logout_redirect_uri,
            roles=options.client_role,
        )
    for username, password, roles in options.user:
        provider.add_user(
            username, password, name=username, email=f"{username}@example.com", roles=roles
        )
    # Blocked before any thread starts, so every thread inherits the mask and the signals
    # wait for sigwait below.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    provider.start()
    sys.stdout.write(json.dumps({"url": provider.url, "issuer": provider.issuer}) + "\n")
    sys.stdout.flush()
    signal.sigwait(STOP_SIGNALS)
    provider.stop()


if __name__ == "__main__":
    main()
