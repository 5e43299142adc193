package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weir-project/weir/test/internal/harness"
)

// A real single-node Kubernetes: etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler built from the Go module proxy, Debian's containerd,
// runc and CNI plugins (bridge, host-local, loopback), and a kubelet. Pods
// get addresses of a /24 of 198.18.0.0/15 on a bridge of their own. There is
// no kube-proxy and no cluster DNS: the test adds the DNAT rules of the
// Service IPs it uses to an nftables table of its own.
//
// Everything lives under one directory and is torn down when the test ends,
// failed or not: pods and containers, containerd's shims, mounts, network
// namespaces, the bridge, cgroups, the nftables table, and the sysctls the
// kubelet and the bridge plugin change are restored.

const (
	// nodeName is the node's name.
	nodeName = "weir-node"
	// podNet is the pods' /24; .1 is the bridge, the node's address.
	podNet = "198.18.77"
	// serviceNet is the Service range; .1 is the kubernetes Service.
	serviceNet = "198.19.77"
)

// Node is the running cluster.
type Node struct {
	t          testing.TB
	dir        string
	bin        string
	bridge     string
	NodeIP     string
	APIServer  string // https URL
	apiPort    int
	adminToken string
	Kubeconfig string
	Admin      *kubernetes.Clientset
	ctrdSock   string
	cgroupRoot string
	nftTable   string
	ca         *x509.Certificate
	caKey      *ecdsa.PrivateKey
	caFile     string
	procs      []*harness.Process
	sysctls    map[string]string
	netnsBase  []string
	cniBase    map[string]bool
	cniDirNew  bool
	timeline   []string
	start      time.Time
}

// kubeletSysctls are the sysctls that the kubelet (protectKernelDefaults:
// false) and the bridge plugin (isGateway) set; they are saved and restored.
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
}

