#!/usr/bin/env bash
# Builds what the chart and cluster tests need beyond test/k8s's control plane, from the Go
# module proxy, cached outside the clone so that later runs (and CI's fresh clone on the same
# machine) reuse them. Idempotent: exits at once when everything is built.
#   helm                          -> ${WEIR_TOOLS:-~/.cache/weir/bin}/helm-<version>
#   kube-scheduler, kubelet       -> ${WEIR_K8S_CACHE:-~/.cache/weir/k8s}/<k8s version>/bin
#     (in the scratch module of test/k8s/build-control-plane.sh, which this script runs first)
# Usage: build-tools.sh helm | node | all
set -euo pipefail
export GOWORK=off
HELM_VERSION=${HELM_VERSION:-v3.22.0}
K8S_VERSION=${K8S_VERSION:-v1.34.12}
TOOLS=${WEIR_TOOLS:-$HOME/.cache/weir/bin}
what=${1:-all}
here=$(cd "$(dirname "$0")" && pwd)

build_helm() {
  local out=$TOOLS/helm-$HELM_VERSION
  [ -x "$out" ] && return 0
  mkdir -p "$TOOLS"
  exec 8>"$TOOLS/.helm.lock"
  flock 8
  [ -x "$out" ] && return 0
  echo "building helm $HELM_VERSION" >&2
  local tmp
  tmp=$(mktemp -d)
  GOBIN=$tmp CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$tmp/helm" "$out"
  rmdir "$tmp"
}

build_node() {
  bash "$here/../k8s/build-control-plane.sh"
  local cache=${WEIR_K8S_CACHE:-$HOME/.cache/weir/k8s}/$K8S_VERSION
  local bin=$cache/bin
  local want=(kube-scheduler kubelet)
  local missing=0 b
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || missing=1; done
  [ "$missing" = 0 ] && return 0
  exec 9>"$cache/.lock"
  flock 9
  cd "$cache/src"
  if [ ! -f tools_node.go ]; then
    cat > tools_node.go <<'EOT'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOT
    GOFLAGS=-mod=mod go mod tidy
  fi
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"
  export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
  for b in "${want[@]}"; do
    [ -x "$bin/$b" ] && continue
    echo "building $b" >&2
    go build -trimpath -ldflags "$ld" -o "$bin/$b.tmp" "k8s.io/kubernetes/cmd/$b"
    mv "$bin/$b.tmp" "$bin/$b"
  done
}

case $what in
  helm) build_helm ;;
  node) build_node ;;
  all) build_helm; build_node ;;
  *) echo "usage: $0 helm|node|all" >&2; exit 2 ;;
esac
