#!/usr/bin/env bash
# Builds the pinned upstream programs (versions.env) from their published Go modules, into a
# cache outside the checkout:
#
#   scripts/upstream/build.sh [component...]      (no argument: all; --list: the names)
#
#   ${MODELRAIL_CACHE:-$HOME/.cache/modelrail}/upstream/
#     bin/<name>           the binaries (CNI plugins in bin/cni/<plugin>, a dir for bin_dir)
#     crds/<name>/         manifests copied from a module, not built (gateway-api: its CRDs)
#     stamps/<component>   version + recipe hash; when it matches, the component prints "cached"
#     work/<wrapper>/      the wrapper Go modules the builds run in
#     gopath/ gocache/     GOPATH, GOMODCACHE and GOCACHE of these builds only
#     logs/<component>.log the go commands' output
#
# Each component is built from a small wrapper module that `require`s the upstream module and
# repeats the `replace` lines it needs (`go install mod/cmd@v` refuses modules with replaces).
# Needs: Go (>= every module's go line, no toolchain download: GOTOOLCHAIN=local), the Go module
# proxy, flock, sha256sum. The script renices itself (UPSTREAM_NICE, default 15).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${_UPSTREAM_NICED:-}" ] && command -v nice >/dev/null 2>&1; then
  export _UPSTREAM_NICED=1
  exec nice -n "${UPSTREAM_NICE:-15}" bash "${BASH_SOURCE[0]}" "$@"
fi

# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE="${MODELRAIL_CACHE:-$HOME/.cache/modelrail}/upstream"
BIN="$CACHE/bin"
STAMPS="$CACHE/stamps"
WORK="$CACHE/work"
LOGS="$CACHE/logs"

export GOPATH="$CACHE/gopath"
export GOMODCACHE="$CACHE/gopath/pkg/mod"
export GOCACHE="$CACHE/gocache"
export GOTOOLCHAIN=local
export GOWORK=off
# -modcacherw: a plain `rm -rf` can clear the cache.
export GOFLAGS="-trimpath -buildvcs=false -modcacherw"
unset GOOS GOARCH GO111MODULE

die() { echo "upstream: error: $*" >&2; exit 1; }

ALL_COMPONENTS=(
  etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
  pulumi pulumi-language-python pulumi-resource-kubernetes
  coredns cni-plugins metrics-server prometheus gateway-api-crds
)

# ---------------------------------------------------------------------------------------------
# Component recipes. Each def_<component> sets, from versions.env only (no network, so that a
# cached run stays offline):
#   WRAPPER  wrapper module directory name under work/ (components may share one)
#   MOD VER  the upstream module and version the wrapper requires
#   TARGETS  "import/path=binary" pairs ("." = a main package of the wrapper itself)
#   REPLACES static replace lines; STAGING: kubernetes' staging replaces, derived from its go.mod
#   TAGS CGO LDFLAGS_FN (function printing the -X stamps; may read the downloaded module)
#   PREP     optional function run in the wrapper dir before building
# ---------------------------------------------------------------------------------------------
reset_def() {
  WRAPPER="" MOD="" VER="" TARGETS=() REPLACES=() STAGING="" TAGS="" CGO=0 LDFLAGS_FN=":" PREP=""
}

def_etcd() {
  WRAPPER=etcd MOD=go.etcd.io/etcd/server/v3 VER=$ETCD_VERSION
  TARGETS=("go.etcd.io/etcd/server/v3=etcd")
  # etcd's go.mod replaces its sibling modules with ../api etc.: take them at the same tag.
  REPLACES=(
    "go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION"
    "go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION"
    "go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION"
    "go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION"
  )
  # The version itself is a constant in go.etcd.io/etcd/api/v3/version; only GitSHA is -X.
  LDFLAGS_FN=ldflags_etcd
}
ldflags_etcd() { echo "-X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION"; }

