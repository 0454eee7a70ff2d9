"""``sdk keygen``, ``sign``, ``verify`` and ``encrypt``: integrity of a model file."""

from __future__ import annotations

import click

from ._cli_base import run


@click.command()
@click.option("-o", "--output", "prefix", required=True, type=click.Path(),
              help="Ed25519: PREFIX.pem and PREFIX.pub.pem; with --aes: the key file.")
@click.option("--aes", is_flag=True, help="Make an AES-256 key (64 hex characters) for `sdk encrypt`.")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def keygen(prefix, aes, force, debug):
    """Make a signing key pair (Ed25519), or an AES-256 key with --aes."""

    def action():
        from sdk import integrity

        if aes:
            click.echo(f"wrote {integrity.aes_keygen(prefix, force)} (keep it secret; the app needs its bytes)")
            return
        pair = integrity.keygen(prefix, force)
        click.echo(f"wrote {pair.private_path} (private, keep it secret) and {pair.public_path} "
                   f"(ship it with the app); fingerprint {pair.fingerprint}")

    run(action, debug)


@click.command()
@click.argument("model", type=click.Path())
@click.option("--key", "private_key", required=True, type=click.Path(), help="Private key from `sdk keygen`.")
@click.option("--force", is_flag=True, help="Overwrite an existing MODEL.sig.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def sign(model, private_key, force, debug):
    """Sign MODEL (Ed25519 over its exact bytes) into MODEL.sig; the model file is not changed."""

    def action():
        from sdk import integrity

        click.echo(f"wrote {integrity.sign(model, private_key, force)}")

    run(action, debug)


@click.command()
@click.argument("model", type=click.Path())
@click.option("--key", "public_key", required=True, type=click.Path(), help="Public key (.pub.pem).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def verify(model, public_key, debug):
    """Check MODEL.sig against MODEL and a public key. Exit 0 if it verifies, 1 if not."""

    def action():
        from sdk import integrity

        document = integrity.verify(model, public_key)
        click.echo(f"OK: {model} is signed by key {document['public_key_sha256'][:16]} "
                   f"(sha256 {document['model_sha256'][:16]})")

    run(action, debug)


@click.command()
@click.argument("model", type=click.Path())
@click.option("--key", "key_path", required=True, type=click.Path(), help="AES key from `sdk keygen --aes`.")
@click.option("-o", "--output", required=True, type=click.Path(), help="The encrypted file to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing output (never the model or the key).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def encrypt(model, key_path, output, force, debug):
    """Encrypt MODEL with AES-256-GCM; apps open it with Model(path, decryption_key=...)."""

    def action():
        from sdk import integrity

        click.echo(f"wrote {integrity.encrypt(model, key_path, output, force)}")

    run(action, debug)
