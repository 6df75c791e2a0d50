import os
from pathlib import Path

import yaml
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from fleet.clusters import register_cluster
from fleet.models import Cluster


def read_text(option: str, path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise CommandError(f"{option} {path} cannot be read: {error.strerror}") from None


class Command(BaseCommand):
    help = (
        "Register a cluster's Kubernetes API endpoint and credentials (stored encrypted). Give a bearer token "
        "(file or environment variable) with an optional CA certificate, or a kubeconfig file."
    )

    def add_arguments(self, parser):
        parser.add_argument("cluster", help="Name of an existing cluster.")
        parser.add_argument("--endpoint", help="Kubernetes API server URL; taken from the kubeconfig if omitted.")
        parser.add_argument("--token-file", type=Path, help="File holding the bearer token.")
        parser.add_argument("--token-env", help="Environment variable holding the bearer token.")
        parser.add_argument("--ca-file", type=Path, help="PEM file of the API server's CA certificate.")
        parser.add_argument("--kubeconfig", type=Path, help="Kubeconfig file (its current context is used).")
        parser.add_argument(
            "--insecure-skip-tls-verify", action="store_true", help="Do not verify the API server's certificate."
        )

    def handle(self, *args, cluster, endpoint, token_file, token_env, ca_file, kubeconfig, **options):
        try:
            target = Cluster.objects.get(name=cluster)
        except Cluster.DoesNotExist:
            raise CommandError(f"cluster {cluster!r} not found") from None
        credentials: dict = {"insecure_skip_tls_verify": options["insecure_skip_tls_verify"]}
        if kubeconfig is not None:
            try:
                document = yaml.safe_load(read_text("--kubeconfig", kubeconfig))
            except yaml.YAMLError:
                raise CommandError(f"--kubeconfig {kubeconfig} is not valid YAML") from None
            credentials["kubeconfig"] = document
            endpoint = endpoint or kubeconfig_server(document)
        elif token_file is not None:
            credentials["token"] = read_text("--token-file", token_file).strip()
        elif token_env:
            credentials["token"] = os.environ.get(token_env, "")
            if not credentials["token"]:
                raise CommandError(f"--token-env {token_env}: the environment variable is missing or empty")
        else:
            raise CommandError("credentials are missing: give --token-file, --token-env or --kubeconfig")
        if ca_file is not None:
            credentials["ca_cert_pem"] = read_text("--ca-file", ca_file)
        if not endpoint:
            raise CommandError("--endpoint is missing: give the Kubernetes API server URL")
        try:
            register_cluster(
                actor="register_cluster command", cluster=target, api_endpoint=endpoint, credentials=credentials
            )
        except ValidationError as error:
            problems = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items())
            raise CommandError(f"cluster {cluster} not registered: {problems}") from None
        self.stdout.write(f"Registered {endpoint} for cluster {cluster}; credentials stored encrypted.")


def kubeconfig_server(document) -> str:
    """Return the API server URL of a kubeconfig's current context, or '' when it has none."""
    if not isinstance(document, dict):
        return ""
    contexts = {item.get("name"): item.get("context", {}) for item in document.get("contexts") or []}
    clusters = {item.get("name"): item.get("cluster", {}) for item in document.get("clusters") or []}
    context = contexts.get(document.get("current-context"), {})
    return clusters.get(context.get("cluster"), {}).get("server", "")
