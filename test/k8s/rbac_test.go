package k8s

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-project/weir/test/internal/harness"
)

// tokenWithRules creates a service account bound to a ClusterRole of the
// given rules (and, with lease, to the RBAC file's leader Role) and returns
// a token of it.
func (cp *ControlPlane) tokenWithRules(t testing.TB, ctx context.Context, name string, rules []rbacv1.PolicyRule, lease bool) string {
	t.Helper()
	ns := "weir"
	sa, err := cp.Admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	subj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}
	if _, err := cp.Admin.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.Admin.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name}, Subjects: subj}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if lease {
		if _, err := cp.Admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "weir-k8s-watcher-leader"}, Subjects: subj}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	exp := int64(3600)
	tr, err := cp.Admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa.Name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// checkRBACIsNeeded runs watchers whose tokens lack one rule of the RBAC
// file each: every one of them must fail (never sync, or never lead), so
// that the file holds nothing the watcher does not need. The file itself is
// enough: the tests run the watcher with exactly its rules.
func checkRBACIsNeeded(t *testing.T, cp *ControlPlane, ctx context.Context) {
	role, err := cp.Admin.RbacV1().ClusterRoles().Get(ctx, "weir-k8s-watcher", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	type variant struct {
		name   string
		rules  []rbacv1.PolicyRule
		lease  bool
		wanted string // errors: lists or watches fail; weir_watcher_leader: it never leads
	}
	var vs []variant
	for i, r := range role.Rules {
		rules := append(append([]rbacv1.PolicyRule{}, role.Rules[:i]...), role.Rules[i+1:]...)
		vs = append(vs, variant{fmt.Sprintf("without-%s", strings.Join(r.Resources, "-")), rules, false, "errors"})
		for j, verb := range r.Verbs {
			rules := append([]rbacv1.PolicyRule{}, role.Rules...)
			cut := r.DeepCopy()
			cut.Verbs = append(append([]string{}, r.Verbs[:j]...), r.Verbs[j+1:]...)
			rules[i] = *cut
			vs = append(vs, variant{fmt.Sprintf("without-%s-%s", verb, strings.Join(r.Resources, "-")), rules, false, "errors"})
		}
	}
	vs = append(vs, variant{"without-leases", role.Rules, false, "weir_watcher_leader"})
	type running struct {
		v variant
		w *Watcher
	}
	var rs []running
	for _, v := range vs {
		token := cp.tokenWithRules(t, ctx, "w-"+v.name, v.rules, v.lease)
		kc := cp.WriteKubeconfig(t, "w-"+v.name, 0, token)
		args := []string{}
		if v.wanted == "weir_watcher_leader" {
			args = []string{"--leader-elect", "--lease-name", "weir-k8s-watcher", "--lease-duration", "4s", "--renew-deadline", "3s", "--retry-period", "500ms"}
		}
		// A reducer nobody listens on: a watcher that wrongly got through
		// must not disturb the test's reducer.
		rs = append(rs, running{v, StartWatcher(t, "w-"+v.name, kc, "127.0.0.1:1", args...)})
	}
	time.Sleep(5 * time.Second)
	for _, r := range rs {
		switch r.v.wanted {
		case "errors":
			if got := sumMetric(t, r.w, "weir_watcher_list_watch_errors_total"); got == 0 {
				t.Errorf("%s: no failed list or watch: the RBAC file grants more than the watcher needs", r.v.name)
			}
		default:
			if got := r.w.Metric(r.v.wanted, nil); got != 0 {
				t.Errorf("%s: %s = %v: the RBAC file grants more than the watcher needs", r.v.name, r.v.wanted, got)
			}
		}
		if !strings.Contains(r.w.Proc.Stderr(), "forbidden") {
			t.Errorf("%s: no \"forbidden\" in the watcher's log", r.v.name)
		}
		r.w.Proc.Stop(5 * time.Second)
	}
}

// sumMetric sums every sample of a family of the watcher's metrics.
func sumMetric(t testing.TB, w *Watcher, name string) float64 {
	t.Helper()
	m, err := harness.Scrape(w.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, s := range m[name].GetMetric() {
		sum += s.GetCounter().GetValue()
	}
	return sum
}
