"""What deploy/check.sh checks beyond schemas: the rules of wxmp's deployment files.

    python checks.py dockerfile REPO
    python checks.py compose REPO
    python checks.py manifests REPO OVERLAY RENDERED.yaml

Each check prints one line, `ok` or `FAIL`; the exit status is the number of failures (capped).
Runs offline, with PyYAML and compose-spec from deploy/check/requirements.txt.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

FAILURES = 0

# The binaries the image must carry, and what each one serves (ARCHITECTURE.md).
SERVICES = {
    # name: (binary, port, protocol)
    "gateway": ("wxmp-gateway", 8080, "http"),
    "auth": ("wxmp-auth", 50051, "grpc"),
    "user": ("wxmp-user", 50052, "grpc"),
    "pay": ("wxmp-pay", 50053, "grpc"),
}
SANDBOX = ("wxmp-sandbox", 9000, "http")
METRICS_PORT = 9100
# Who may call whom over gRPC (NetworkPolicy): callee -> callers.
GRPC_CALLERS = {"auth": {"gateway", "user", "pay"}, "user": {"gateway", "auth"}, "pay": {"gateway"}}
# The variables each service requires (no default in ARCHITECTURE.md), and its secret ones.
REQUIRED_ENV = {
    "gateway": {"WXMP_INTERNAL_TOKEN"},
    "auth": {"WXMP_INTERNAL_TOKEN", "WXMP_APPS"},
    "user": {"WXMP_INTERNAL_TOKEN", "USER_DATABASE_URL"},
    "pay": {"WXMP_INTERNAL_TOKEN", "PAY_DATABASE_URL", "PAY_NOTIFY_URL", "WXMP_PAY_MCH_ID", "WXMP_PAY_KEY"},
}
SECRET_KEYS = {
    "WXMP_APPS", "WXMP_PAY_MCH_ID", "WXMP_PAY_KEY", "WXMP_PAY_V3_KEY", "WXMP_INTERNAL_TOKEN",
    "USER_DATABASE_URL", "PAY_DATABASE_URL", "AUTH_REDIS_URL",
    "GATEWAY_PUSH_APPS", "PAY_XPAY_APP_KEY", "PAY_XPAY_SANDBOX_APP_KEY",
}
WECHAT_API = "https://api.weixin.qq.com"
WECHAT_PAY = "https://api.mch.weixin.qq.com"


def check(ok: bool, what: str, detail: str = "") -> bool:
    global FAILURES
    if ok:
        print(f"  ok    {what}")
    else:
        FAILURES += 1
        print(f"  FAIL  {what}" + (f": {detail}" if detail else ""))
    return ok


def sandbox_dev_values(repo: Path) -> dict[str, str]:
    """The sandbox's built-in dev app and merchant, read from its source."""
    src = (repo / "crates/sandbox/src/lib.rs").read_text()
    values = {}
    for const in ("DEV_APP_ID", "DEV_APP_SECRET", "DEV_MCH_ID", "DEV_PAY_KEY"):
        m = re.search(rf'pub const {const}: &str = "([^"]*)";', src)
        if not m:
            raise SystemExit(f"crates/sandbox/src/lib.rs: constant {const} not found")
        values[const] = m.group(1)
    def const_in(path: str, name: str) -> str:
        m = re.search(rf'pub const {name}: &str = "([^"]*)";', (repo / path).read_text())
        if not m:
            raise SystemExit(f"{path}: constant {name} not found")
        return m.group(1)
    push_token = const_in("crates/sandbox/src/shipping.rs", "DEV_PUSH_TOKEN")
    push_key = const_in("crates/sandbox/src/shipping.rs", "DEV_PUSH_AES_KEY")
    keys = (repo / "crates/sandbox/src/v3/keys.rs").read_text()
    m = re.search(r'pub const APIV3_KEY: &str = "([^"]*)";', keys)
    if not m:
        raise SystemExit("crates/sandbox/src/v3/keys.rs: constant APIV3_KEY not found")
    return {
        "WXMP_APPS": f"{values['DEV_APP_ID']}:{values['DEV_APP_SECRET']}",
        "WXMP_PAY_MCH_ID": values["DEV_MCH_ID"],
        "WXMP_PAY_KEY": values["DEV_PAY_KEY"],
        "WXMP_PAY_V3_KEY": m.group(1),
        "GATEWAY_PUSH_APPS": f"{values['DEV_APP_ID']}|{push_token}|{push_key}|safe",
        "PAY_XPAY_APP_KEY": const_in("crates/sandbox/src/xpay.rs", "DEV_XPAY_APP_KEY"),
        "PAY_XPAY_SANDBOX_APP_KEY": const_in("crates/sandbox/src/xpay.rs", "DEV_XPAY_SANDBOX_APP_KEY"),
    }


