package telemetry2

import (
	"net"
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
// server's port 53, over IPv4 (A) and IPv6 (AAAA): one answered, one
// NXDOMAIN, one never answered. The client then connects to the answered
// name, whose address (a virtual IP that the server's host DNATs to itself)
// no collector reports as local: that end is named by the DNS name.
func TestPrivilegedDNS(t *testing.T) {
	testDNS(t, "udp")
}

// TestPrivilegedDNSOverTCP is TestPrivilegedDNS with the client's queries
// over TCP to port 53, each answer split by the server across three
// segments (the length prefix alone, then the message in two): the
// collector reassembles them, and the counts are the same, exactly.
func TestPrivilegedDNSOverTCP(t *testing.T) {
	testDNS(t, "tcp")
}

func testDNS(t *testing.T, transport string) {
	harness.RequireRoot(t)
	client, server := harness.TwoHosts(t, "t2dns")
	dnat(t, client, server)
	// NAT joins are off here: the end stays the virtual IP, named by DNS.
	w := harness.StartWeir(t, harness.WeirOptions{CollectorArgs: []string{"--dns", "--dns-timeout", "1s", "--nat=false"}})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dnsArg, clientPrefix := "udp=", ""
	if transport == "tcp" {
		dnsArg, clientPrefix = "dnstcp=", "tcp/"
	}
	srv := harness.Start(t, "dns-server", server.Exec(self, "weir-helper", "dnsserver",
		dnsArg+server.IPv4+":53", dnsArg+"["+server.IPv6+"]:53", "tcp="+server.IPv4+":8080", "tcp=["+server.IPv6+"]:8080")...)
	srv.WaitLine(t, "ready", 30*time.Second)

	comm := commOf(t, self)
	families := []struct {
		network, server, vip string
		bytes                int
	}{
		{"ip4", server.IPv4, apiVIP, 12345},
		{"ip6", server.IPv6, apiVIP6, 23456},
	}
	total := 0
	for _, f := range families {
		cli := harness.Start(t, "dns-client-"+f.network, client.Exec(self, "weir-helper", "dnsclient",
			clientPrefix+net.JoinHostPort(f.server, "53"), f.network, strconv.Itoa(f.bytes), apiName, "nothere.example.com.", slowName)...)
		for _, want := range []string{"lookup " + apiName + " " + f.vip, "lookup nothere.example.com. notfound", "lookup " + slowName + " timeout"} {
			if got := cli.WaitLine(t, "lookup", 30*time.Second); got != want {
				t.Fatalf("%s client: %q, want %q", f.network, got, want)
			}
		}
		cli.WaitLine(t, "sent", 30*time.Second)
		total += f.bytes
	}

	api := map[string]string{"src_workload": comm, "dst_workload": "api.example.com", "dst_kind": "external"}
	harness.WaitFor(t, w.MetricsURL, 60*time.Second, "the client's bytes on the DNS-named end", func(m harness.Metrics) bool {
		return m.Sum("weir_tcp_bytes_total", api) == float64(total)
	})
	for _, f := range families {
		edge := map[string]string{"src_workload": comm, "src_kind": "process", "dst_workload": f.server, "dst_kind": "external"}
		with := func(k, v string) map[string]string {
			m := map[string]string{k: v}
			for a, b := range edge {
				m[a] = b
			}
			return m
		}
		m := harness.WaitFor(t, w.MetricsURL, 60*time.Second, f.network+": DNS answers and timeouts", func(m harness.Metrics) bool {
			return m.Sum("weir_dns_responses_total", with("rcode", "NOERROR")) >= 1 &&
				m.Sum("weir_dns_responses_total", with("rcode", "NXDOMAIN")) >= 1 &&
				m.Sum("weir_dns_timeouts_total", edge) >= 1
		})
		// Each lookup sent one query: exact.
		for rcode, want := range map[string]float64{"NOERROR": 1, "NXDOMAIN": 1} {
			if got := m.Sum("weir_dns_responses_total", with("rcode", rcode)); got != want {
				t.Errorf("%s: %s answers %v, want %v", f.network, rcode, got, want)
			}
		}
		if got := histCount(m, "weir_dns_duration_seconds", edge); got != 2 {
			t.Errorf("%s: %v DNS durations, want 2 (one per answer)", f.network, got)
		}
		if got := m.Sum("weir_tcp_bytes_total", map[string]string{"src_workload": comm, "dst_workload": f.vip}); got != 0 {
			t.Errorf("%s: %v bytes to the raw virtual IP, want 0 (all named by DNS)", f.network, got)
		}
	}
	if transport != "tcp" {
		return
	}
	c, err := harness.Scrape(w.CollectorMetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	// Per family: three queries and two answers, each its own message.
	if got := c.Sum("weir_collector_dns_tcp_messages_total", nil); got < 10 {
		t.Errorf("%v DNS messages reassembled from TCP, want at least 10", got)
	}
	if got := c.Sum("weir_collector_dns_tcp_dropped_total", nil); got != 0 {
		t.Errorf("%v DNS-over-TCP segments dropped, want 0", got)
	}
	t.Logf("collector: %v DNS messages reassembled from TCP, %v parse errors", c.Sum("weir_collector_dns_tcp_messages_total", nil),
		c.Sum("weir_collector_dns_parse_errors_total", nil))
}

// dnat routes the virtual IPs (v4 and v6) from client to server, where
// they are rewritten to the server's own addresses, port 80 to 8080: a
// ClusterIP's stand-in.
func dnat(t *testing.T, client, server harness.Host) {
	t.Helper()
	run(t, "ip", "-n", client.NS, "route", "add", apiVIP+"/32", "via", server.IPv4)
	run(t, "ip", "-n", client.NS, "-6", "route", "add", apiVIP6+"/128", "via", server.IPv6)
	nft(t, server.NS, `table ip weirt2 {
	chain pre {
		type nat hook prerouting priority -100;
		ip daddr `+apiVIP+` tcp dport 80 dnat to `+server.IPv4+`:8080
	}
}
table ip6 weirt2 {
	chain pre {
		type nat hook prerouting priority -100;
		ip6 daddr `+apiVIP6+` tcp dport 80 dnat to [`+server.IPv6+`]:8080
	}
}`)
}

// commOf is the comm of a process running the executable path.
func commOf(t testing.TB, path string) string {
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

func run(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// nft loads a ruleset into a namespace.
func nft(t testing.TB, ns, rules string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", ns, err, out)
	}
}
