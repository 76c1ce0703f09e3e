"""``osiris-flight keys``: the key material of a cluster.

``keys create NAME`` writes one CurveZMQ keypair for the control plane (cluster/curve.py); ``keys tls
DIR`` a cluster CA and a worker certificate for Flight TLS (data/tls.py); ``keys cluster DIR`` all of
a cluster's keys and certificates in one step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from osiris_flight.errors import InvalidInput, Problem


@click.group()
def keys() -> None:
    """CurveZMQ keypairs that encrypt and authenticate coordinator, worker and client links."""


@keys.command("create")
@click.argument("name")
@click.option("--dir", "directory", default=".", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def create(name: str, directory: str, as_json: bool) -> None:
    """Write NAME.key (public: put it in the coordinator's authorized keys under workers/, clients/ or
    admins/ for the role it gets, or give it to workers and clients when NAME is the coordinator) and
    NAME.key_secret (readable by its owner only)."""
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


def cluster_key_files(directory: Path) -> list[tuple[Path, str]]:
    """Every key file of a new cluster in ``directory``, with where it goes: the control plane's
    CURVE keys, then the Flight TLS CA and worker certificate in ``directory/tls``."""
    from osiris_flight.cluster.curve import create_cluster_keys
    from osiris_flight.data.tls import create_cluster_tls

    tls_dir = directory / "tls"
    if tls_dir.exists():
        raise InvalidInput(Problem("keys exist there already", file=str(tls_dir), hint="pick an empty DIR"))
    placed = create_cluster_keys(directory)
    paths = create_cluster_tls(tls_dir)
    return [
        *placed,
        (paths["ca.pem"], "every worker host: cluster.tls_ca (--tls-ca)"),
        (paths["worker.pem"], "every worker host: cluster.tls_cert (--tls-cert)"),
        (paths["worker.key"], "every worker host: cluster.tls_key (--tls-key)"),
        (paths["ca.key"], "nowhere in the cluster: keep it offline to sign more certificates"),
    ]


@keys.command("cluster")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def cluster(directory: str, as_json: bool) -> None:
    """Create a whole cluster's keys in DIRECTORY (which must not hold keys yet): the coordinator's
    keypair, one keypair each for a worker, a client and an admin, authorized/ with each public key
    in its role's subdirectory, and tls/ with the Flight CA and worker certificate. Secret files are
    0600, public ones 0644. Prints which file goes where (the systemd units expect them in
    /etc/osiris-flight/keys/)."""
    try:
        placed = cluster_key_files(Path(directory))
    except InvalidInput as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps([{"file": str(path), "goes_to": where} for path, where in placed]))
        return
    for path, where in placed:
        click.echo(f"{path}\n    -> {where}")
    click.echo("Secret files stay on their hosts; copy more worker or client keys into authorized/<role>/.")


@keys.command("tls")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--days", type=click.IntRange(min=1), default=1825, show_default=True, help="validity")
@click.option("--json", "as_json", is_flag=True)
def tls(directory: str, days: int, as_json: bool) -> None:
    """Write a cluster CA (ca.pem, ca.key) and a worker certificate signed by it (worker.pem,
    worker.key) into DIRECTORY for the workers' Flight TLS. Give every worker worker.pem, worker.key
    and ca.pem (--tls-cert/--tls-key/--tls-ca); keep ca.key off the workers."""
    from osiris_flight.data.tls import create_cluster_tls

    try:
        paths = create_cluster_tls(directory, days)
    except InvalidInput as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps({name: str(path) for name, path in paths.items()}))
    else:
        click.echo(
            f"cluster CA: {paths['ca.pem']} (its key {paths['ca.key']}: keep it off the workers)\n"
            f"worker certificate: {paths['worker.pem']}, key: {paths['worker.key']}\n"
            f"on every worker: --tls-cert {paths['worker.pem']} --tls-key {paths['worker.key']} "
            f"--tls-ca {paths['ca.pem']}"
        )
