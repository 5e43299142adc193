package cluster

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

// The chart checks: helm lint, helm template over charts/weir/ci/*-values.yaml
// (each rendering checked object by object), the schema refusing what is not
// a value, and every flag the templates pass accepted by its binary.

// helm runs the helm binary and returns its combined output.
func helm(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helmBin(t), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ciValues are the value files under charts/weir/ci, by name.
func ciValues(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(chartDir(), "ci", "*-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, f := range files {
		m[strings.TrimSuffix(filepath.Base(f), "-values.yaml")] = f
	}
	for _, want := range []string{"default", "mtls", "otlp", "servicemonitor", "sharded"} {
		if m[want] == "" {
			t.Errorf("charts/weir/ci/%s-values.yaml is missing", want)
		}
	}
	return m
}

func TestChartLint(t *testing.T) {
	for name, f := range ciValues(t) {
		t.Run(name, func(t *testing.T) {
			out, err := helm(t, "lint", "--strict", chartDir(), "-f", f)
			if err != nil {
				t.Fatalf("helm lint -f %s: %v\n%s", f, err, out)
			}
			if !strings.Contains(out, "0 chart(s) failed") {
				t.Fatalf("helm lint: %s", out)
			}
		})
	}
}

// rendered is one rendering of the chart.
type rendered struct {
	objs []runtime.Object
	raw  []*unstructured.Unstructured
}

func (r rendered) find(kind, nameSuffix string) runtime.Object {
	for i, u := range r.raw {
		if u.GetKind() == kind && strings.HasSuffix(u.GetName(), nameSuffix) {
			return r.objs[i]
		}
	}
	return nil
}

func (r rendered) kinds() []string {
	var k []string
	for _, u := range r.raw {
		k = append(k, u.GetKind()+"/"+u.GetName())
	}
	sort.Strings(k)
	return k
}

// render runs helm template and decodes every object.
func render(t *testing.T, args ...string) rendered {
	t.Helper()
	out, err := helm(t, append([]string{"template", "weir", chartDir(), "--namespace", "weir"}, args...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, out)
	}
	return decode(t, []byte(out))
}

func decode(t testing.TB, data []byte) rendered {
	t.Helper()
	var r rendered
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := utilyaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatalf("rendered YAML: %v\n%s", err, doc)
		}
		if len(u.Object) == 0 {
			continue
		}
		var obj runtime.Object = u
		if u.GetKind() != "ServiceMonitor" {
			obj, _, err = scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
			if err != nil {
				t.Fatalf("decode %s: %v", u.GetKind(), err)
			}
		}
		r.objs = append(r.objs, obj)
		r.raw = append(r.raw, u)
	}
	return r
}

func TestChartTemplate(t *testing.T) {
	for name, f := range ciValues(t) {
		t.Run(name, func(t *testing.T) {
			r := render(t, "-f", f)
			sharded := name == "sharded"
			checkCollector(t, r, name)
			checkReducer(t, r, sharded)
			checkWatcher(t, r, sharded)
			checkServices(t, r, sharded, name)
			if name == "mtls" {
				checkMTLS(t, r)
			} else {
				// Plaintext: the reducer must be told to listen beyond loopback.
				var args []string
				if d, ok := r.find("Deployment", "-reducer").(*appsv1.Deployment); ok {
					args = d.Spec.Template.Spec.Containers[0].Args
				} else if s, ok := r.find("StatefulSet", "-reducer").(*appsv1.StatefulSet); ok {
					args = s.Spec.Template.Spec.Containers[0].Args
				}
				if !slices.Contains(args, "--insecure-listen") {
					t.Errorf("plaintext reducer without --insecure-listen: %v", args)
				}
			}
			if name == "otlp" {
				checkOTLP(t, r)
			}
		})
	}
}

