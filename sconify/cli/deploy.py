"""``sconify deploy``: a service provider's deployment of a generic image (docs/deploy.md).

``init`` makes (or settles again) a deployment directory, ``add`` accepts another version of the
image, ``show`` prints the policy with no secret value, ``k8s`` writes the Kubernetes objects.
No command ever prints a secret's value.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sconify.cli.registry import add_registry_arguments, bind, registry_options


def register(subparsers) -> None:
    deploy = subparsers.add_parser(
        "deploy",
        help="deploy a generic image with your own policy, secrets and volume keys (docs/deploy.md)",
        description="A deployment directory holds policy.yaml (secret references only) and secrets.json (0600, "
        "the values); mount both at /run/secrets/sconify.",
    )
    commands = deploy.add_subparsers(dest="deploy_command", metavar="COMMAND")

    init = commands.add_parser(
        "init", help="make a deployment of IMAGE (or settle an existing one again: secrets kept)",
        description="Reads IMAGE's manifest (attached in its registry, or --manifest), checks its signature with "
        "--signer, and writes DIR/policy.yaml and DIR/secrets.json. Rerun it after editing policy.yaml: kept "
        "secrets stay, new ones are made.")
    init.add_argument("image", metavar="IMAGE", help="the generic image (docker://... finds its attached manifest)")
    init.add_argument("--name", required=True, help="the deployment's name (the policy's name)")
    init.add_argument("--out", metavar="DIR", help="the deployment directory (default ./NAME)")
    init.add_argument("--secret", action="append", default=[], metavar="NAME:KIND[:SIZE]",
                      help="declare a secret: KIND ascii (SIZE characters, default 24), binary (SIZE bytes, default "
                      "32) or x509 (NAME:x509[:COMMON_NAME]); repeatable")
    init.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                      help="set a variable of the service; VALUE may hold $$SCONE::SECRET$$ references; repeatable")
    init.add_argument("--inject", action="append", default=[], metavar="PATH=@FILE",
                      help="serve FILE's content (references substituted) at PATH to the service only; repeatable")
    source_arguments(init)
    init.set_defaults(func=run_init)

    add = commands.add_parser("add", help="accept another version of the image in a deployment",
                              description="Appends IMAGE's MRENCLAVE and measurement to DIR/policy.yaml.")
    add.add_argument("image", metavar="IMAGE")
    add.add_argument("directory", metavar="DIR")
    source_arguments(add)
    add.set_defaults(func=run_add)

    show = commands.add_parser("show", help="print a deployment's policy; secret values are never shown")
    show.add_argument("directory", metavar="DIR")
    show.set_defaults(func=run_show)

    k8s = commands.add_parser(
        "k8s", help="write a Kubernetes Deployment, Secret and PersistentVolumeClaims",
        description="The file holds the Secret (policy.yaml and secrets.json): it is written with mode 0600 and "
        "never printed.")
    k8s.add_argument("directory", metavar="DIR")
    k8s.add_argument("--image", required=True, metavar="REF", help="the image the cluster pulls (e.g. registry/app:1)")
    k8s.add_argument("--out", metavar="FILE", help="where to write the objects (default DIR/k8s.yaml)")
    k8s.set_defaults(func=run_k8s)
    deploy.set_defaults(func=lambda args: usage(deploy))


def usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", metavar="FILE",
                        help="the curator's manifest.json (default: the manifest attached to IMAGE in its registry)")
    parser.add_argument("--signer", metavar="KEY.pub",
                        help="the curator's public key: refuse a manifest it did not sign (--manifest: "
                        "FILE.intoto.jsonl beside it; in a registry: the attached attestation)")
    parser.add_argument("--platform", help="platform to pick from a multi-platform image")
    add_registry_arguments(parser)


def curator_manifest(args: argparse.Namespace):
    from sconify.deploy.source import read_curator_manifest

    registry = registry_options(args)
    source = read_curator_manifest(bind(args.image, registry), args.manifest, args.signer, registry,
                                   platform=args.platform)
    return source


def run_init(args: argparse.Namespace) -> int:
    from sconify.deploy.deployment import init_deployment
    from sconify.deploy.secrets import parse_secret_option

    secrets = [parse_secret_option(text) for text in args.secret]  # bad options fail before the image is read
    source = curator_manifest(args)
    settled = init_deployment(Path(args.out or args.name), args.name, source, secrets, args.env, args.inject)
    report(settled, source)
    return 0


def run_add(args: argparse.Namespace) -> int:
    from sconify.deploy.deployment import add_version, read_deployment_policy

    read_deployment_policy(Path(args.directory))  # a wrong DIR fails before the image is read
    source = curator_manifest(args)
    settled = add_version(Path(args.directory), source)
    report(settled, source)
    return 0


def report(settled, source) -> None:
    """What was written: names and counts, never a value."""
    measurement = "accepted" if settled.new_measurement else "already accepted"
    print(f"deployment {settled.name}: {settled.directory}/policy.yaml, {settled.directory}/secrets.json (0600)")
    print(f"  image {source.manifest.measurement.mrenclave[:16]}... {measurement}; "
          f"{settled.measurements} version(s) accepted")
    if source.signed_by:
        print(f"  signed: {source.signed_by}")
    else:
        print(f"sconify: warning: the signature of {source.where} was not checked; pass --signer with the "
              "curator's public key", file=sys.stderr)
    for what, names in (("made", settled.generated), ("kept", settled.kept), ("moved from policy.yaml", settled.moved)):
        if names:
            print(f"  secrets {what}: {', '.join(names)}")


def run_show(args: argparse.Namespace) -> int:
    from sconify.deploy.deployment import show

    sys.stdout.write(show(Path(args.directory)))
    return 0


def run_k8s(args: argparse.Namespace) -> int:
    from sconify.atomic import atomic_write_bytes, writing
    from sconify.deploy import k8s
    from sconify.deploy.deployment import POLICY_FILE, SECRETS_FILE, read_settled

    directory = Path(args.directory)
    doc, _ = read_settled(directory)  # every secret made, none typed into the policy, none of another deployment
    documents = k8s.manifests(doc, (directory / POLICY_FILE).read_bytes(), (directory / SECRETS_FILE).read_bytes(),
                              args.image)
    out = Path(args.out) if args.out else directory / "k8s.yaml"
    with writing(f"--out {out}"):
        atomic_write_bytes(out, k8s.render(documents), mode=0o600)
    kinds = ", ".join(f"{d['kind']} {d['metadata']['name']}" for d in documents)
    print(f"wrote {out} (0600: it holds the Secret): {kinds}")
    print(f"apply with: kubectl apply -f {out}")
    return 0
