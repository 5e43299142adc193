package dns

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/weir-project/weir/collector/internal/cgroups"
	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/procs"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	client = netip.MustParseAddrPort("198.18.0.1:40000")
	server = netip.MustParseAddrPort("198.18.0.2:53")
	apiV4  = netip.MustParseAddr("198.18.7.7")
	apiV6  = netip.MustParseAddr("2001:2::77")
)

type fakeProcs struct{}

func (fakeProcs) Describe(pid uint32, _ uint64, comm string) procs.Info {
	return procs.Info{PID: pid, Comm: comm, Container: cgroups.Container{ID: "c0ffee"}}
}

func message(t *testing.T, id uint16, response bool, rcode dnsmessage.RCode, name string, qtype dnsmessage.Type, ttl uint32, addrs ...netip.Addr) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: id, Response: response, RCode: rcode})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		t.Fatal(err)
	}
	n := dnsmessage.MustNewName(name)
	if err := b.Question(dnsmessage.Question{Name: n, Type: qtype, Class: dnsmessage.ClassINET}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartAnswers(); err != nil {
		t.Fatal(err)
	}
	// A CNAME first, as resolvers answer for an alias.
	if len(addrs) > 0 {
		h := dnsmessage.ResourceHeader{Name: n, Class: dnsmessage.ClassINET, TTL: ttl + 100}
		if err := b.CNAMEResource(h, dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName("edge.cdn.example.")}); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range addrs {
		h := dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("edge.cdn.example."), Class: dnsmessage.ClassINET, TTL: ttl}
		var err error
		if a.Is4() {
			err = b.AResource(h, dnsmessage.AResource{A: a.As4()})
		} else {
			err = b.AAAAResource(h, dnsmessage.AAAAResource{AAAA: a.As16()})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	out, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func newTracker(t *testing.T, cfg Config) (*Tracker, *time.Duration) {
	t.Helper()
	tr, err := New(cfg, fakeProcs{}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := 100 * time.Second
	tr.now = func() time.Duration { return now }
	return tr, &now
}

func q(t *testing.T, at time.Duration, id uint16, name string) probe.DNSEvent {
	return probe.DNSEvent{Time: at, Cookie: 1, PID: 7, NetNS: 4026531840, Comm: "curl", CgroupID: 9, Egress: true,
		Src: client, Dst: server, Payload: message(t, id, false, 0, name, dnsmessage.TypeA, 0)}
}

func a(t *testing.T, at time.Duration, id uint16, rcode dnsmessage.RCode, name string, addrs ...netip.Addr) probe.DNSEvent {
	return probe.DNSEvent{Time: at, Cookie: 1, CgroupID: 9, Src: server, Dst: client,
		Payload: message(t, id, true, rcode, name, dnsmessage.TypeA, 30, addrs...)}
}

func TestTracker(t *testing.T) {
	tr, now := newTracker(t, DefaultConfig())
	tr.Apply(q(t, 90*time.Second, 1, "API.example.com."))
	tr.Apply(a(t, 90*time.Second+3*time.Millisecond, 1, dnsmessage.RCodeSuccess, "API.example.com.", apiV4, apiV6))
	tr.Apply(q(t, 91*time.Second, 2, "nothere.example.com."))
	tr.Apply(a(t, 91*time.Second+time.Millisecond, 2, dnsmessage.RCodeNameError, "nothere.example.com."))
	tr.Apply(q(t, 92*time.Second, 3, "slow.example.com."))                    // times out at the drain (8 s > 5 s)
	tr.Apply(q(t, 99*time.Second, 4, "pending.example.com."))                 // still waiting
	tr.Apply(a(t, 99*time.Second, 77, dnsmessage.RCodeSuccess, "x.example.")) // unasked
	tr.Apply(probe.DNSEvent{Egress: true, Payload: []byte{1, 2, 3}})          // garbage

	flows, answers, perr := tr.Drain()
	if perr != 1 {
		t.Errorf("parse errors %d, want 1", perr)
	}
	if len(flows) != 1 {
		t.Fatalf("flows %v, want 1", flows)
	}
	f := flows[0]
	if netip.AddrFrom4([4]byte(f.ClientAddr)) != client.Addr() || f.ServerPort != 53 || f.Comm != "curl" || f.ContainerId != "c0ffee" || f.CgroupId != 9 {
		t.Errorf("flow %v", f)
	}
	got := map[uint32]uint64{}
	for _, r := range f.Responses {
		got[r.Rcode] = r.Count
	}
	if got[0] != 1 || got[3] != 1 || len(got) != 2 {
		t.Errorf("responses %v, want NOERROR 1, NXDOMAIN 1", got)
	}
	if f.Timeouts != 1 {
		t.Errorf("timeouts %d, want 1", f.Timeouts)
	}
	slices.Sort(f.DurationsUs)
	if !slices.Equal(f.DurationsUs, []uint32{1000, 3000}) {
		t.Errorf("durations %v", f.DurationsUs)
	}
	if len(answers) != 1 || answers[0].Name != "api.example.com" || answers[0].TtlSeconds != 30 || len(answers[0].Addrs) != 2 {
		t.Fatalf("answers %v", answers)
	}

	// The next interval: the pending query times out, nothing else.
	*now += 10 * time.Second
	flows, answers, _ = tr.Drain()
	if len(flows) != 1 || flows[0].Timeouts != 1 || len(flows[0].Responses) != 0 || len(answers) != 0 {
		t.Errorf("second drain %v %v", flows, answers)
	}
	flows, _, _ = tr.Drain()
	if len(flows) != 0 {
		t.Errorf("third drain %v", flows)
	}
}

func TestCaps(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxPending, cfg.MaxDurations, cfg.MaxAnswers = 2, 1, 1
	tr, _ := newTracker(t, cfg)
	for id := uint16(1); id <= 3; id++ {
		tr.Apply(q(t, 99*time.Second, id, "n.example."))
	}
	if len(tr.pending) != 2 {
		t.Errorf("%d pending, want the cap 2", len(tr.pending))
	}
	tr.Apply(a(t, 99*time.Second, 1, dnsmessage.RCodeSuccess, "n.example.", apiV4))
	tr.Apply(a(t, 99*time.Second, 2, dnsmessage.RCodeSuccess, "m.example.", apiV6))
	flows, answers, _ := tr.Drain()
	if len(flows) != 1 || len(flows[0].DurationsUs) != 1 || flows[0].Responses[0].Count != 2 {
		t.Errorf("flows %v", flows)
	}
	if len(answers) != 1 {
		t.Errorf("answers %v, want the cap 1", answers)
	}
}

func FuzzApply(f *testing.F) {
	f.Add([]byte{0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0}, false)
	f.Fuzz(func(t *testing.T, payload []byte, egress bool) {
		tr, _ := newTracker(t, DefaultConfig())
		tr.Apply(probe.DNSEvent{Egress: egress, Src: client, Dst: server, Payload: payload})
		tr.Drain()
	})
}