// checkCollector: hostPID and hostNetwork, not privileged, exactly the
// capabilities of the values, read-only host mounts, every taint tolerated.
func checkCollector(t *testing.T, r rendered, values string) {
	t.Helper()
	ds, ok := r.find("DaemonSet", "-collector").(*appsv1.DaemonSet)
	if !ok {
		t.Fatalf("no collector DaemonSet in %v", r.kinds())
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostPID || !spec.HostNetwork {
		t.Errorf("collector: hostPID %v hostNetwork %v, want both", spec.HostPID, spec.HostNetwork)
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("collector: dnsPolicy %s", spec.DNSPolicy)
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("collector: privileged or privilege escalation allowed: %+v", sc)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("collector: root filesystem not read-only")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("collector: drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	want := []corev1.Capability{"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE"}
	if values == "sharded" { // sets capabilities.sysResource
		want = append(want, "SYS_RESOURCE")
	}
	if !slices.Equal(sc.Capabilities.Add, want) {
		t.Errorf("collector: add %v, want %v", sc.Capabilities.Add, want)
	}
	mounts := map[string]string{
		"/host/proc": "/proc", "/sys/fs/cgroup": "/sys/fs/cgroup",
		"/sys/kernel/btf": "/sys/kernel/btf", "/sys/kernel/tracing": "/sys/kernel/tracing",
	}
	vols := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		vols[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		if !m.ReadOnly {
			t.Errorf("collector: mount %s is writable", m.MountPath)
		}
		hp, ok := mounts[m.MountPath]
		if !ok {
			continue
		}
		delete(mounts, m.MountPath)
		if v := vols[m.Name]; v.HostPath == nil || v.HostPath.Path != hp {
			t.Errorf("collector: %s is not the host's %s: %+v", m.MountPath, hp, v)
		}
	}
	if len(mounts) > 0 {
		t.Errorf("collector: host mounts missing: %v", mounts)
	}
	tolerated := false
	for _, tol := range spec.Tolerations {
		if tol.Operator == corev1.TolerationOpExists && tol.Key == "" && tol.Effect == "" {
			tolerated = true
		}
	}
	if !tolerated {
		t.Errorf("collector: no toleration of every taint: %+v", spec.Tolerations)
	}
	checkFlags(t, "weir-collector", c.Args)
}

// checkReducer: a Deployment, or a StatefulSet of --sharded reducers.
func checkReducer(t *testing.T, r rendered, sharded bool) {
	t.Helper()
	var pod corev1.PodSpec
	if sharded {
		sts, ok := r.find("StatefulSet", "-reducer").(*appsv1.StatefulSet)
		if !ok {
			t.Fatalf("sharded: no reducer StatefulSet in %v", r.kinds())
		}
		if *sts.Spec.Replicas != 3 || !strings.HasSuffix(sts.Spec.ServiceName, "-reducer-headless") {
			t.Errorf("reducer StatefulSet: replicas %d serviceName %q", *sts.Spec.Replicas, sts.Spec.ServiceName)
		}
		pod = sts.Spec.Template.Spec
		if !slices.Contains(pod.Containers[0].Args, "--sharded") {
			t.Errorf("sharded reducers without --sharded: %v", pod.Containers[0].Args)
		}
	} else {
		d, ok := r.find("Deployment", "-reducer").(*appsv1.Deployment)
		if !ok {
			t.Fatalf("no reducer Deployment in %v", r.kinds())
		}
		pod = d.Spec.Template.Spec
		if slices.Contains(pod.Containers[0].Args, "--sharded") {
			t.Error("a single reducer with --sharded")
		}
	}
	checkRestricted(t, "reducer", pod)
	checkFlags(t, "weir-reducer", pod.Containers[0].Args)
}

// checkWatcher: one watcher, or one per reducer, with the RBAC of
// k8s-watcher/deploy/rbac.yaml.
func checkWatcher(t *testing.T, r rendered, sharded bool) {
	t.Helper()
	var pod corev1.PodSpec
	if sharded {
		sts, ok := r.find("StatefulSet", "-k8s-watcher").(*appsv1.StatefulSet)
		if !ok {
			t.Fatalf("sharded: no watcher StatefulSet in %v", r.kinds())
		}
		if *sts.Spec.Replicas != 3 {
			t.Errorf("watchers: %d, want one per reducer", *sts.Spec.Replicas)
		}
		pod = sts.Spec.Template.Spec
		want := "--reducer=weir-reducer-$(POD_INDEX).weir-reducer-headless.weir.svc.cluster.local:7000"
		if !slices.Contains(pod.Containers[0].Args, want) {
			t.Errorf("sharded watcher args %v, want %s", pod.Containers[0].Args, want)
		}
	} else {
		d, ok := r.find("Deployment", "-k8s-watcher").(*appsv1.Deployment)
		if !ok {
			t.Fatalf("no watcher Deployment in %v", r.kinds())
		}
		pod = d.Spec.Template.Spec
	}
	checkRestricted(t, "k8s-watcher", pod)
	checkFlags(t, "weir-k8s-watcher", pod.Containers[0].Args)
	sa, ok := r.find("ServiceAccount", "-k8s-watcher").(*corev1.ServiceAccount)
	if !ok || pod.ServiceAccountName != sa.Name {
		t.Errorf("watcher: service account %q, rendered %v", pod.ServiceAccountName, sa)
	}
	role, ok := r.find("ClusterRole", "-k8s-watcher").(*rbacv1.ClusterRole)
	if !ok {
		t.Fatalf("no watcher ClusterRole in %v", r.kinds())
	}
	if want := rbacFileRules(t); !equalRules(role.Rules, want) {
		t.Errorf("ClusterRole rules %+v, want those of k8s-watcher/deploy/rbac.yaml %+v", role.Rules, want)
	}
	crb, ok := r.find("ClusterRoleBinding", "-k8s-watcher").(*rbacv1.ClusterRoleBinding)
	if !ok || crb.RoleRef.Name != role.Name || len(crb.Subjects) != 1 || crb.Subjects[0].Name != sa.Name || crb.Subjects[0].Namespace != "weir" {
		t.Errorf("ClusterRoleBinding %+v", crb)
	}
}

// checkRestricted: non-root, no capability, read-only root, RuntimeDefault.
func checkRestricted(t *testing.T, name string, pod corev1.PodSpec) {
	t.Helper()
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s: no security context", name)
		case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser == 0:
			t.Errorf("%s: may run as root: %+v", name, sc)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			t.Errorf("%s: capabilities %+v, want drop [ALL] only", name, sc.Capabilities)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s: root filesystem not read-only", name)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s: privilege escalation allowed", name)
		case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
			t.Errorf("%s: seccomp %+v, want RuntimeDefault", name, sc.SeccompProfile)
		}
	}
}