// requireNodeTools fails under CI, and skips otherwise, when Debian's
// containerd, runc or CNI plugins are missing (make test installs them).
func requireNodeTools(t testing.TB) {
	t.Helper()
	var missing []string
	for _, p := range []string{"containerd", "ctr", "runc", "nft", "ip"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if !fileExists(filepath.Join("/usr/lib/cni", p)) {
			missing = append(missing, "/usr/lib/cni/"+p)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("missing %v: apt-get install containerd runc containernetworking-plugins nftables iproute2 (make test does)", missing)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// StartNode starts the cluster and waits until the node is Ready.
func StartNode(t testing.TB, images []string) *Node {
	t.Helper()
	harness.RequireRoot(t)
	requireNodeTools(t)
	bin := k8sBin(t)
	removeStaleNodes()
	// Short paths: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "weirnode-")
	if err != nil {
		t.Fatal(err)
	}
	n := &Node{
		t: t, dir: dir, bin: bin, start: time.Now(),
		bridge:     fmt.Sprintf("weirk%d", os.Getpid()%100000),
		NodeIP:     podNet + ".1",
		adminToken: randHex(16),
		ctrdSock:   filepath.Join(dir, "containerd.sock"),
		cgroupRoot: fmt.Sprintf("/weirnode%d", os.Getpid()),
		nftTable:   fmt.Sprintf("weirnode%d", os.Getpid()),
		sysctls:    map[string]string{},
	}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.teardown)
	n.netnsBase = listNetns()
	n.cniBase, n.cniDirNew = cniResults(), !fileExists(cniCache)
	var saved strings.Builder
	for _, s := range kubeletSysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil {
			n.sysctls[s] = strings.TrimSpace(string(b))
			fmt.Fprintf(&saved, "%s=%s\n", s, n.sysctls[s])
		}
	}
	// For the next run, should this one be killed before its teardown.
	if err := os.WriteFile(filepath.Join(dir, "sysctls"), []byte(saved.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	n.network()
	n.certs()
	n.controlPlane()
	n.containerd(images)
	n.kubelet()
	n.waitNodeReady(90 * time.Second)
	return n
}

func (n *Node) mark(what string) {
	n.timeline = append(n.timeline, fmt.Sprintf("%6.1fs %s", time.Since(n.start).Seconds(), what))
}

// Timeline is what happened when, from the start of the node.
func (n *Node) Timeline() string { return strings.Join(n.timeline, "\n") }

func (n *Node) run(args ...string) string {
	n.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// bridgeMAC is the bridge's own, locally administered, address.
const bridgeMAC = "02:77:65:69:72:01"

// network makes the bridge with the node's address, and the nftables table
// that stands in for kube-proxy.
func (n *Node) network() {
	// A bridge whose address was not set takes the lowest of its ports'
	// addresses: a pod whose veth's is lower would change the gateway's
	// address under every other pod, whose traffic to the node then goes
	// nowhere until their neighbour entries expire (about 30 s).
	n.run("ip", "link", "add", n.bridge, "address", bridgeMAC, "type", "bridge")
	n.run("ip", "addr", "add", n.NodeIP+"/24", "dev", n.bridge)
	n.run("ip", "link", "set", n.bridge, "up")
	n.nft(fmt.Sprintf(`table ip %[1]s {
  chain pre { type nat hook prerouting priority dstnat; }
  chain out { type nat hook output priority -100; }
  chain post {
    type nat hook postrouting priority srcnat;
    ct status dnat ip saddr %[2]s.0/24 ip daddr %[2]s.0/24 masquerade
  }
}`, n.nftTable, podNet))
	n.mark("bridge " + n.bridge + " " + n.NodeIP)
}

func (n *Node) nft(script string) {
	n.t.Helper()
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.t.Fatalf("nft: %v\n%s\n%s", err, out, script)
	}
}

// DNAT sends ip:port (a Service IP) to the backend to, as kube-proxy would,
// from pods (prerouting) and from the node itself (output).
func (n *Node) DNAT(ip string, port int, to string) {
	n.t.Helper()
	var b strings.Builder
	for _, chain := range []string{"pre", "out"} {
		fmt.Fprintf(&b, "add rule ip %s %s ip daddr %s tcp dport %d dnat to %s\n", n.nftTable, chain, ip, port, to)
	}
	n.nft(b.String())
}

// DNATReplace replaces every DNAT rule with those of rules (ip:port → to).
func (n *Node) DNATReplace(rules map[string]string) {
	n.t.Helper()
	var b strings.Builder
	for _, chain := range []string{"pre", "out"} {
		fmt.Fprintf(&b, "flush chain ip %s %s\n", n.nftTable, chain)
		for from, to := range rules {
			ip, port, _ := strings.Cut(from, ":")
			fmt.Fprintf(&b, "add rule ip %s %s ip daddr %s tcp dport %s dnat to %s\n", n.nftTable, chain, ip, port, to)
		}
	}
	n.nft(b.String())
}

// certs makes a CA, the apiserver's serving certificate and its client
// certificate toward the kubelet.
func (n *Node) certs() {
	n.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		n.t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weir-node-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		n.t.Fatal(err)
	}
	n.ca, _ = x509.ParseCertificate(der)
	n.caKey = key
	n.caFile = n.writePEM("ca.crt", "CERTIFICATE", der)
	n.leaf("apiserver", "kube-apiserver", nil, []net.IP{net.ParseIP(n.NodeIP), net.ParseIP(serviceNet + ".1"), net.IPv4(127, 0, 0, 1)},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
		x509.ExtKeyUsageServerAuth)
	n.leaf("kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil, x509.ExtKeyUsageClientAuth)
	// The service account signing key pair.
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		n.t.Fatal(err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	n.writePEM("sa.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rk))
	n.writePEM("sa.pub", "PUBLIC KEY", pub)
}

func (n *Node) leaf(name, cn string, orgs []string, ips []net.IP, dns []string, usage x509.ExtKeyUsage) {
	n.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		n.t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: ips, DNSNames: dns,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, n.ca, &key.PublicKey, n.caKey)
	if err != nil {
		n.t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		n.t.Fatal(err)
	}
	n.writePEM(name+".crt", "CERTIFICATE", der)
	n.writePEM(name+".key", "EC PRIVATE KEY", kd)
}

func (n *Node) writePEM(name, typ string, der []byte) string {
	n.t.Helper()
	p := filepath.Join(n.dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		n.t.Fatal(err)
	}
	return p
}

func (n *Node) path(name string) string { return filepath.Join(n.dir, name) }

func (n *Node) startProc(name string, argv ...string) *harness.Process {
	p := harness.Start(n.t, name, argv...)
	n.procs = append(n.procs, p)
	return p
}

// kubeconfig writes a kubeconfig with a bearer token.
func (n *Node) kubeconfig(name, token string) string {
	n.t.Helper()
	p := n.path(name + ".kubeconfig")
	data := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: weir
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: weir
  context: {cluster: weir, user: %s}
current-context: weir
`, n.APIServer, n.caFile, name, token, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		n.t.Fatal(err)
	}
	return p
}

// controlPlane starts etcd, the apiserver on the node's address, the
// controller manager and the scheduler.
func (n *Node) controlPlane() {
	t := n.t
	kubeletToken := randHex(16)
	tokens := fmt.Sprintf("%s,admin,admin,system:masters\n%s,system:node:%s,kubelet,system:nodes\n", n.adminToken, kubeletToken, nodeName)
	if err := os.WriteFile(n.path("tokens.csv"), []byte(tokens), 0o600); err != nil {
		t.Fatal(err)
	}
	clientPort, peerPort := harness.FreePort(t), harness.FreePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	n.startProc("etcd", filepath.Join(n.bin, "etcd"),
		"--data-dir", n.path("etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", peerPort),
		"--unsafe-no-fsync", "--log-level", "warn")
	n.apiPort = harness.FreePort(t)
	n.APIServer = fmt.Sprintf("https://%s:%d", n.NodeIP, n.apiPort)
	api := n.startProc("kube-apiserver", filepath.Join(n.bin, "kube-apiserver"),
		"--etcd-servers="+etcdURL,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+n.path("sa.pub"),
		"--service-account-signing-key-file="+n.path("sa.key"),
		"--token-auth-file="+n.path("tokens.csv"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=false",
		"--bind-address="+n.NodeIP, "--advertise-address="+n.NodeIP,
		fmt.Sprintf("--secure-port=%d", n.apiPort),
		"--tls-cert-file="+n.path("apiserver.crt"), "--tls-private-key-file="+n.path("apiserver.key"),
		"--client-ca-file="+n.caFile,
		"--kubelet-client-certificate="+n.path("kubelet-client.crt"),
		"--kubelet-client-key="+n.path("kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--service-cluster-ip-range="+serviceNet+".0/24",
		"--enable-priority-and-fairness=false",
		"--v=0")
	n.waitAPIServer(api, 90*time.Second)
	n.mark("apiserver ready")
	var err error
	if n.Admin, err = kubernetes.NewForConfig(n.restConfig()); err != nil {
		t.Fatal(err)
	}
	n.Kubeconfig = n.kubeconfig("admin", n.adminToken)
	n.kubeconfig("kubelet", kubeletToken)
	n.startProc("kube-controller-manager", filepath.Join(n.bin, "kube-controller-manager"),
		"--kubeconfig="+n.Kubeconfig, "--leader-elect=false",
		"--controllers=serviceaccount-controller,deployment-controller,replicaset-controller,daemonset-controller,statefulset-controller,garbage-collector-controller,namespace-controller,root-ca-certificate-publisher-controller,endpoints-controller,endpointslice-controller,pod-garbage-collector-controller,node-lifecycle-controller,clusterrole-aggregation-controller",
		"--root-ca-file="+n.caFile,
		"--service-account-private-key-file="+n.path("sa.key"),
		"--use-service-account-credentials=false",
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", harness.FreePort(t)),
		"--concurrent-deployment-syncs=2", "--concurrent-replicaset-syncs=2",
		"--node-monitor-grace-period=40s", "--v=0")
	n.startProc("kube-scheduler", filepath.Join(n.bin, "kube-scheduler"),
		"--kubeconfig="+n.Kubeconfig, "--leader-elect=false",
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", harness.FreePort(t)), "--v=0")
}

// restConfig is the admin's client configuration.
func (n *Node) restConfig() *rest.Config {
	return &rest.Config{Host: n.APIServer, BearerToken: n.adminToken, QPS: 100, Burst: 200,
		TLSClientConfig: rest.TLSClientConfig{CAFile: n.caFile}}
}

func (n *Node) waitAPIServer(api *harness.Process, timeout time.Duration) {
	n.t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(n.ca)
	client := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if !api.Alive() {
			n.t.Fatalf("kube-apiserver exited:\n%s", tail(api.Stderr(), 3000))
		}
		req, _ := http.NewRequest("GET", n.APIServer+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+n.adminToken)
		resp, err := client.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = string(b)
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	n.t.Fatalf("kube-apiserver not ready within %s: %s", timeout, tail(last, 2000))
}

// containerd starts containerd with the CRI plugin configured for this
// machine, and imports the images (OCI or docker tarballs).
func (n *Node) containerd(images []string) {
	t := n.t
	cniDir := n.path("cni")
	if err := os.MkdirAll(cniDir, 0o755); err != nil {
		t.Fatal(err)
	}
	conflist := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "weir-node",
  "plugins": [{
    "type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": %q,
      "ranges": [[{"subnet": "%s.0/24", "gateway": "%s", "rangeStart": "%s.10", "rangeEnd": "%s.250"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}`, n.bridge, n.path("ipam"), podNet, n.NodeIP, podNet, podNet)
	if err := os.WriteFile(filepath.Join(cniDir, "10-weir.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	// restrict_oom_score_adj: this machine's bounding set may lack
	// CAP_SYS_RESOURCE, and runc cannot then lower oom_score_adj.
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "weir.test/pause:dev"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
`, n.path("containerd/root"), n.path("containerd/state"), n.ctrdSock, n.ctrdSock+".ttrpc", n.path("containerd/opt"), cniDir)
	if err := os.WriteFile(n.path("containerd.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	p := n.startProc("containerd", "containerd", "--config", n.path("containerd.toml"), "--log-level", "warn")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if out, err := exec.Command("ctr", "--address", n.ctrdSock, "version").CombinedOutput(); err == nil {
			break
		} else if time.Now().After(deadline) || !p.Alive() {
			t.Fatalf("containerd did not start: %v\n%s\n%s", err, out, tail(p.Stderr(), 3000))
		}
		time.Sleep(100 * time.Millisecond)
	}
	n.mark("containerd ready")
	for _, img := range images {
		n.run("ctr", "--address", n.ctrdSock, "-n", "k8s.io", "images", "import", "--no-unpack=false", img)
	}
	n.mark(fmt.Sprintf("%d images imported", len(images)))
}

// kubelet starts the kubelet with the cgroupfs driver under a cgroup root
// of its own.
func (n *Node) kubelet() {
	t := n.t
	// The kubelet wants its cgroup root to exist in every hierarchy; a new
	// cpuset cgroup starts with no CPUs, so it gets its parent's.
	for _, h := range cgroupHierarchies() {
		d := filepath.Join(h, n.cgroupRoot)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("cgroup root: %v", err)
		}
		if filepath.Base(h) == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if b, err := os.ReadFile(filepath.Join(h, f)); err == nil {
					_ = os.WriteFile(filepath.Join(d, f), b, 0o644)
				}
			}
		}
	}
	kport, hport := harness.FreePort(t), harness.FreePort(t)
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %s}
authorization: {mode: AlwaysAllow}
protectKernelDefaults: false
makeIPTablesUtilChains: false
evictionHard: {nodefs.available: "1%%", imagefs.available: "1%%", memory.available: "100Mi", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
podLogsDir: %s
maxPods: 30
syncFrequency: 10s
fileCheckFrequency: 60s
nodeStatusUpdateFrequency: 4s
volumeStatsAggPeriod: 0s
`, n.cgroupRoot, n.ctrdSock, n.NodeIP, kport, hport, n.caFile, n.path("podlogs"))
	if err := os.WriteFile(n.path("kubelet.yaml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	n.startProc("kubelet", filepath.Join(n.bin, "kubelet"),
		"--config="+n.path("kubelet.yaml"),
		"--kubeconfig="+n.path("kubelet.kubeconfig"),
		"--root-dir="+n.path("kubelet"),
		"--cert-dir="+n.path("kubelet/pki"),
		"--hostname-override="+nodeName,
		"--node-ip="+n.NodeIP,
		"--v=1")
}

func (n *Node) waitNodeReady(timeout time.Duration) {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		node, err := n.Admin.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
		if err == nil {
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					n.mark("node Ready")
					return
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	n.t.Fatalf("node %s not Ready within %s\n%s", nodeName, timeout, n.procTails())
}

func (n *Node) procTails() string {
	var b strings.Builder
	for _, p := range n.procs {
		fmt.Fprintf(&b, "--- %s:\n%s\n", p.Name, tail(p.Stderr(), 2500))
	}
	return b.String()
}

// Proc returns the named process of the node.
func (n *Node) Proc(name string) *harness.Process {
	for _, p := range n.procs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// cgroupHierarchies are the mounted cgroup hierarchies (v1 controllers and
// the v2 mount) under /sys/fs/cgroup.
func cgroupHierarchies() []string {
	var hs []string
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range entries {
		p := filepath.Join("/sys/fs/cgroup", e.Name())
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
			continue // symlinks such as cpu,cpuacct
		}
		hs = append(hs, p)
	}
	if len(hs) == 0 { // a pure cgroup2 mount
		hs = append(hs, "/sys/fs/cgroup")
	}
	return hs
}

func listNetns() []string {
	entries, _ := os.ReadDir("/run/netns")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// teardown stops everything the node started, in order, and restores the
// host: pods' processes, shims, containerd, kubelet, control plane, mounts,
// network namespaces, cgroups, the bridge, the nftables table and the
// sysctls. It runs when the test ends, failed or not.
func (n *Node) teardown() {
	t := n.t
	if t.Failed() {
		t.Logf("node timeline:\n%s", n.Timeline())
	}
	// The kubelet first, so that it restarts nothing; then every process in
	// the node's cgroups (the containers), then containerd and its shims.
	n.stop("kubelet")
	killCgroupTree(n.cgroupRoot)
	killShims(n.ctrdSock)
	n.stop("containerd")
	killShims(n.ctrdSock)
	for _, name := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"} {
		n.stop(name)
	}
	cleanupHost(n.dir, n.cgroupRoot, n.bridge, n.nftTable, n.netnsBase)
	// libcni's cache of the sandboxes' networks (the loopback and the
	// node's), outside the node's directory.
	for f := range cniResults() {
		if !n.cniBase[f] {
			_ = os.Remove(filepath.Join(cniCache, "results", f))
		}
	}
	if n.cniDirNew {
		_ = os.Remove(filepath.Join(cniCache, "results"))
		_ = os.Remove(cniCache)
	}
	for s, v := range n.sysctls {
		_ = os.WriteFile("/proc/sys/"+s, []byte(v), 0o644)
	}
	if left := leftovers(n.dir, n.cgroupRoot, n.bridge, n.nftTable); left != "" {
		t.Errorf("left behind after teardown: %s", left)
	}
}

func (n *Node) stop(name string) {
	if p := n.Proc(name); p != nil {
		p.Stop(10 * time.Second)
	}
}

// killCgroupTree SIGKILLs every process in the cgroup root's subtree of
// every hierarchy, until none is left.
func killCgroupTree(root string) {
	for range 50 {
		found := false
		for _, h := range cgroupHierarchies() {
			_ = filepath.WalkDir(filepath.Join(h, root), func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(p)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
						found = true
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
				return nil
			})
		}
		if !found {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// killShims SIGKILLs the containerd shims of the containerd at sock.
func killShims(sock string) {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && strings.HasSuffix(args[0], "containerd-shim-runc-v2") && strings.Contains(string(b), sock) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// cleanupHost unmounts everything under dir, removes the network
// namespaces made since base, the cgroups, the bridge, the nftables table
// and dir itself.
func cleanupHost(dir, cgroupRoot, bridge, table string, base []string) {
	for range 5 {
		mounts := mountsUnder(dir)
		if len(mounts) == 0 {
			break
		}
		for _, m := range mounts {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
	for _, ns := range listNetns() {
		if strings.HasPrefix(ns, "cni-") && !containsStr(base, ns) {
			_ = syscall.Unmount("/run/netns/"+ns, syscall.MNT_DETACH)
			_ = os.Remove("/run/netns/" + ns)
		}
	}
	removeCgroups(cgroupRoot)
	_ = exec.Command("ip", "link", "del", bridge).Run()
	_ = exec.Command("nft", "delete", "table", "ip", table).Run()
	_ = os.RemoveAll(dir)
}

// cniCache is libcni's cache directory.
const cniCache = "/var/lib/cni"

// cniResults lists the files of libcni's cache of results.
func cniResults() map[string]bool {
	m := map[string]bool{}
	entries, _ := os.ReadDir(filepath.Join(cniCache, "results"))
	for _, e := range entries {
		m[e.Name()] = true
	}
	return m
}

// removeCgroups removes the cgroup root's subtree, deepest first, in every
// hierarchy.
func removeCgroups(root string) {
	for _, h := range cgroupHierarchies() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, root), func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			for range 20 {
				if err := syscall.Rmdir(d); err == nil || os.IsNotExist(err) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
}

// mountsUnder lists the mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var ms []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			ms = append(ms, mp)
		}
	}
	sort.Slice(ms, func(i, j int) bool { return len(ms[i]) > len(ms[j]) })
	return ms
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// leftovers describes what of the node is still on the host.
func leftovers(dir, cgroupRoot, bridge, table string) string {
	var left []string
	if m := mountsUnder(dir); len(m) > 0 {
		left = append(left, fmt.Sprintf("mounts %v", m))
	}
	if fileExists(dir) {
		left = append(left, "directory "+dir)
	}
	for _, h := range cgroupHierarchies() {
		if fileExists(filepath.Join(h, cgroupRoot)) {
			left = append(left, "cgroup "+filepath.Join(h, cgroupRoot))
		}
	}
	if exec.Command("ip", "link", "show", bridge).Run() == nil {
		left = append(left, "bridge "+bridge)
	}
	if exec.Command("nft", "list", "table", "ip", table).Run() == nil {
		left = append(left, "nftables table "+table)
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir) {
			left = append(left, "process "+p.Name()+" "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return strings.Join(left, "; ")
}

// removeStaleNodes cleans up after a node whose test process died without
// its teardown (killed by a timeout, say).
func removeStaleNodes() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "weirnode-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || fileExists(fmt.Sprintf("/proc/%d", pid)) {
			continue
		}
		// libcni's cache entries written since that node started.
		if fi, err := os.Stat(filepath.Join(d, "owner.pid")); err == nil {
			entries, _ := os.ReadDir(filepath.Join(cniCache, "results"))
			for _, e := range entries {
				if info, err := e.Info(); err == nil && !info.ModTime().Before(fi.ModTime()) {
					_ = os.Remove(filepath.Join(cniCache, "results", e.Name()))
				}
			}
		}
		sock := filepath.Join(d, "containerd.sock")
		root := fmt.Sprintf("/weirnode%d", pid)
		killProcsMentioning(d)
		if b, err := os.ReadFile(filepath.Join(d, "sysctls")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					_ = os.WriteFile("/proc/sys/"+k, []byte(v), 0o644)
				}
			}
		}
		killCgroupTree(root)
		killShims(sock)
		cleanupHost(d, root, fmt.Sprintf("weirk%d", pid%100000), fmt.Sprintf("weirnode%d", pid), listNetnsInUse())
	}
}

// listNetnsInUse: the cni- namespaces that a running containerd's pods may
// still use are kept (another node's): only namespaces under a stale dir
// are removed, so none of /run/netns is touched here.
func listNetnsInUse() []string { return listNetns() }

func killProcsMentioning(s string) {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), s) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
