package k8s

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"github.com/weir-project/weir/test/internal/harness"
)

// The control plane: etcd, kube-apiserver and kube-controller-manager built
// from the Go module proxy by build-control-plane.sh into ~/.cache/weir/k8s
// (outside the clone), started on free loopback ports.

var (
	cpOnce sync.Once
	cpBin  string
	cpErr  error
)

// controlPlaneBin builds the binaries once per machine and returns their
// directory.
func controlPlaneBin(t testing.TB) string {
	t.Helper()
	cpOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		script := filepath.Join(filepath.Dir(file), "build-control-plane.sh")
		cmd := exec.Command("bash", script)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Run(); err != nil {
			cpErr = fmt.Errorf("%s: %w\n%s", script, err, out.String())
			return
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Logf("built the control plane in %s", d.Round(time.Second))
		}
		cache := os.Getenv("WEIR_K8S_CACHE")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache", "weir", "k8s")
		}
		cpBin = filepath.Join(cache, "v1.34.12", "bin")
	})
	if cpErr != nil {
		t.Fatal(cpErr)
	}
	return cpBin
}

// ControlPlane is a running etcd, one or more kube-apiservers on it, and a
// kube-controller-manager.
type ControlPlane struct {
	dir, bin   string
	etcdURL    string
	adminToken string
	Admin      *kubernetes.Clientset
	APIServers []*APIServer
	Controller *harness.Process
}

// APIServer is one kube-apiserver.
type APIServer struct {
	URL  string
	args []string
	Proc *harness.Process
}

// ServiceCIDRs are the service ranges: benchmarking addresses, dual stack.
const ServiceCIDRs = "198.19.255.0/24,2001:2:ff::/112"

// StartControlPlane starts etcd, n kube-apiservers and the controller
// manager, and waits until they serve.
func StartControlPlane(t testing.TB, n int) *ControlPlane {
	return startControlPlane(t, n, true)
}

// startControlPlane starts etcd, n kube-apiservers, and the controller
// manager when controllers is set.
func startControlPlane(t testing.TB, n int, controllers bool) *ControlPlane {
	t.Helper()
	bin := controlPlaneBin(t)
	dir := t.TempDir()
	cp := &ControlPlane{dir: dir, bin: bin, adminToken: randHex(16)}
	writeSAKeys(t, dir)
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(cp.adminToken+",admin,admin,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clientPort, peerPort := harness.FreePort(t), harness.FreePort(t)
	cp.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	harness.Start(t, "etcd", filepath.Join(bin, "etcd"),
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", cp.etcdURL, "--advertise-client-urls", cp.etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", peerPort),
		"--unsafe-no-fsync", "--log-level", "warn")
	for i := range n {
		port := harness.FreePort(t)
		a := &APIServer{URL: fmt.Sprintf("https://127.0.0.1:%d", port)}
		a.args = []string{filepath.Join(bin, "kube-apiserver"),
			"--etcd-servers=" + cp.etcdURL,
			"--service-account-issuer=https://kubernetes.default.svc",
			"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
			"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
			"--token-auth-file=" + filepath.Join(dir, "tokens.csv"),
			"--authorization-mode=RBAC",
			"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
			fmt.Sprintf("--secure-port=%d", port),
			"--cert-dir=" + filepath.Join(dir, fmt.Sprintf("apiserver%d", i)),
			"--service-cluster-ip-range=" + ServiceCIDRs,
			"--endpoint-reconciler-type=none",
			"--enable-priority-and-fairness=false",
			"--v=0",
		}
		cp.APIServers = append(cp.APIServers, a)
		a.Proc = harness.Start(t, fmt.Sprintf("kube-apiserver-%d", i), a.args...)
	}
	for _, a := range cp.APIServers {
		cp.waitReady(t, a, 90*time.Second)
	}
	var err error
	cp.Admin, err = kubernetes.NewForConfig(cp.RestConfig(len(cp.APIServers)-1, cp.adminToken))
	if err != nil {
		t.Fatal(err)
	}
	if !controllers {
		return cp
	}
	// The controller manager runs the controllers that turn a Deployment
	// into a ReplicaSet and pods, and a Job into pods.
	kc := cp.WriteKubeconfig(t, "controller-manager", len(cp.APIServers)-1, cp.adminToken)
	cp.Controller = harness.Start(t, "kube-controller-manager", filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig="+kc, "--leader-elect=false",
		"--controllers=serviceaccount-controller,deployment-controller,replicaset-controller,job-controller,cronjob-controller,garbage-collector-controller",
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", harness.FreePort(t)),
		"--concurrent-deployment-syncs=2", "--concurrent-replicaset-syncs=2", "--v=0")
	return cp
}