// checkServices: the reducer's Service with 7000 and 7010 and the scrape
// annotations (or a ServiceMonitor), and the headless one when sharded.
func checkServices(t *testing.T, r rendered, sharded bool, values string) {
	t.Helper()
	svc, ok := r.find("Service", "-reducer").(*corev1.Service)
	if !ok {
		t.Fatalf("no reducer Service in %v", r.kinds())
	}
	ports := map[string]int32{}
	for _, p := range svc.Spec.Ports {
		ports[p.Name] = p.Port
	}
	if ports["grpc"] != 7000 || ports["http-metrics"] != 7010 {
		t.Errorf("reducer Service ports %v, want grpc 7000 and http-metrics 7010", ports)
	}
	wantScrape := values != "servicemonitor"
	if got := svc.Annotations["prometheus.io/scrape"] == "true" && svc.Annotations["prometheus.io/port"] == "7010"; got != wantScrape {
		t.Errorf("reducer Service annotations %v, scrape wanted: %v", svc.Annotations, wantScrape)
	}
	sm := r.find("ServiceMonitor", "-reducer")
	if (sm != nil) != (values == "servicemonitor") {
		t.Errorf("ServiceMonitor rendered: %v, values %s", sm != nil, values)
	}
	if sm != nil {
		u := sm.(*unstructured.Unstructured)
		sel, _, _ := unstructured.NestedStringMap(u.Object, "spec", "selector", "matchLabels")
		for k, v := range sel {
			if svc.Labels[k] != v {
				t.Errorf("ServiceMonitor selector %v does not select the reducer Service %v", sel, svc.Labels)
			}
		}
		if l := u.GetLabels(); l["release"] != "kube-prometheus-stack" {
			t.Errorf("ServiceMonitor labels %v", l)
		}
	}
	headless, _ := r.find("Service", "-reducer-headless").(*corev1.Service)
	if (headless != nil) != sharded {
		t.Fatalf("headless Service rendered: %v, sharded: %v", headless != nil, sharded)
	}
	if headless != nil {
		if headless.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("headless Service clusterIP %q", headless.Spec.ClusterIP)
		}
		// The ServiceMonitor and annotations must not find the reducers twice.
		if headless.Annotations["prometheus.io/scrape"] != "" || headless.Labels["app.kubernetes.io/component"] == "reducer" {
			t.Errorf("headless Service would be scraped too: %v %v", headless.Labels, headless.Annotations)
		}
		ds := r.find("DaemonSet", "-collector").(*appsv1.DaemonSet)
		want := "--reducer=weir-reducer-headless.weir.svc.cluster.local:7000"
		if !slices.Contains(ds.Spec.Template.Spec.Containers[0].Args, want) {
			t.Errorf("sharded collectors do not dial the headless Service: %v", ds.Spec.Template.Spec.Containers[0].Args)
		}
	}
}

