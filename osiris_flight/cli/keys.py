"""``osiris-flight keys create NAME``: a CurveZMQ keypair for the control plane (cluster/curve.py)."""

from __future__ import annotations

import json
import sys

import click

from osiris_flight.errors import InvalidInput


@click.group()
def keys() -> None:
    """CurveZMQ keypairs that encrypt and authenticate coordinator, worker and client links."""


@keys.command("create")
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def create(name: str, directory: str, as_json: bool) -> None:
    """Write NAME.key (public: give it to the coordinator's authorized keys, or to workers and
    clients when NAME is the coordinator) and NAME.key_secret (readable by its owner only)."""
    from osiris_flight.cluster.curve import create_keypair

    if not name or "/" in name or name.startswith("."):
        raise click.BadParameter("a plain file name such as worker-a", param_hint="NAME")
    try:
        public, secret = create_keypair(directory, name)
    except InvalidInput as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps({"public_key_file": str(public), "secret_key_file": str(secret)}))
    else:
        click.echo(f"public key: {public}\nsecret key: {secret} (keep it on this host only)")
