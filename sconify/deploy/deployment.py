"""A deployment directory (docs/deploy.md): ``policy.yaml`` (0644, references only) and
``secrets.json`` (0600, the values), made by ``init``, extended by ``add``, shown by ``show``.

Every command reads what is there, changes what it was asked to, then *settles* the two files:
values typed into the policy move to secrets.json, a declared secret without a value is made,
a kept value is never made again; both files are written whole (secrets.json first) or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sconify.atomic import StagedFiles, writing
from sconify.deploy import policy as P
from sconify.deploy.secrets import Secret, SecretsFile, describe, from_policy_value, generate, matches
from sconify.deploy.source import CuratorManifest
from sconify.errors import UsageError

POLICY_FILE = "policy.yaml"
SECRETS_FILE = "secrets.json"
HIDDEN = "<hidden>"


@dataclass
class Settled:
    """What a command did to a deployment directory (names only, never a value)."""

    directory: Path
    name: str
    measurements: int
    new_measurement: bool = False
    generated: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)  # values typed into policy.yaml, now in secrets.json


def init_deployment(directory: Path, name: str, source: CuratorManifest, secrets: list[Secret],
                    environment: list[str], injections: list[str]) -> Settled:
    """A new deployment of the generic image ``source`` describes, or the one in ``directory``
    again: its policy (edits kept) with this image accepted, the options' secrets, environment
    and injection files added, and every secret made once."""
    measurement = P.measurement_of(source.manifest, source.data, source.where)
    P.check_session_name(name)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--out {directory} exists and is not a directory; choose another path")
    policy_path = directory / POLICY_FILE
    if policy_path.exists():
        doc = P.read_policy(policy_path)
        if doc["name"] != name:
            raise UsageError(f"{policy_path} is the policy of deployment {doc['name']!r}, not {name!r}; pass "
                             f"--name {doc['name']} or another --out")
        P.add_volumes(doc, source.manifest)
        new = P.add_measurement(doc, measurement)
    else:
        doc = P.new_policy(name, source.manifest, measurement)
        new = True
    for secret in secrets:
        P.add_secret(doc, secret)
    P.set_environment(doc, environment)
    P.set_injection_files(doc, injections)
    return settle(directory, doc, new)


def add_version(directory: Path, source: CuratorManifest) -> Settled:
    """Accept another version of the image: its MRENCLAVE and measurement join the policy's."""
    doc = read_deployment_policy(directory)
    measurement = P.measurement_of(source.manifest, source.data, source.where)
    P.add_volumes(doc, source.manifest)
    new = P.add_measurement(doc, measurement)
    return settle(directory, doc, new)


def read_deployment_policy(directory: Path) -> dict:
    policy_path = directory / POLICY_FILE
    if not policy_path.is_file():
        raise UsageError(f"{directory} holds no {POLICY_FILE}; make the deployment with "
                         f"`sconify deploy init IMAGE --name NAME --out {directory}`")
    return P.read_policy(policy_path)


def read_secrets(directory: Path, name: str) -> SecretsFile:
    path = directory / SECRETS_FILE
    if not path.exists():
        return SecretsFile(name, {})
    kept = SecretsFile.read(path)
    if kept.policy != name:
        raise UsageError(f"{path} holds the secrets of deployment {kept.policy!r}, not {name!r}; keep each "
                         "deployment in its own directory")
    return kept


def settle(directory: Path, doc: dict, new_measurement: bool) -> Settled:
    """Check the policy's secrets and references, make the missing values, move typed ones out of
    the policy, and write secrets.json and policy.yaml together."""
    where = str(directory / POLICY_FILE)
    declared = P.declared_secrets(doc, where)
    P.check_references(doc, [secret for secret, _ in declared], where)
    kept = read_secrets(directory, doc["name"])
    settled = Settled(directory, doc["name"], len(doc.get("sconify", {}).get("measurements") or []), new_measurement)
    for secret, value in declared:
        if value is not None:
            kept.values[secret.name] = from_policy_value(secret, value, where)
            settled.moved.append(secret.name)
        elif secret.name in kept.values:
            if not matches(secret, kept.values[secret.name]):
                raise UsageError(
                    f"secret {secret.name} is {kept.values[secret.name].get('kind')} in {SECRETS_FILE} but the policy "
                    f"declares it {secret.kind}; rename it in the policy, or delete its entry from {SECRETS_FILE} "
                    "to make a new value (a volume key lost is the volume lost)")
            settled.kept.append(secret.name)
        else:
            kept.values[secret.name] = generate(secret)
            settled.generated.append(secret.name)
    for entry in doc.get("secrets") or []:
        entry.pop("value", None)
    with writing(f"the deployment directory {directory}"), StagedFiles() as staged:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # it holds secrets.json
        kept.write(directory / SECRETS_FILE, staged)
        P.write_policy(doc, directory / POLICY_FILE, staged)
        staged.commit()
    return settled


def read_settled(directory: Path) -> tuple[dict, SecretsFile]:
    """The policy and secrets of a deployment whose every declared secret has its value in
    secrets.json and none in the policy (what the runtime will need), or a one-line UsageError."""
    doc = read_deployment_policy(directory)
    kept = read_secrets(directory, doc["name"])
    for secret, value in P.declared_secrets(doc, str(directory / POLICY_FILE)):
        if value is not None or secret.name not in kept.values:
            raise UsageError(f"secret {secret.name} of {directory / POLICY_FILE} has no value in {SECRETS_FILE} yet; "
                             "rerun `sconify deploy init` to settle the deployment")
    return doc, kept


def show(directory: Path) -> str:
    """The policy with every secret value masked, and what each secret is (never its value)."""
    doc = read_deployment_policy(directory)
    declared = P.declared_secrets(doc, str(directory / POLICY_FILE))
    kept = read_secrets(directory, doc["name"])
    for entry in doc.get("secrets") or []:
        if "value" in entry:
            entry["value"] = HIDDEN  # typed into the policy, not moved to secrets.json yet
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)
    lines = [f"# deployment {doc['name']} ({directory})", text.rstrip("\n"),
             f"# secrets: the values are in {directory / SECRETS_FILE}, never shown"]
    width = max((len(secret.name) for secret, _ in declared), default=0)
    for secret, value in declared:
        entry = kept.values.get(secret.name)
        what = (describe(entry) if entry is not None else
                "typed into policy.yaml: rerun `sconify deploy init` to move it" if value is not None else
                "not made yet: rerun `sconify deploy init`")
        lines.append(f"#   {secret.name:<{width}}  {what}")
    return mask("\n".join(lines) + "\n", kept)


def mask(text: str, kept: SecretsFile) -> str:
    """``text`` with any secret value in it (as it is, hex, PEM) hidden: a value typed literally into
    the policy (an environment value, an injection file) is still never shown."""
    for entry in kept.values.values():
        for key in ("value", "value_hex", "private_key"):
            value = entry.get(key)
            if isinstance(value, str) and len(value) >= 4:
                text = text.replace(value, HIDDEN)
    return text