// checkMTLS: each pod mounts its own files of its own Secret.
func checkMTLS(t *testing.T, r rendered) {
	t.Helper()
	ds := r.find("DaemonSet", "-collector").(*appsv1.DaemonSet)
	red := r.find("Deployment", "-reducer").(*appsv1.Deployment)
	w := r.find("Deployment", "-k8s-watcher").(*appsv1.Deployment)
	for _, tc := range []struct {
		name   string
		pod    corev1.PodSpec
		secret string
		args   []string
		items  []string
	}{
		{"collector", ds.Spec.Template.Spec, "weir-node-tls",
			[]string{"--tls-ca=/etc/weir/tls/ca.pem", "--tls-cert=/etc/weir/tls/node-$(NODE_NAME).pem", "--tls-key=/etc/weir/tls/node-$(NODE_NAME)-key.pem"}, nil},
		{"reducer", red.Spec.Template.Spec, "weir-tls",
			[]string{"--tls-ca=/etc/weir/tls/ca.pem", "--tls-cert=/etc/weir/tls/reducer.pem", "--tls-key=/etc/weir/tls/reducer-key.pem", "--trust-domain=weir.local"},
			[]string{"ca.pem", "reducer.pem", "reducer-key.pem"}},
		{"k8s-watcher", w.Spec.Template.Spec, "weir-tls",
			[]string{"--tls-ca=/etc/weir/tls/ca.pem", "--tls-cert=/etc/weir/tls/k8s-watcher.pem", "--tls-key=/etc/weir/tls/k8s-watcher-key.pem"},
			[]string{"ca.pem", "k8s-watcher.pem", "k8s-watcher-key.pem"}},
	} {
		for _, a := range tc.args {
			if !slices.Contains(tc.pod.Containers[0].Args, a) {
				t.Errorf("%s: no %s in %v", tc.name, a, tc.pod.Containers[0].Args)
			}
		}
		var found bool
		for _, v := range tc.pod.Volumes {
			if v.Secret == nil || v.Secret.SecretName != tc.secret {
				continue
			}
			found = true
			var items []string
			for _, it := range v.Secret.Items {
				items = append(items, it.Key)
			}
			if !slices.Equal(items, tc.items) {
				t.Errorf("%s: mounts %v of %s, want %v", tc.name, items, tc.secret, tc.items)
			}
		}
		if !found {
			t.Errorf("%s: Secret %s not mounted", tc.name, tc.secret)
		}
	}
	if slices.Contains(red.Spec.Template.Spec.Containers[0].Args, "--insecure-listen") {
		t.Error("reducer: --insecure-listen with mTLS")
	}
}

