#!/usr/bin/env python3
"""Checks the deploy kit (deploy/, docker-compose.yml) against itself and the server.

- Alert rules: `promtool check rules` and their unit tests, `promtool test rules`.
- Every `sluice_…` series named by an alert, the Grafana dashboard or the
  prometheus-adapter rule is one the server exports (read from src/metrics.rs), so a
  renamed metric cannot leave a dead alert or an empty panel behind.
- Kubernetes manifests: validated against the Kubernetes schemas (kubernetes-validate,
  strict: unknown fields fail), and the shutdown timing adds up: the termination grace
  covers preStop plus the server's `dispatch.shutdown_grace`.
- Compose: `docker compose config` where Docker has the compose plugin; otherwise the
  YAML is loaded and its structure checked (services build or name an image, mounted
  files exist, dependencies name services).
- The dashboard: JSON with unique panel ids, every query on the provisioned datasource.

Exits non-zero naming every problem found. Run by scripts/test.sh in its venv.
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROBLEMS: list[str] = []


def problem(msg: str) -> None:
    PROBLEMS.append(msg)


def exported_series() -> set[str]:
    """Series names the server exports: every metric constant in src/metrics.rs, and the
    `_bucket`, `_sum` and `_count` series of the histograms."""
    src = (ROOT / "src" / "metrics.rs").read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = "(sluice_\w+)";', src))
    if not consts:
        problem("src/metrics.rs: no metric constants found")
    histograms = set(re.findall(r"describe_histogram!\(\s*(\w+)", src))
    names = set(consts.values())
    for const in histograms:
        base = consts.get(const)
        if base:
            names |= {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return names


def check_series(where: str, text: str, known: set[str]) -> None:
    for name in sorted(set(re.findall(r"\bsluice_\w+", text))):
        if name not in known and name != "sluice_queued_runs":
            problem(f"{where}: `{name}` is not a metric the server exports")


def run(cmd: list[str], where: str) -> None:
    done = subprocess.run(cmd, cwd=DEPLOY / "prometheus", capture_output=True, text=True)
    if done.returncode != 0:
        problem(f"{where}: {' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")


def check_alerts(known: set[str]) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        problem("promtool not found (Debian package `prometheus`)")
        return
    run([promtool, "check", "rules", "alerts.yml"], "alerts.yml")
    run([promtool, "test", "rules", "alerts_test.yml"], "alerts_test.yml")
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            check_series(f"alert {rule['alert']}", rule["expr"], known)
            if "summary" not in rule.get("annotations", {}):
                problem(f"alert {rule['alert']}: no summary annotation")
    tested = (DEPLOY / "prometheus" / "alerts_test.yml").read_text()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if not re.search(rf"alertname: {rule['alert']}$", tested, re.MULTILINE):
                problem(f"alert {rule['alert']} has no unit test in alerts_test.yml")


def check_dashboard(known: set[str]) -> None:
    path = DEPLOY / "grafana" / "dashboards" / "sluice.json"
    board = json.loads(path.read_text())
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uids = {d["uid"] for d in datasources["datasources"]}
    ids = [p["id"] for p in board["panels"]]
    if len(ids) != len(set(ids)):
        problem(f"{path.name}: panel ids repeat")
    queries = 0
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queries += 1
            if target.get("datasource", {}).get("uid") not in uids:
                problem(f"{path.name}: panel `{panel['title']}` uses an unprovisioned datasource")
            check_series(f"dashboard panel `{panel['title']}`", target["expr"], known)
    if queries == 0:
        problem(f"{path.name}: no queries")


def check_kubernetes(known: set[str]) -> None:
    k8s = DEPLOY / "k8s"
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in k8s.glob("*.yaml") if p.name != "kustomization.yaml")
    if sorted(listed) != on_disk:
        problem(f"kustomization.yaml lists {sorted(listed)}, the folder has {on_disk}")
    validate = shutil.which("kubernetes-validate")
    if validate is None:
        problem("kubernetes-validate not found (PyPI package, see scripts/requirements-test.txt)")
    else:
        done = subprocess.run(
            [validate, "--strict", "--quiet", *on_disk], cwd=k8s, capture_output=True, text=True
        )
        if done.returncode != 0:
            problem(f"kubernetes-validate:\n{done.stdout}{done.stderr}")
    adapter = (k8s / "prometheus-adapter.yaml").read_text()
    check_series("prometheus-adapter.yaml", adapter, known)
    hpa = yaml.safe_load((k8s / "hpa.yaml").read_text())
    served = [m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    for name in served:
        if f'as: "{name}"' not in adapter:
            problem(f"hpa.yaml scales on `{name}`, which prometheus-adapter.yaml does not serve")

    deployment = yaml.safe_load((k8s / "deployment.yaml").read_text())
    config_map = yaml.safe_load((k8s / "configmap.yaml").read_text())
    config = tomllib.loads(config_map["data"]["sluice.toml"])
    grace = seconds(config.get("dispatch", {}).get("shutdown_grace", "20s"))
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pre_stop_s = float(pre_stop[1]) if pre_stop[0] == "sleep" else 0.0
    if pod["terminationGracePeriodSeconds"] < pre_stop_s + grace:
        problem(
            f"deployment.yaml: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']}"
            f" < preStop {pre_stop_s:g}s + shutdown_grace {grace:g}s: in-flight attempts get killed"
        )
    security = container["securityContext"]
    if not security.get("readOnlyRootFilesystem") or security.get("allowPrivilegeEscalation"):
        problem("deployment.yaml: the container must run with a read-only root and no escalation")


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not m:
        problem(f"cannot read duration `{text}`")
        return 0.0
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    return float(m.group(1)) * scale


def check_compose() -> None:
    path = ROOT / "docker-compose.yml"
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        done = subprocess.run(
            [docker, "compose", "-f", str(path), "config", "--quiet"], capture_output=True, text=True
        )
        if done.returncode != 0:
            problem(f"docker compose config:\n{done.stderr}")
    compose = yaml.safe_load(path.read_text())
    services = compose.get("services", {})
    for name, service in services.items():
        if "image" not in service and "build" not in service:
            problem(f"compose service {name}: neither image nor build")
        for dep in service.get("depends_on", []):
            if dep not in services:
                problem(f"compose service {name}: depends on unknown service {dep}")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                if not (ROOT / source).exists():
                    problem(f"compose service {name}: mounts {source}, which does not exist")
            elif source not in compose.get("volumes", {}):
                problem(f"compose service {name}: named volume {source} is not declared")
    replicas = [n for n, s in services.items() if s.get("image") == "sluice:latest"]
    if len(replicas) < 2:
        problem(f"compose: expected two Sluice replicas, found {replicas}")
    for name in replicas:
        if not services[name].get("read_only"):
            problem(f"compose service {name}: root filesystem is not read-only")
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for s in job["static_configs"] for t in s["targets"]}
    for name in replicas:
        if f"{name}:8080" not in targets:
            problem(f"prometheus.yml does not scrape compose service {name}")


def main() -> int:
    known = exported_series()
    check_alerts(known)
    check_dashboard(known)
    check_kubernetes(known)
    check_compose()
    if PROBLEMS:
        for p in PROBLEMS:
            print(f"deploy kit: {p}", file=sys.stderr)
        return 1
    print("deploy kit: alert rules, their tests, dashboard, manifests and compose file check out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
