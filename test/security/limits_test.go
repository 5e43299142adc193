package security

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/test/internal/harness"
)

// TestPrivilegedSessionSocketCap: a client that announces ten million
// sockets, ten thousand a batch, is cut off with RESOURCE_EXHAUSTED at the
// reducer's cap; the reducer holds no more than the cap and its memory
// grows by what the cap allows, not by what was announced.
func TestPrivilegedSessionSocketCap(t *testing.T) {
	harness.RequireRoot(t)
	const capSockets, perBatch, announced = 50_000, 10_000, 10_000_000
	w := harness.StartWeir(t, harness.WeirOptions{NoCollector: true, ReducerArgs: []string{"--max-session-sockets", "50000"}})
	rss := func() float64 {
		t.Helper()
		m, err := harness.Scrape(w.MetricsURL)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := m.Value("process_resident_memory_bytes", nil)
		return v
	}
	base := rss()
	batches := make([]*ingestv1.Batch, 0, announced/perBatch)
	for i := range announced / perBatch {
		b := &ingestv1.Batch{Sequence: uint64(i + 1)}
		if i == 0 {
			b.Processes = []*ingestv1.Process{{Handle: 1, Pid: 1, Comm: "flood"}}
		}
		if i <= capSockets/perBatch { // the batches after the cut are never sent
			b.Sockets = make([]*ingestv1.Socket, perBatch)
			for j := range b.Sockets {
				h := uint32(i*perBatch + j + 1)
				b.Sockets[j] = &ingestv1.Socket{Handle: h, Process: 1, Role: ingestv1.Role_ROLE_CLIENT,
					LocalAddr: []byte{198, 18, byte(h >> 16), byte(h >> 8)}, LocalPort: h & 0xffff,
					RemoteAddr: []byte{198, 19, 0, 1}, RemotePort: 443}
			}
		}
		batches = append(batches, b)
	}
	err := session(t.Context(), ingestClient(t, w.GRPCAddr, nil, nil), hello("flood-node", uint64(time.Now().UnixNano())), batches...)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "batch 6: 50000 live sockets and 10000 new ones are more than this reducer's cap of 50000 per session") {
		t.Fatalf("flood ended with %v, want RESOURCE_EXHAUSTED at batch 6", err)
	}
	m := harness.WaitFor(t, w.MetricsURL, 5*time.Second, "the refusal counted", func(m harness.Metrics) bool {
		return m.Sum("weir_reducer_streams_rejected_total", map[string]string{"reason": "session_sockets_cap"}) == 1
	})
	if v, _ := m.Value("weir_reducer_sockets", nil); v > capSockets {
		t.Errorf("the reducer holds %v sockets, over the cap of %d", v, capSockets)
	}
	grown := rss() - base
	t.Logf("resident memory grew by %.1f MiB for %d sockets held (%.0f B each); %d were announced", grown/(1<<20), capSockets, grown/capSockets, announced)
	// What the cap allows: a few hundred bytes a socket; ten million
	// sockets would be gigabytes.
	if grown > 256<<20 {
		t.Errorf("resident memory grew by %.0f MiB", grown/(1<<20))
	}
	if !w.Reducer.Alive() {
		t.Fatal("the reducer exited")
	}
}
