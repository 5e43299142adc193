package telemetry2

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedDNS runs a DNS server in one namespace and, in another, a
// client whose Go resolver sends its queries over a UDP socket to the
// server's port 53: one answered, one NXDOMAIN, one never answered. The
// client then connects to the answered name, whose address (a virtual IP
// that the server's host DNATs to itself) no collector reports as local:
// that end is named by the DNS name.
func TestPrivilegedDNS(t *testing.T) {
	harness.RequireRoot(t)
	client, server := harness.TwoHosts(t, "t2dns")
	run(t, "ip", "-n", client.NS, "route", "add", apiVIP+"/32", "via", server.IPv4)
	nft(t, server.NS, `table ip weirt2 {
	chain pre {
		type nat hook prerouting priority -100;
		ip daddr `+apiVIP+` tcp dport 80 dnat to `+server.IPv4+`:8080
	}
}`)
	// NAT joins are off here: the end stays the virtual IP, named by DNS.
	w := harness.StartWeir(t, harness.WeirOptions{CollectorArgs: []string{"--dns", "--dns-timeout", "1s", "--nat=false"}})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	srv := harness.Start(t, "dns-server", server.Exec(self, "weir-helper", "dnsserver", server.IPv4+":53", server.IPv4+":8080")...)
	srv.WaitLine(t, "ready", 30*time.Second)

	const n = 12345
	cli := harness.Start(t, "dns-client", client.Exec(self, "weir-helper", "dnsclient", server.IPv4+":53", strconv.Itoa(n),
		apiName, "nothere.example.com.", slowName)...)
	for _, want := range []string{"lookup " + apiName + " " + apiVIP, "lookup nothere.example.com. notfound", "lookup " + slowName + " timeout"} {
		if got := cli.WaitLine(t, "lookup", 30*time.Second); got != want {
			t.Fatalf("client: %q, want %q", got, want)
		}
	}
	cli.WaitLine(t, "sent", 30*time.Second)

	comm := commOf(t, self)
	edge := map[string]string{"src_workload": comm, "src_kind": "process", "dst_workload": server.IPv4, "dst_kind": "external"}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for a, b := range edge {
			m[a] = b
		}
		return m
	}
	m := harness.WaitFor(t, w.MetricsURL, 60*time.Second, "DNS answers, timeouts and the DNS-named end", func(m harness.Metrics) bool {
		return m.Sum("weir_dns_responses_total", with("rcode", "NOERROR")) >= 1 &&
			m.Sum("weir_dns_responses_total", with("rcode", "NXDOMAIN")) >= 1 &&
			m.Sum("weir_dns_timeouts_total", edge) >= 1 &&
			m.Sum("weir_tcp_bytes_total", map[string]string{"src_workload": comm, "dst_workload": "api.example.com", "dst_kind": "external"}) == n
	})
	// Each lookup sent one query: exact.
	for rcode, want := range map[string]float64{"NOERROR": 1, "NXDOMAIN": 1} {
		if got := m.Sum("weir_dns_responses_total", with("rcode", rcode)); got != want {
			t.Errorf("%s answers %v, want %v", rcode, got, want)
		}
	}
	if got := histCount(m, "weir_dns_duration_seconds", edge); got != 2 {
		t.Errorf("%v DNS durations, want 2 (one per answer)", got)
	}
	if got := m.Sum("weir_tcp_bytes_total", map[string]string{"src_workload": comm, "dst_workload": apiVIP}); got != 0 {
		t.Errorf("%v bytes to the raw virtual IP, want 0 (all named by DNS)", got)
	}
}

// commOf is the comm of a process running the executable path.
func commOf(t *testing.T, path string) string {
	t.Helper()
	base := path[strings.LastIndex(path, "/")+1:]
	if len(base) > 15 {
		base = base[:15]
	}
	return base
}

// histCount sums the sample counts of a histogram's series that match.
func histCount(m harness.Metrics, name string, match map[string]string) float64 {
	mf, ok := m[name]
	if !ok {
		return 0
	}
	var n float64
	for _, metric := range mf.GetMetric() {
		ok := true
		for k, v := range match {
			found := false
			for _, l := range metric.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			ok = ok && found
		}
		if ok {
			n += float64(metric.GetHistogram().GetSampleCount())
		}
	}
	return n
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// nft loads a ruleset into a namespace.
func nft(t *testing.T, ns, rules string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", ns, err, out)
	}
}