func checkOTLP(t *testing.T, r rendered) {
	t.Helper()
	d := r.find("Deployment", "-reducer").(*appsv1.Deployment)
	args := d.Spec.Template.Spec.Containers[0].Args
	for _, a := range []string{
		"--otlp-endpoint=otel-collector.observability.svc:4317", "--otlp-interval=15s",
		"--otlp-temporality=delta", "--otlp-header=authorization=Bearer abc",
		"--otlp-tls-ca=/etc/weir/otlp/ca.crt", "--otlp-tls-cert=/etc/weir/otlp/tls.crt",
		"--otlp-tls-key=/etc/weir/otlp/tls.key", "--aggregation=pod", "--max-series=50000",
	} {
		if !slices.Contains(args, a) {
			t.Errorf("reducer: no %s in %v", a, args)
		}
	}
	if slices.Contains(args, "--otlp-insecure") {
		t.Error("reducer: --otlp-insecure with a TLS secret")
	}
}

var (
	flagsMu    = map[string][]string{}
	helpFlagRe = regexp.MustCompile(`(?m)^\s+-{1,2}([a-z0-9-]+)`)
)

// binaryFlags returns the flags that bin --help lists.
func binaryFlags(t *testing.T, bin string) []string {
	t.Helper()
	if f, ok := flagsMu[bin]; ok {
		return f
	}
	out, _ := exec.Command(weirBinary(t, bin), "--help").CombinedOutput()
	var flags []string
	for _, m := range helpFlagRe.FindAllStringSubmatch(string(out), -1) {
		flags = append(flags, m[1])
	}
	if len(flags) < 5 {
		t.Fatalf("%s --help lists no flags:\n%s", bin, out)
	}
	flagsMu[bin] = flags
	return flags
}

// checkFlags: every flag of args is one that the binary's --help lists.
func checkFlags(t *testing.T, bin string, args []string) {
	t.Helper()
	known := binaryFlags(t, bin)
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			t.Errorf("%s: argument %q is not a flag", bin, a)
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !slices.Contains(known, name) {
			t.Errorf("%s: the chart passes %s, which %s --help does not list", bin, a, bin)
		}
	}
}

// rbacFileRules are the ClusterRole rules of k8s-watcher/deploy/rbac.yaml.
func rbacFileRules(t *testing.T) []rbacv1.PolicyRule {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoDir(), "k8s-watcher", "deploy", "rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range decode(t, data).objs {
		if cr, ok := obj.(*rbacv1.ClusterRole); ok {
			return cr.Rules
		}
	}
	t.Fatal("k8s-watcher/deploy/rbac.yaml has no ClusterRole")
	return nil
}

func equalRules(a, b []rbacv1.PolicyRule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !slices.Equal(a[i].APIGroups, b[i].APIGroups) || !slices.Equal(a[i].Resources, b[i].Resources) ||
			!slices.Equal(a[i].Verbs, b[i].Verbs) || !slices.Equal(a[i].ResourceNames, b[i].ResourceNames) {
			return false
		}
	}
	return true
}