def_kube() { # $1 = cmd name
  WRAPPER=kubernetes MOD=k8s.io/kubernetes VER=$KUBERNETES_VERSION
  TARGETS=("k8s.io/kubernetes/cmd/$1=$1")
  STAGING=$KUBERNETES_STAGING_VERSION
  # hack/lib/golang.sh: every server binary and kubectl are static; tags of a non-debug build.
  TAGS="selinux,notest,grpcnotrace" CGO=0
  LDFLAGS_FN=ldflags_kube
}
ldflags_kube() {
  # hack/lib/version.sh stamps both version packages; buildDate = the release commit's time.
  local v=${KUBERNETES_VERSION#v} date key val
  date=$(module_time k8s.io/kubernetes "$KUBERNETES_VERSION")
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  for kv in "gitVersion=$KUBERNETES_VERSION" "gitMajor=$major" "gitMinor=$minor" \
            "gitTreeState=clean" "buildDate=$date"; do
    key=${kv%%=*} val=${kv#*=}
    printf -- '-X k8s.io/client-go/pkg/version.%s=%s -X k8s.io/component-base/version.%s=%s ' \
      "$key" "$val" "$key" "$val"
  done
}
def_kube-apiserver() { def_kube kube-apiserver; }
def_kube-controller-manager() { def_kube kube-controller-manager; }
def_kube-scheduler() { def_kube kube-scheduler; }
def_kubelet() { def_kube kubelet; }
def_kube-proxy() { def_kube kube-proxy; }
def_kubectl() { def_kube kubectl; }

def_pulumi() {
  WRAPPER=pulumi MOD=github.com/pulumi/pulumi/pkg/v3 VER=$PULUMI_VERSION
  TARGETS=("github.com/pulumi/pulumi/pkg/v3/cmd/pulumi=pulumi")
  REPLACES=(
    "github.com/pulumi/pulumi/sdk/v3 => github.com/pulumi/pulumi/sdk/v3 $PULUMI_VERSION"
    "github.com/atotto/clipboard => github.com/tgummerer/clipboard v0.0.0-20241001131231-d02d263e614e"
  )
  LDFLAGS_FN=ldflags_pulumi
}
ldflags_pulumi() { echo "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION"; }

def_pulumi-language-python() {
  # Module github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3: untagged upstream,
  # and the module proxy answers 403 for its version list and for pseudo-versions.
  UNAVAILABLE="github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3 is not served by the Go module proxy (403 for every version); Automation API inline programs do not need it"
}

def_pulumi-resource-kubernetes() {
  WRAPPER=pulumi-resource-kubernetes
  MOD=github.com/pulumi/pulumi-kubernetes/provider/v4 VER=$PULUMI_KUBERNETES_PROVIDER_VERSION
  # Upstream's cmd/pulumi-resource-kubernetes embeds generated *-embed.json files that the module
  # zip lacks, so the wrapper has its own main (the same three lines) and generates them.
  TARGETS=(".=pulumi-resource-kubernetes")
  REPLACES=(
    "github.com/pulumi/pulumi-kubernetes/sdk/v4 => github.com/pulumi/pulumi-kubernetes/sdk/v4 $PULUMI_KUBERNETES_SDK_VERSION"
  )
  LDFLAGS_FN=ldflags_pulumi_kubernetes
  PREP=prep_pulumi_kubernetes
}
ldflags_pulumi_kubernetes() {
  echo "-X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$PULUMI_KUBERNETES_RELEASE"
}
prep_pulumi_kubernetes() {
  local dir
  dir=$(module_dir "$MOD" "$VER")/cmd/pulumi-resource-kubernetes
  cat > main.go <<'GO'
// Generated by scripts/upstream/build.sh: upstream cmd/pulumi-resource-kubernetes/main.go.
package main

import (
	_ "embed"

	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/provider"
	"github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version"
)

//go:embed schema-embed.json
var pulumiSchema []byte

//go:embed terraform-mapping-embed.json
var terraformMapping []byte

func main() {
	provider.Serve("kubernetes", version.Version, pulumiSchema, terraformMapping)
}
GO
  # What upstream's generate.go does: schema.json with "version" set, both files compacted.
  mkdir -p gen
  cat > gen/main.go <<'GO'
// Generated by scripts/upstream/build.sh: writes the provider's *-embed.json files.
package main

import (
	"bytes"
	"encoding/json"
	"log"
	"os"
)

func main() {
	src, version := os.Args[1], os.Args[2]
	raw, err := os.ReadFile(src + "/schema.json")
	if err != nil {
		log.Fatal(err)
	}
	var spec map[string]json.RawMessage
	if err := json.Unmarshal(raw, &spec); err != nil {
		log.Fatal(err)
	}
	spec["version"], _ = json.Marshal(version)
	out, err := json.Marshal(spec)
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile("schema-embed.json", out, 0o644); err != nil {
		log.Fatal(err)
	}
	raw, err = os.ReadFile(src + "/terraform-mapping.json")
	if err != nil {
		log.Fatal(err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile("terraform-mapping-embed.json", buf.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
}
GO
  go run ./gen "$dir" "$PULUMI_KUBERNETES_RELEASE"
}

def_coredns() {
  WRAPPER=coredns MOD=github.com/coredns/coredns VER=$COREDNS_VERSION
  TARGETS=("github.com/coredns/coredns=coredns")
  LDFLAGS_FN=ldflags_coredns # CoreVersion is a constant in coremain/version.go
}
ldflags_coredns() { echo "-X github.com/coredns/coredns/coremain.GitCommit=module-$COREDNS_VERSION"; }

def_cni-plugins() {
  WRAPPER=cni-plugins MOD=github.com/containernetworking/plugins VER=$CNI_PLUGINS_VERSION
  local p=github.com/containernetworking/plugins/plugins
  TARGETS=("$p/main/bridge=cni/bridge" "$p/main/loopback=cni/loopback"
           "$p/ipam/host-local=cni/host-local" "$p/meta/portmap=cni/portmap")
  LDFLAGS_FN=ldflags_cni
}
ldflags_cni() {
  echo "-X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$CNI_PLUGINS_VERSION"
}

def_metrics-server() {
  WRAPPER=metrics-server MOD=sigs.k8s.io/metrics-server VER=$METRICS_SERVER_VERSION
  TARGETS=("sigs.k8s.io/metrics-server/cmd/metrics-server=metrics-server")
  LDFLAGS_FN=ldflags_metrics_server
}
ldflags_metrics_server() {
  # Its Makefile stamps $(PKG)/version.* with PKG = k8s.io/client-go/pkg (what --version reads).
  local date
  date=$(module_time sigs.k8s.io/metrics-server "$METRICS_SERVER_VERSION")
  printf -- '-X k8s.io/client-go/pkg/version.%s ' "gitVersion=$METRICS_SERVER_VERSION" \
    "buildDate=$date" "gitTreeState=clean"
}

def_prometheus() {
  WRAPPER=prometheus MOD=github.com/prometheus/prometheus VER=$PROMETHEUS_VERSION
  TARGETS=("github.com/prometheus/prometheus/cmd/prometheus=prometheus")
  # .promu.yml builds with netgo,builtinassets; without builtinassets the web UI is served from
  # ./web/ui/static on disk (absent here), the HTTP API works the same.
  TAGS="netgo"
  LDFLAGS_FN=ldflags_prometheus
}
ldflags_prometheus() {
  local dir date
  dir=$(module_dir github.com/prometheus/prometheus "$PROMETHEUS_VERSION")
  date=$(module_time github.com/prometheus/prometheus "$PROMETHEUS_VERSION")
  printf -- '-X github.com/prometheus/common/version.%s ' "Version=$(cat "$dir/VERSION")" \
    "Revision=module-$PROMETHEUS_VERSION" "Branch=HEAD" "BuildUser=modelrail" "BuildDate=$date"
}

# Components that copy files out of a module instead of building one: def_<component> sets
# MOD VER, OUT (a folder under $CACHE) and FILES_FN (run in a fresh $OUT.tmp, which then
# replaces OUT). files_component, not build_component, runs them.
def_gateway-api-crds() {
  MOD=sigs.k8s.io/gateway-api VER=$GATEWAY_API_VERSION
  OUT="$CACHE/crds/gateway-api" FILES_FN=files_gateway_api_crds
}
files_gateway_api_crds() {
  # The standard channel's CRDs (and its ValidatingAdmissionPolicy, vap_safeupgrades), as
  # upstream's standard-install.yaml bundles them; the experimental channel is left out.
  local dir
  dir=$(module_dir "$MOD" "$VER")/config/crd/standard
  [ -d "$dir" ] || die "$MOD@$VER has no config/crd/standard"
  echo "+ cp $dir/*.yaml $PWD/"
  cp "$dir"/*.yaml .
  chmod 0644 ./*.yaml
  echo "$MOD $VER channel=standard" > SOURCE
}

# ---------------------------------------------------------------------------------------------
# Shared machinery.
# ---------------------------------------------------------------------------------------------
module_json() {
  local out
  out=$(go mod download -json "$1@$2" 2>&1) || { printf '%s\n' "$out" >&2; die "cannot download $1@$2"; }
  printf '%s\n' "$out"
}
module_dir() {
  local d
  d=$(module_json "$1" "$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')
  [ -n "$d" ] || die "cannot download $1@$2"
  echo "$d"
}
module_gomod() { module_json "$1" "$2" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p'; }
module_time() { # the version's commit time (from the proxy's .info), e.g. 2026-02-10T12:53:36Z
  local info
  info=$(module_json "$1" "$2" | sed -n 's/^[[:space:]]*"Info": "\(.*\)",*$/\1/p')
  sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info"
}

# Writes work/$WRAPPER/go.mod (once per wrapper contents) and resolves it.
prepare_wrapper() {
  local dir="$WORK/$WRAPPER" upstream_mod goline gomod r
  mkdir -p "$dir"
  upstream_mod=$(module_gomod "$MOD" "$VER")
  [ -f "$upstream_mod" ] || die "cannot download the go.mod of $MOD@$VER"
  goline=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$upstream_mod")
  gomod="module modelrail.local/upstream/$WRAPPER

go ${goline:-1.24}
"
  # The main module's go and godebug lines set the binary's GODEBUG defaults: keep upstream's.
  gomod+="$(grep '^godebug ' "$upstream_mod" || true)
"
  for r in "${REPLACES[@]}"; do gomod+="replace $r
"; done
  if [ -n "$STAGING" ]; then
    # One replace per staging module that kubernetes' go.mod requires at v0.0.0.
    while read -r m; do
      gomod+="replace $m => $m $STAGING
"
    done < <(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r&&$2=="v0.0.0"{print $1}' "$upstream_mod")
  fi
  if [ ! -f "$dir/go.mod.in" ] || [ "$(cat "$dir/go.mod.in")" != "$gomod" ] \
     || ! grep -q "^require $MOD $VER\$\|^[[:space:]]$MOD $VER\$" "$dir/go.mod" 2>/dev/null; then
    printf '%s' "$gomod" > "$dir/go.mod.in"
    printf '%s' "$gomod" > "$dir/go.mod"
    rm -f "$dir/go.sum"
    (cd "$dir" && go get "$MOD@$VER")
  fi
}

recipe_hash() {
  {
    declare -p WRAPPER MOD VER TARGETS REPLACES STAGING TAGS CGO LDFLAGS_FN PREP
    declare -f "def_$1" reset_def prepare_wrapper build_component module_json module_dir \
      module_gomod module_time
    [ "$LDFLAGS_FN" = ":" ] || declare -f "$LDFLAGS_FN"
    [ -z "$PREP" ] || declare -f "$PREP"
    case "$1" in kube-*|kubelet|kubectl) declare -f def_kube ;; esac
    echo "GOFLAGS=$GOFLAGS"
    go env GOVERSION GOOS GOARCH
  } | sha256sum | cut -c1-16
}

# Sets RESULT to built|cached; returns non-zero (with the reason on stderr) on failure.
build_component() {
  local c=$1 stamp="$STAMPS/$1" hash want t log ldflags t_pkg bin out
  reset_def
  UNAVAILABLE=""
  "def_$c"
  if [ -n "$UNAVAILABLE" ]; then
    RESULT=unavailable
    if [ "$EXPLICIT" = 1 ]; then echo "upstream: $c: cannot be built: $UNAVAILABLE" >&2; return 1; fi
    echo "upstream: $c: skipped: $UNAVAILABLE" >&2
    return 0
  fi
  hash=$(recipe_hash "$c")
  want="version=$VER recipe=$hash"
  local have_all=1
  for t in "${TARGETS[@]}"; do [ -x "$BIN/${t#*=}" ] || have_all=0; done
  if [ "$have_all" = 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "upstream: $c $VER: cached"
    RESULT=cached
    return 0
  fi
  echo "upstream: $c $VER: building (log: $LOGS/$c.log)"
  log="$LOGS/$c.log"
  : > "$log"
  local start=$SECONDS rc=0
  # set -e is ignored inside a subshell whose status is tested (`( ... ) || x`): run it plain.
  set +e
  (
    set -euo pipefail
    exec >>"$log" 2>&1
    prepare_wrapper
    cd "$WORK/$WRAPPER"
    [ -z "$PREP" ] || "$PREP"
    ldflags="-s -w $("$LDFLAGS_FN")"
    for t in "${TARGETS[@]}"; do
      t_pkg=${t%%=*} bin=${t#*=}
      out="$BIN/$bin"
      mkdir -p "$(dirname "$out")"
      echo "+ CGO_ENABLED=$CGO go build -mod=mod -tags '$TAGS' -ldflags '$ldflags' -o $out $t_pkg"
      CGO_ENABLED=$CGO go build -mod=mod ${TAGS:+-tags "$TAGS"} -ldflags "$ldflags" \
        -o "$out.tmp" "$t_pkg"
      mv -f "$out.tmp" "$out"
    done
  )
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "upstream: $c $VER: FAILED after $((SECONDS - start))s; last lines of $log:" >&2
    tail -n 30 "$log" | sed 's/^/    /' >&2
    return 1
  fi
  echo "$want" > "$stamp"
  local sizes=""
  for t in "${TARGETS[@]}"; do
    sizes+=" ${t#*=}=$(du -h "$BIN/${t#*=}" | cut -f1)"
  done
  echo "upstream: $c $VER: built in $((SECONDS - start))s ->$sizes"
  RESULT=built
}

# Sets RESULT to fetched|cached, like build_component, for a def_ that sets FILES_FN.
files_component() {
  local c=$1 stamp="$STAMPS/$1" hash want log rc=0 start=$SECONDS
  reset_def
  OUT="" FILES_FN=""
  "def_$c"
  hash=$({
    declare -p MOD VER OUT FILES_FN
    declare -f "def_$c" "$FILES_FN" files_component module_json module_dir
  } | sha256sum | cut -c1-16)
  want="version=$VER recipe=$hash"
  if [ -d "$OUT" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "upstream: $c $VER: cached"
    RESULT=cached
    return 0
  fi
  echo "upstream: $c $VER: fetching (log: $LOGS/$c.log)"
  log="$LOGS/$c.log"
  : > "$log"
  rm -rf "$OUT.tmp"
  mkdir -p "$OUT.tmp"
  set +e
  (
    set -euo pipefail
    exec >>"$log" 2>&1
    cd "$OUT.tmp"
    "$FILES_FN"
  )
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    rm -rf "$OUT.tmp"
    echo "upstream: $c $VER: FAILED after $((SECONDS - start))s; last lines of $log:" >&2
    tail -n 30 "$log" | sed 's/^/    /' >&2
    return 1
  fi
  rm -rf "$OUT"
  mv "$OUT.tmp" "$OUT"
  echo "$want" > "$stamp"
  echo "upstream: $c $VER: fetched in $((SECONDS - start))s -> $OUT ($(find "$OUT" -name '*.yaml' | wc -l) files)"
  RESULT=fetched
}

main() {
  local comps=() c failed=() ok=()
  if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
  fi
  if [ "${1:-}" = "--list" ]; then printf '%s\n' "${ALL_COMPONENTS[@]}"; exit 0; fi
  # Named explicitly, a component that cannot be built is a failure; in "all" it is skipped.
  if [ $# -eq 0 ]; then comps=("${ALL_COMPONENTS[@]}") EXPLICIT=0; else comps=("$@") EXPLICIT=1; fi
  for c in "${comps[@]}"; do
    declare -F "def_$c" >/dev/null || die "unknown component '$c' (known: ${ALL_COMPONENTS[*]})"
  done
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"  # the machine's Go, where its installer puts it
  fi
  command -v go >/dev/null || die "go not found on PATH (Go >= 1.24 builds the cluster's programs)"
  command -v flock >/dev/null || die "flock not found (util-linux)"
  mkdir -p "$BIN" "$STAMPS" "$WORK" "$LOGS" "$GOCACHE" "$GOMODCACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  local total=$SECONDS
  for c in "${comps[@]}"; do
    RESULT=""
    local run=build_component
    if (reset_def; FILES_FN=""; "def_$c"; [ -n "$FILES_FN" ]); then run=files_component; fi
    if "$run" "$c"; then ok+=("$c:$RESULT"); else failed+=("$c"); fi
  done
  echo "upstream: done in $((SECONDS - total))s; binaries in $BIN"
  if [ ${#failed[@]} -gt 0 ]; then
    die "failed: ${failed[*]}"
  fi
}

main "$@"
