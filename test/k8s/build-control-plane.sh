#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kube-controller-manager from the Go module proxy into
# ${WEIR_K8S_CACHE:-~/.cache/weir/k8s}/<version>/bin, outside the clone, so later runs (and CI's
# fresh clone on the same machine) reuse them. Idempotent: exits at once when all are built.
set -euo pipefail
export GOWORK=off
K8S_VERSION=${K8S_VERSION:-v1.34.12}
STAGING_VERSION=v0${K8S_VERSION#v1}
CACHE=${WEIR_K8S_CACHE:-$HOME/.cache/weir/k8s}/$K8S_VERSION
BIN=$CACHE/bin
want=(etcd kube-apiserver kube-controller-manager)
missing=0
for b in "${want[@]}"; do [ -x "$BIN/$b" ] || missing=1; done
[ "$missing" = 0 ] && exit 0
mkdir -p "$CACHE/src" "$BIN"
exec 9>"$CACHE/.lock"
flock 9
cd "$CACHE/src"
if [ ! -f go.mod ]; then
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  {
    echo "module weirk8sbuild"
    echo "go 1.25.0"
    echo "godebug default=go1.24"
    echo "require k8s.io/kubernetes $K8S_VERSION"
    grep -o 'k8s.io/[a-z0-9-]* => ./staging' "$gomod" | awk '{print $1}' \
      | grep -vE 'sample-cli-plugin|sample-controller' \
      | while read -r m; do echo "replace $m => $m $STAGING_VERSION"; done
  } > go.mod
  cat > tools.go <<'EOT'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
EOT
  GOFLAGS=-mod=mod go mod tidy
fi
ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"
export GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
for b in "${want[@]}"; do
  [ -x "$BIN/$b" ] && continue
  case $b in
    etcd) pkg=go.etcd.io/etcd/server/v3 ;;
    *) pkg=k8s.io/kubernetes/cmd/$b ;;
  esac
  echo "building $b" >&2
  go build -trimpath -ldflags "$ld" -o "$BIN/$b.tmp" "$pkg"
  mv "$BIN/$b.tmp" "$BIN/$b"
done