// TestChartRejects: the schema refuses misspelled and ill-typed values, and
// the templates refuse contradictory ones, each with a message naming it.
func TestChartRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  []string
		want string
	}{
		{"misspelled collector value", []string{"collector.intervall=5s"}, "additional properties 'intervall' not allowed"},
		{"misspelled top-level value", []string{"reducr.replicas=2"}, "additional properties 'reducr' not allowed"},
		{"misspelled capability", []string{"collector.capabilities.sysadmin=true"}, "additional properties 'sysadmin' not allowed"},
		{"unknown aggregation", []string{"reducer.aggregation=service"}, "value must be one of"},
		{"interval not a duration", []string{"collector.interval=5"}, "got number, want string"},
		{"privileged is no value", []string{"collector.privileged=true"}, "additional properties 'privileged' not allowed"},
		{"mTLS without its Secret", []string{"mtls.enabled=true"}, "mtls.enabled needs mtls.existingSecret"},
		{"mTLS without the node Secret", []string{"mtls.enabled=true", "mtls.existingSecret=s"}, "mtls.enabled needs mtls.nodeSecret"},
		{"zero reducers", []string{"reducer.replicas=0"}, "minimum"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"template", "weir", chartDir()}
			for _, s := range tc.set {
				args = append(args, "--set", s)
			}
			out, err := helm(t, args...)
			if err == nil {
				t.Fatalf("helm template --set %v rendered:\n%.500s", tc.set, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Fatalf("helm template --set %v: %q does not say %q", tc.set, out, tc.want)
			}
		})
	}
}

// TestChartCapabilityReasons: each capability value of the collector has a
// one-line reason in values.yaml that names it.
func TestChartCapabilityReasons(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir(), "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key, capName, def string
	}{
		{"bpf", "BPF", "true"}, {"perfmon", "PERFMON", "true"}, {"netAdmin", "NET_ADMIN", "true"},
		{"sysPtrace", "SYS_PTRACE", "true"}, {"sysResource", "SYS_RESOURCE", "false"}, {"sysAdmin", "SYS_ADMIN", "false"},
	} {
		re := regexp.MustCompile(`(?m)^\s+# -- ` + tc.capName + `: \S.*\n(\s+#.*\n)*\s+` + tc.key + `: (true|false)$`)
		m := re.FindStringSubmatch(string(data))
		if m == nil {
			t.Errorf("values.yaml: capabilities.%s has no reason naming %s", tc.key, tc.capName)
			continue
		}
		if m[2] != tc.def {
			t.Errorf("values.yaml: capabilities.%s defaults to %s, want %s", tc.key, m[2], tc.def)
		}
	}
}

// TestChartReadme: every value of values.yaml has a row in the chart's
// README table.
func TestChartReadme(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir(), "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(chartDir(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := utilyaml.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			key := prefix + k
			if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
				walk(key+".", sub)
				continue
			}
			if !strings.Contains(string(readme), "| `"+key+"` |") {
				t.Errorf("charts/weir/README.md has no row for %s", key)
			}
		}
	}
	walk("", values)
}

// TestChartToggles: the collector and the watcher can be left out, and the
// watcher can use a ServiceAccount of its own.
func TestChartToggles(t *testing.T) {
	r := render(t, "--set", "collector.enabled=false", "--set", "k8sWatcher.enabled=false")
	for _, k := range r.kinds() {
		if strings.Contains(k, "collector") || strings.Contains(k, "k8s-watcher") {
			t.Errorf("rendered %s with the collector and the watcher off", k)
		}
	}
	if _, ok := r.find("Deployment", "-reducer").(*appsv1.Deployment); !ok {
		t.Errorf("no reducer: %v", r.kinds())
	}
	r = render(t, "--set", "k8sWatcher.serviceAccount.create=false", "--set", "k8sWatcher.serviceAccount.name=mine")
	if r.find("ClusterRole", "-k8s-watcher") != nil || r.find("ServiceAccount", "-k8s-watcher") != nil {
		t.Errorf("RBAC rendered with serviceAccount.create=false: %v", r.kinds())
	}
	if d := r.find("Deployment", "-k8s-watcher").(*appsv1.Deployment); d.Spec.Template.Spec.ServiceAccountName != "mine" {
		t.Errorf("watcher service account %q, want mine", d.Spec.Template.Spec.ServiceAccountName)
	}
}
