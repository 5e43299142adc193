package match

import (
	"net/netip"
	"runtime"
	"testing"
)

// BenchmarkHeapPerSocket builds 100 nodes' tables of 100,000 sockets (half
// the connections joined across two nodes, half with a peer outside the
// fleet) and reports the live heap per tracked socket.
func BenchmarkHeapPerSocket(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		e, _ := newTestEngine(b, true)
		const nodes, perNode = 100, 1000
		sess := make([]*Session, nodes)
		batches := make([]Batch, nodes)
		handles := make([]uint32, nodes)
		addr := func(n int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(n >> 8), byte(n)}) }
		for n := range sess {
			sess[n] = openSession(b, e, "node-"+string(rune('a'+n%26))+string(rune('a'+n/26)), 1)
			batches[n] = Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: "app"}}}
		}
		add := func(n int, k Socket) {
			handles[n]++
			k.Handle, k.Process, k.Netns, k.NewConnection, k.Cookie = handles[n], 1, 4026531840, true, uint64(handles[n])
			batches[n].Sockets = append(batches[n].Sockets, k)
		}
		sockets := 0
		for n := range nodes {
			for i := range perNode * 2 / 3 {
				c := netip.AddrPortFrom(addr(n), uint16(10000+i))
				if i%2 == 0 {
					peer := (n + 1 + i%(nodes-1)) % nodes
					s := netip.AddrPortFrom(addr(peer), 443)
					add(n, Socket{Role: RoleClient, Local: c, Remote: s})
					add(peer, Socket{Role: RoleServer, Local: s, Remote: c})
					sockets += 2
				} else {
					add(n, Socket{Role: RoleClient, Local: c, Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 443)})
					sockets++
				}
			}
		}
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		for n := range sess {
			if err := e.Apply(sess[n], &batches[n]); err != nil {
				b.Fatal(err)
			}
			batches[n] = Batch{}
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(sockets), "heap-B/socket")
		runtime.KeepAlive(e)
	}
}
