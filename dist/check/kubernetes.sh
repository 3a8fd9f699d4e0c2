#!/usr/bin/env bash
# Validates dist/kubernetes/ without a cluster, in two halves:
#  - kubernetes.py (PyYAML): every document parses, and the manifests fit together;
#  - kubernetes-validate (PyPI; it bundles Kubernetes' OpenAPI schemas, so it needs no cluster
#    and no download at run time) in strict mode: every field of the built-in kinds exists and
#    has the right type. The ServiceMonitor is a CRD it has no schema for (a warning);
#    kubernetes.py checks its fields. kubeconform is in neither Debian nor PyPI and fetches its
#    schemas over the network.
set -euo pipefail
cd "$(dirname "$0")/../.."

python3 dist/check/kubernetes.py

venv="${CARGO_TARGET_DIR:-$PWD/target}/kubernetes-validate"
version=1.37.0
if [ ! -x "$venv/bin/kubernetes-validate" ] \
    || [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$version" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    timeout 300 "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$version"
fi
"$venv/bin/kubernetes-validate" --strict --quiet --no-warn --kubernetes-version 1.30.0 dist/kubernetes/*.yaml
"$venv/bin/kubernetes-validate" --strict --quiet --no-warn dist/kubernetes/*.yaml
echo "kubernetes: the built-in kinds validate strictly against the schemas of Kubernetes 1.30 and $version"