def workspace_binaries(repo: Path) -> set[str]:
    """Every binary the image ships: explicit [[bin]]s and src/main.rs of the workspace's
    members, except the developer tools under bench/ (the load generator)."""
    root = tomllib.loads((repo / "Cargo.toml").read_text())
    bins = set()
    for member in root["workspace"].get("default-members", root["workspace"]["members"]):
        if member.startswith("bench/"):
            continue
        manifest = tomllib.loads((repo / member / "Cargo.toml").read_text())
        explicit = manifest.get("bin", [])
        bins.update(b["name"] for b in explicit)
        paths = {b.get("path", "src/main.rs") for b in explicit}
        if (repo / member / "src/main.rs").exists() and "src/main.rs" not in paths:
            bins.add(manifest["package"]["name"])
        bins.update(p.stem for p in (repo / member / "src/bin").glob("*.rs"))
    return bins


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile(repo: Path) -> None:
    text = (repo / "deploy/Dockerfile").read_text()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines()]
    instrs = [l for l in lines if l and not l.startswith("#")]
    froms = [l for l in instrs if l.upper().startswith("FROM ")]
    check(len(froms) >= 2, "multi-stage: at least two FROM stages", f"{len(froms)} found")
    check(all(re.search(r"\bAS\s+\w+", f, re.I) for f in froms), "every stage is named (FROM ... AS name)")
    check(bool(froms) and "rust:" in froms[0], "the first stage builds with the rust image", froms[0] if froms else "")
    final = froms[-1] if froms else ""
    check(re.search(r"debian:\S*-slim|distroless/cc", final) is not None,
          "the runtime stage is debian-slim or distroless/cc", final)
    final_stage = instrs[instrs.index(final):] if final else []
    users = [l.split(None, 1)[1] for l in final_stage if l.upper().startswith("USER ")]
    uid = users[-1].split(":")[0] if users else ""
    check(uid.isdigit() and int(uid) != 0, "the runtime stage ends as a numeric non-root USER", users[-1] if users else "no USER")
    check("ca-certificates" in " ".join(final_stage), "the runtime stage installs ca-certificates (HTTPS to WeChat)")
    build = " ".join(l for l in instrs if "cargo build" in l)
    check(all(f in build for f in ("--release", "--locked", "--bins")), "cargo build --release --locked --bins", build[:120])
    check(build.count("--mount=type=cache") >= 2, "the cargo registry and target directories are cache mounts")
    binaries = workspace_binaries(repo)
    installed = set(re.findall(r"target/release/([\w-]+)", text))
    check(installed == binaries, "the image carries exactly the workspace's binaries",
          f"Dockerfile {sorted(installed)} vs workspace {sorted(binaries)}")
    check(any(re.match(r"COPY --from=\w+ \S+ /usr/local/bin/?$", l) for l in final_stage),
          "the binaries land in /usr/local/bin")
    secretish = [l for l in instrs if re.match(r"(ENV|ARG)\s", l, re.I)
                 and re.search(r"(SECRET|PASSWORD|TOKEN|_KEY\b|PAY_KEY|APPS)\s*=", l, re.I)]
    check(not secretish, "no secret is set with ENV or ARG", "; ".join(secretish))
    ignore = (repo / ".dockerignore").read_text().split()
    check(all(any(i.strip("/") == want for i in ignore) for want in ("target", "data", ".git")),
          ".dockerignore leaves out target/, data/ and .git")