// waitReady waits until the apiserver answers /readyz.
func (cp *ControlPlane) waitReady(t testing.TB, a *APIServer, timeout time.Duration) {
	t.Helper()
	client := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if !a.Proc.Alive() {
			t.Fatalf("kube-apiserver exited:\n%s", tail(a.Proc.Stderr(), 3000))
		}
		req, _ := http.NewRequest("GET", a.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+cp.adminToken)
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
	t.Fatalf("kube-apiserver %s not ready within %s: %s", a.URL, timeout, tail(last, 2000))
}

// Kill stops apiserver i at once (SIGKILL).
func (cp *ControlPlane) Kill(i int) {
	a := cp.APIServers[i]
	_ = syscall.Kill(a.Proc.PID(), syscall.SIGKILL)
	_ = a.Proc.Wait(10 * time.Second)
}

// Restart starts apiserver i again with the same flags and waits for it.
func (cp *ControlPlane) Restart(t testing.TB, i int) {
	t.Helper()
	a := cp.APIServers[i]
	a.Proc = harness.Start(t, fmt.Sprintf("kube-apiserver-%d", i), a.args...)
	cp.waitReady(t, a, 90*time.Second)
}

// RestConfig is a client configuration for apiserver i with a bearer token.
func (cp *ControlPlane) RestConfig(i int, token string) *rest.Config {
	return &rest.Config{Host: cp.APIServers[i].URL, BearerToken: token, QPS: 200, Burst: 400,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
}

// WriteKubeconfig writes a kubeconfig for apiserver i with a bearer token.
func (cp *ControlPlane) WriteKubeconfig(t testing.TB, name string, i int, token string) string {
	t.Helper()
	path := filepath.Join(cp.dir, name+".kubeconfig")
	data := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: weir
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: %s
  user:
    token: %s
contexts:
- name: weir
  context: {cluster: weir, user: %s}
current-context: weir
`, cp.APIServers[i].URL, name, token, name)
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// ApplyRBAC creates the objects of the watcher's RBAC file as they are and
// returns a token of its service account, bound to exactly that RBAC.
func (cp *ControlPlane) ApplyRBAC(t testing.TB, ctx context.Context, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var sa *corev1.ServiceAccount
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			cp.ensureNamespace(t, ctx, o.Namespace)
			sa, err = cp.Admin.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = cp.Admin.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = cp.Admin.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			cp.ensureNamespace(t, ctx, o.Namespace)
			_, err = cp.Admin.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			cp.ensureNamespace(t, ctx, o.Namespace)
			_, err = cp.Admin.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("%s: unexpected %T", path, obj)
		}
		if err != nil {
			t.Fatalf("%s: create %T: %v", path, obj, err)
		}
	}
	if sa == nil {
		t.Fatalf("%s: no ServiceAccount", path)
	}
	exp := int64(3600)
	tr, err := cp.Admin.CoreV1().ServiceAccounts(sa.Namespace).CreateToken(ctx, sa.Name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of %s/%s: %v", sa.Namespace, sa.Name, err)
	}
	return tr.Status.Token
}

func (cp *ControlPlane) ensureNamespace(t testing.TB, ctx context.Context, ns string) {
	t.Helper()
	_, err := cp.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// writeSAKeys writes the service account signing key pair.
func writeSAKeys(t testing.TB, dir string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for name, blk := range map[string]*pem.Block{
		"sa.key": {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)},
		"sa.pub": {Type: "PUBLIC KEY", Bytes: pub},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(blk), 0o600); err != nil {
			t.Fatal(err)
		}
	}
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