# ---------------------------------------------------------------------------------------------
# docker-compose.yml

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value):
    """Compose's interpolation with an empty environment: defaults apply, `$$` is `$`."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(0) == "$$":
            return "$"
        if m.group(2) and m.group(2).endswith("?"):
            raise ValueError(f"{m.group(0)} requires a variable to be set")
        if m.group(2):  # ${VAR:-default} or ${VAR-default}
            return m.group(3) or ""
        return ""  # ${VAR} or $VAR, unset

    return _VAR.sub(one, value)


def env_map(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def compose(repo: Path) -> None:
    import compose_spec

    raw = (repo / "docker-compose.yml").read_text()
    try:
        doc = interpolate(yaml.safe_load(raw))  # PyYAML resolves anchors and `<<` merges
    except (yaml.YAMLError, ValueError) as e:
        check(False, "docker-compose.yml parses", str(e))
        return
    try:
        parsed = compose_spec.PyCompose.from_json(json.dumps(doc))
        check(True, f"the Compose Specification accepts it (services: {', '.join(parsed.service_names())})")
    except ValueError as e:
        check(False, "the Compose Specification accepts it", str(e))
    services: dict = doc.get("services") or {}
    wanted = {"postgres", "redis", "sandbox", *SERVICES}
    check(wanted <= set(services), "services: postgres, redis, sandbox, gateway, auth, user, pay",
          f"missing {sorted(wanted - set(services))}")
    one_shot = {n for n, s in services.items() if s.get("profiles") and str(s.get("restart", "no")) == "no"}
    for name, svc in services.items():
        check("image" in svc or "build" in svc, f"{name}: has an image or a build")
        hc = svc.get("healthcheck") or {}
        if name in one_shot:
            check(not hc, f"{name}: one-shot task (profile {svc['profiles']}), no healthcheck needed")
        else:
            check(bool(hc.get("test")) and not hc.get("disable"), f"{name}: has a healthcheck")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {} for d in deps}
        for dep, spec in deps.items():
            check(dep in services, f"{name}: depends_on {dep} exists")
            check((spec or {}).get("condition") == "service_healthy",
                  f"{name}: waits for {dep} to be healthy (condition: service_healthy)")
    # No cycle in depends_on (compose refuses to start one).
    seen: dict[str, int] = {}

    def visit(n, path):
        if seen.get(n) == 1:
            raise ValueError(" -> ".join(path + [n]))
        if seen.get(n) == 2 or n not in services:
            return
        seen[n] = 1
        for d in services[n].get("depends_on") or {}:
            visit(d, path + [n])
        seen[n] = 2

    try:
        for n in services:
            visit(n, [])
        check(True, "depends_on has no cycle")
    except ValueError as e:
        check(False, "depends_on has no cycle", str(e))
    published = {n: s.get("ports") for n, s in services.items() if s.get("ports")}
    check(set(published) == {"gateway", "sandbox"}, "only the gateway and the sandbox publish ports", str(published))
    for name, want in (("gateway", 8080), ("sandbox", 9000)):
        ports = [str(p) for p in published.get(name) or []]
        check(any(p.endswith(f":{want}") for p in ports), f"{name} publishes container port {want}", str(ports))

    dev = sandbox_dev_values(repo)
    for name, (binary, port, _) in {**SERVICES, "sandbox": SANDBOX}.items():
        svc = services.get(name) or {}
        env = env_map(svc)
        cmd = svc.get("command") or []
        check(cmd[:1] == [binary], f"{name}: runs {binary}", str(cmd))
        check(env.get("WXMP_LOG_FORMAT") == "json", f"{name}: WXMP_LOG_FORMAT=json")
        check(env.get("WXMP_METRICS_ADDR") == f"0.0.0.0:{METRICS_PORT}", f"{name}: metrics on 0.0.0.0:{METRICS_PORT}")
        missing = REQUIRED_ENV.get(name, set()) - {k for k, v in env.items() if v}
        check(not missing, f"{name}: sets its required variables", f"missing {sorted(missing)}")
        for key, value in dev.items():
            if key in env:
                check(env[key] == value, f"{name}: {key} is the sandbox's dev value", f"{env[key]!r} != {value!r}")
        # Every URL to a sibling names an existing service and the port it serves.
        for key, value in env.items():
            m = re.match(r"^(?:https?|postgres|redis)://(?:[^@/]*@)?([\w.-]+):(\d+)", value)
            if m and m.group(1) not in ("127.0.0.1", "0.0.0.0", "localhost"):
                host, p = m.group(1), int(m.group(2))
                known = {**{n: v[1] for n, v in SERVICES.items()}, "sandbox": 9000, "postgres": 5432, "redis": 6379}
                check(known.get(host) == p, f"{name}: {key} points at {host}:{p}", f"expected {host}:{known.get(host)}")
    for name, key, db in (("user", "USER_DATABASE_URL", "users"), ("pay", "PAY_DATABASE_URL", "pay")):
        url = env_map(services.get(name) or {}).get(key, "")
        check(url.endswith(f"/{db}"), f"{name}: uses its own database `{db}`", url)
    sql = (repo / "deploy/compose/initdb/01-databases.sql").read_text()
    check(all(re.search(rf"CREATE DATABASE {db}\b", sql) for db in ("users", "pay")),
          "the init script creates the `users` and `pay` databases")
    mounted = any("deploy/compose/initdb" in str(v) and "docker-entrypoint-initdb.d" in str(v)
                  for v in (services.get("postgres") or {}).get("volumes") or [])
    check(mounted, "postgres mounts the init script into /docker-entrypoint-initdb.d")
    check(str((services.get("postgres") or {}).get("image", "")).startswith("postgres:16"), "PostgreSQL 16")
    check(str((services.get("redis") or {}).get("image", "")).startswith("redis:7"), "Redis 7")


# ---------------------------------------------------------------------------------------------
# Kubernetes


def pod_spec(obj: dict) -> dict | None:
    if obj["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return obj["spec"]["template"]["spec"]
    return None


def pod_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"].get("labels", {})


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def manifests(repo: Path, overlay: str, rendered: Path) -> None:
    objs = [o for o in yaml.safe_load_all(rendered.read_text()) if o]
    by_kind: dict[str, dict[str, dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    deployments = by_kind.get("Deployment", {})
    workloads = {**deployments, **by_kind.get("Job", {}), **by_kind.get("StatefulSet", {})}
    configmaps = by_kind.get("ConfigMap", {})
    secrets = by_kind.get("Secret", {})
    namespaces = by_kind.get("Namespace", {})
    print(f"  ({len(objs)} objects: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(by_kind.items())) + ")")

    ns = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    check(len(ns) == 1 and None not in ns, "every object is in one namespace", str(ns))
    check(set(namespaces) == ns, "the namespace is part of the overlay", f"{sorted(namespaces)} vs {ns}")
    for n in namespaces.values():
        check(n["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted",
              f"namespace {n['metadata']['name']}: enforces the `restricted` Pod Security Standard")

    template_keys = set(yaml.safe_load((repo / "deploy/k8s/base/secret.template.yaml").read_text())["stringData"])
    config = {}
    for name, cm in configmaps.items():
        if name.startswith("wxmp-config"):
            config = cm.get("data", {})
    check(bool(config), "the ConfigMap wxmp-config exists")
    check(config.get("WXMP_LOG_FORMAT") == "json", "wxmp-config: WXMP_LOG_FORMAT=json")
    check(config.get("WXMP_METRICS_ADDR") == f"0.0.0.0:{METRICS_PORT}", f"wxmp-config: metrics on 0.0.0.0:{METRICS_PORT}")
    leaked = SECRET_KEYS & set(config) - {"WXMP_PAY_MCH_ID"}
    check(not leaked, "no secret in a ConfigMap", str(sorted(leaked)))

    # Every workload: security, resources, references.
    for name, w in workloads.items():
        spec = pod_spec(w)
        psc = spec.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True and int(psc.get("runAsUser", 0)) > 0,
              f"{name}: runs as a non-root uid")
        check(spec.get("automountServiceAccountToken") is False, f"{name}: no service account token mounted")
        for c in spec["containers"] + spec.get("initContainers", []):
            where = f"{name}/{c['name']}"
            sc = c.get("securityContext", {})
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            check(seccomp == "RuntimeDefault", f"{where}: seccompProfile RuntimeDefault")
            check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
            check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drops ALL capabilities")
            res = c.get("resources", {})
            check(all(res.get(k, {}).get(r) for k in ("requests", "limits") for r in ("cpu", "memory")),
                  f"{where}: cpu and memory requests and limits")
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    check(ref["configMapRef"]["name"] in configmaps, f"{where}: ConfigMap {ref['configMapRef']['name']} exists")
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if not ref:
                    continue
                if ref["name"] in secrets:
                    data = {**secrets[ref["name"]].get("data", {}), **secrets[ref["name"]].get("stringData", {})}
                    check(ref["key"] in data, f"{where}: Secret {ref['name']} has key {ref['key']}")
                elif ref["name"] == "wxmp-secrets" and not secrets:
                    check(ref["key"] in template_keys,
                          f"{where}: external Secret key {ref['key']} is in secret.template.yaml")
                else:
                    check(False, f"{where}: Secret {ref['name']} exists")
        for v in spec.get("volumes", []):
            if "configMap" in v:
                check(v["configMap"]["name"] in configmaps, f"{name}: volume ConfigMap {v['configMap']['name']} exists")

    # The four services: binary, ports, probes, metrics, env.
    for svc, (binary, port, proto) in SERVICES.items():
        d = deployments.get(f"wxmp-{svc}")
        if not check(d is not None, f"Deployment wxmp-{svc} exists"):
            continue
        c = pod_spec(d)["containers"][0]
        check(c.get("command", [None])[0] == binary, f"wxmp-{svc}: runs {binary}")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        check(ports.get("metrics") == METRICS_PORT, f"wxmp-{svc}: exposes port `metrics` ({METRICS_PORT})")
        ann = d["spec"]["template"]["metadata"].get("annotations", {})
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(METRICS_PORT),
              f"wxmp-{svc}: prometheus scrape annotations")
        if proto == "grpc":
            check(ports.get("grpc") == port, f"wxmp-{svc}: gRPC port {port}")
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                check((c.get(probe) or {}).get("grpc", {}).get("port") == port, f"wxmp-{svc}: {probe} is grpc on {port}")
        else:
            check(ports.get("http") == port, f"wxmp-{svc}: HTTP port {port}")
            check((c.get("livenessProbe") or {}).get("httpGet", {}).get("path") == "/healthz", f"wxmp-{svc}: liveness GET /healthz")
            check((c.get("readinessProbe") or {}).get("httpGet", {}).get("path") == "/readyz", f"wxmp-{svc}: readiness GET /readyz")
        env_names = {e["name"] for e in c.get("env", [])} | set(config)
        missing = REQUIRED_ENV[svc] - env_names
        check(not missing, f"wxmp-{svc}: gets its required variables", f"missing {sorted(missing)}")
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", {}).values() if selects(p["spec"]["selector"]["matchLabels"], pod_labels(d))]
        check(len(pdbs) == 1, f"wxmp-{svc}: has a PodDisruptionBudget")

    # Services select pods and target their named ports.
    for name, s in by_kind.get("Service", {}).items():
        check(s["spec"].get("type", "ClusterIP") == "ClusterIP", f"Service {name}: ClusterIP")
        targets = [d for d in [*deployments.values(), *by_kind.get("StatefulSet", {}).values()]
                   if selects(s["spec"]["selector"], pod_labels(d))]
        if check(len(targets) == 1, f"Service {name}: selects one Deployment's (or StatefulSet's) pods", str(len(targets))):
            cports = {p.get("name"): p["containerPort"] for c in pod_spec(targets[0])["containers"] for p in c.get("ports", [])}
            for p in s["spec"]["ports"]:
                t = p.get("targetPort", p["port"])
                check(t in cports or t in cports.values(), f"Service {name}: targetPort {t} exists on the pods")
    # Internal URLs in the config name a Service and one of its ports.
    svc_ports = {n: {p["port"] for p in s["spec"]["ports"]} for n, s in by_kind.get("Service", {}).items()}
    for key, value in sorted(config.items()):
        m = re.match(r"^https?://([\w-]+):(\d+)", value)
        if m and "." not in m.group(1):
            check(int(m.group(2)) in svc_ports.get(m.group(1), set()), f"wxmp-config: {key} ({value}) is a Service port")

    # Autoscaling: the HPA owns the gateway's replica count.
    hpa = by_kind.get("HorizontalPodAutoscaler", {}).get("wxmp-gateway")
    if check(hpa is not None, "HorizontalPodAutoscaler wxmp-gateway exists"):
        ref = hpa["spec"]["scaleTargetRef"]
        check(ref["kind"] == "Deployment" and ref["name"] in deployments, "the HPA scales the gateway Deployment")
        check("replicas" not in deployments.get("wxmp-gateway", {}).get("spec", {}), "the gateway Deployment leaves replicas to the HPA")

    # NetworkPolicies: default deny, then exactly the allowed paths.
    policies = list(by_kind.get("NetworkPolicy", {}).values())
    check(any(p["spec"].get("podSelector") == {} and "Ingress" in p["spec"].get("policyTypes", []) and not p["spec"].get("ingress")
              for p in policies), "NetworkPolicy: default deny of all ingress")
    labels_of = {n: pod_labels(d) for n, d in workloads.items()}

    def allowed(target: str) -> list[tuple[dict, dict]]:
        """(rule, port) pairs that admit traffic to `target`'s pods."""
        out = []
        for p in policies:
            if selects(p["spec"].get("podSelector", {}).get("matchLabels", {}), labels_of[target]):
                for rule in p["spec"].get("ingress", []) or []:
                    for port in rule.get("ports", []) or [{}]:
                        out.append((rule, port))
        return out

    for target in workloads:
        for rule, port in allowed(target):
            srcs = rule.get("from")
            p = port.get("port")
            short = target.removeprefix("wxmp-")
            if srcs is None:
                check(short == "gateway" and p == 8080, f"{target}: reachable from anywhere only if gateway:8080", f"port {p}")
                continue
            for src in srcs:
                if "namespaceSelector" in src:
                    check(src["namespaceSelector"].get("matchLabels") == {"kubernetes.io/metadata.name": "monitoring"}
                          and p == METRICS_PORT and "podSelector" not in src,
                          f"{target}: other namespaces reach only metrics, and only from `monitoring`", str(src))
                elif "podSelector" in src:
                    caller = src["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name", "?").removeprefix("wxmp-")
                    if short in GRPC_CALLERS:
                        check(caller in GRPC_CALLERS[short] and p == SERVICES[short][1],
                              f"{target}: {caller} may call it on {p}")
                else:
                    check(False, f"{target}: ingress source is a pod or namespace selector", str(src))
    for callee, callers in GRPC_CALLERS.items():
        got = {src["podSelector"]["matchLabels"]["app.kubernetes.io/name"].removeprefix("wxmp-")
               for rule, _ in allowed(f"wxmp-{callee}") for src in rule.get("from") or [] if "podSelector" in src}
        check(got == callers, f"wxmp-{callee}: callers allowed are exactly {sorted(callers)}", str(sorted(got)))
    check(any(src.get("namespaceSelector") for r, _ in allowed("wxmp-gateway") for src in r.get("from") or []),
          "metrics are reachable from the monitoring namespace")

    job = by_kind.get("Job", {}).get("wxmp-migrate")
    if check(job is not None, "the migration Job wxmp-migrate exists"):
        check(pod_spec(job)["containers"][0]["command"] == ["wxmp", "migrate"], "the Job runs `wxmp migrate`")

    images = {c["image"] for w in workloads.values() for c in pod_spec(w)["containers"] if c["name"] in (*SERVICES, "migrate", "sandbox")}
    dev = sandbox_dev_values(repo)
    if overlay == "prod":
        check(not secrets, "prod: no Secret in the manifests (created outside git)", str(sorted(secrets)))
        for img in images:
            tag = img.rsplit(":", 1)[1] if ":" in img.split("/")[-1] else ""
            check("@sha256:" in img or (tag and tag != "latest"), f"prod: image pinned ({img})")
        for name, d in deployments.items():
            if "replicas" in d["spec"]:
                check(d["spec"]["replicas"] >= 2, f"prod: {name} runs at least 2 replicas", str(d["spec"]["replicas"]))
        check(hpa is not None and hpa["spec"]["minReplicas"] >= 2, "prod: the gateway autoscales from at least 2")
        check(config.get("WXMP_WECHAT_API_BASE") == WECHAT_API, f"prod: WeChat API at {WECHAT_API}")
        check(config.get("WXMP_WECHAT_PAY_BASE") == WECHAT_PAY, f"prod: WeChat Pay at {WECHAT_PAY}")
        check(config.get("PAY_NOTIFY_URL", "").startswith("https://"), "prod: PAY_NOTIFY_URL is public HTTPS")
        extra = {n for n in deployments if n.removeprefix("wxmp-") not in SERVICES}
        check(not extra, "prod: no sandbox, PostgreSQL or Redis in the cluster", str(sorted(extra)))
    else:
        check("wxmp-sandbox" in deployments and "wxmp-sandbox" in by_kind.get("Service", {}), "dev: the sandbox Deployment and Service")
        for key in ("WXMP_WECHAT_API_BASE", "WXMP_WECHAT_PAY_BASE"):
            check(config.get(key) == "http://wxmp-sandbox:9000", f"dev: {key} is the sandbox")
        for name, d in deployments.items():
            check(d["spec"].get("replicas", 1) == 1, f"dev: {name} runs 1 replica")
        check(hpa is not None and hpa["spec"]["minReplicas"] == 1, "dev: the gateway runs 1 replica")
        sec = next((s for n, s in secrets.items() if n.startswith("wxmp-secrets")), None)
        if check(sec is not None, "dev: the Secret wxmp-secrets is generated"):
            import base64
            data = {k: base64.b64decode(v).decode() for k, v in sec.get("data", {}).items()}
            check(template_keys <= set(data), "dev: the Secret has every key of secret.template.yaml",
                  f"missing {sorted(template_keys - set(data))}")
            for key, value in dev.items():
                check(data.get(key) == value, f"dev: {key} is the sandbox's dev value", f"{data.get(key)!r}")
        sandbox = deployments.get("wxmp-sandbox")
        if sandbox:
            c = pod_spec(sandbox)["containers"][0]
            check(c["command"] == [SANDBOX[0]], "dev: the sandbox runs wxmp-sandbox")
            check((c.get("readinessProbe") or {}).get("httpGet", {}).get("path") == "/healthz", "dev: the sandbox's probes GET /healthz")
        sql = (repo / "deploy/compose/initdb/01-databases.sql").read_text()
        check((repo / "deploy/k8s/overlays/dev/01-databases.sql").read_text() == sql,
              "dev: the PostgreSQL init script is the compose one")


def secret_template(repo: Path) -> None:
    doc = yaml.safe_load((repo / "deploy/k8s/base/secret.template.yaml").read_text())
    data = doc.get("stringData", {})
    check(set(data) == SECRET_KEYS, "the Secret template has exactly the secret keys",
          f"{sorted(set(data) ^ SECRET_KEYS)}")
    check(all("REPLACE_ME" in v for v in data.values()), "every template value is a REPLACE_ME placeholder")
    kust = yaml.safe_load((repo / "deploy/k8s/base/kustomization.yaml").read_text())
    check("secret.template.yaml" not in kust.get("resources", []), "the template is not a base resource")


def main() -> int:
    what, repo = sys.argv[1], Path(sys.argv[2])
    if what == "dockerfile":
        dockerfile(repo)
    elif what == "compose":
        compose(repo)
    elif what == "manifests":
        manifests(repo, sys.argv[3], Path(sys.argv[4]))
    elif what == "secret-template":
        secret_template(repo)
    else:
        raise SystemExit(f"unknown check {what}")
    return min(FAILURES, 100)


if __name__ == "__main__":
    sys.exit(main())
