package encode

import (
	"math"
	"testing"

	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/sockets"
)

// FuzzRoundTrip drives a table and its encoder with a script of
// connections established while watched (first seen by a sample or by their
// close), sockets found at start, sockets discovery missed, traffic (segment
// counters wrapping), counter regressions, owner changes, closes, polls,
// reports and resyncs, under a small socket cap. Every batch must decode
// without a protocol error, and in the end every connection's decoded
// totals must be exactly the traffic it had while tracked: nothing counted
// twice, nothing of a refused socket, nothing of a baseline.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte{0, 1, 2, 20, 6, 7, 4, 7})
	f.Add([]byte{1, 5, 5, 2, 200, 6, 3, 6, 2, 9, 6, 7, 8, 7, 4, 7})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 7, 2, 1, 2, 2, 6, 4, 0, 7})
	f.Fuzz(func(t *testing.T, script []byte) {
		const maxSockets = 6
		enc, tab, _ := newEncoder(t, func(c *sockets.Config) { c.MaxSockets = maxSockets })
		d := newDecoder()
		type conn struct {
			ep       probe.Endpoint
			owner    probe.Owner
			cur      probe.Counters // the kernel's counters
			seen     probe.Counters // as the table last read them
			want     sums           // traffic between reads while tracked
			admitted bool
			unseen   bool // not known to the table until a poll samples it or it closes
			closed   bool
		}
		var conns []*conn
		var live []*conn // open in the kernel, admitted or not
		admitted := 0
		owners := []probe.Owner{curl, nginx, nginxW}
		next := func(i *int) byte {
			if *i >= len(script) {
				return 0
			}
			*i++
			return script[*i-1]
		}
		newConn := func(role probe.Role, c probe.Counters) *conn {
			n := uint64(len(conns) + 1)
			x := &conn{ep: endpoint(n, role, uint16(n)), owner: owners[int(n)%len(owners)], cur: c}
			conns = append(conns, x)
			live = append(live, x)
			return x
		}
		admit := func(x *conn) {
			x.seen = x.cur
			if admitted < maxSockets {
				x.admitted = true
				admitted++
			}
		}
		// read is what the table counts when it reads x's counters: what
		// moved since its last read, the 32-bit counters modulo 2^32, and
		// nothing for a counter that went backwards.
		read := func(x *conn) {
			if !x.admitted {
				return
			}
			if x.cur.BytesAcked >= x.seen.BytesAcked {
				x.want.bytesSent += x.cur.BytesAcked - x.seen.BytesAcked
			}
			if x.cur.BytesReceived >= x.seen.BytesReceived {
				x.want.bytesReceived += x.cur.BytesReceived - x.seen.BytesReceived
			}
			if d := x.cur.SegsDelivered - x.seen.SegsDelivered; d <= 1<<31 {
				x.want.segsSent += uint64(d)
			}
			if d := x.cur.DataSegsIn - x.seen.DataSegsIn; d <= 1<<31 {
				x.want.segsReceived += uint64(d)
			}
			x.seen = x.cur
		}
		// meet is the table's first read of x, from its first sample or its
		// close: counted from the handshake if it has a role, else the
		// baseline.
		meet := func(x *conn) {
			x.unseen = false
			admit(x)
			if x.ep.Role != probe.RoleUnknown {
				x.seen = probe.Counters{}
				read(x)
			}
		}
		poll := func() {
			var smp samples
			for _, x := range live {
				smp = append(smp, probe.Sample{Endpoint: x.ep, Owner: x.owner, Counters: x.cur})
				// The table meets the sockets in this order: an unknown
				// one takes a free slot, its counters the baseline.
				if x.unseen {
					meet(x)
				} else {
					read(x)
				}
			}
			if err := tab.Poll(smp); err != nil {
				t.Fatal(err)
			}
		}
		report := func() {
			if err := d.apply(enc.Report(now)); err != nil {
				t.Fatal(err)
			}
		}
		pick := func(i *int) *conn {
			if len(live) == 0 {
				return nil
			}
			return live[int(next(i))%len(live)]
		}
		for i := 0; i < len(script) && len(conns) < 200; {
			switch op := next(&i) % 10; op {
			case 0: // a connection established while watched: no event
				x := newConn(probe.Role(1+next(&i)%2), probe.Counters{})
				x.unseen = true
			case 1: // found open at start: its counters are the baseline
				x := newConn(probe.RoleUnknown, probe.Counters{BytesAcked: 1 << 40, BytesReceived: 12345, SegsDelivered: math.MaxUint32 - 3, DataSegsIn: math.MaxUint32})
				admit(x)
				tab.Apply(probe.Event{Kind: probe.EventExisting, Endpoint: x.ep, Owner: x.owner, Counters: x.cur})
			case 2: // traffic
				if x := pick(&i); x != nil {
					n := uint64(next(&i))
					x.cur.BytesAcked += n * 1000
					x.cur.BytesReceived += n
					x.cur.SegsDelivered += uint32(n)
					x.cur.DataSegsIn += uint32(n / 2)
				}
			case 3: // counters go backwards
				if x := pick(&i); x != nil {
					x.cur.BytesAcked /= 2
					x.cur.SegsDelivered -= 5
				}
			case 4: // close
				if x := pick(&i); x != nil {
					tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: x.ep, Owner: x.owner, Counters: x.cur})
					x.closed = true
					switch {
					case !x.unseen:
						read(x)
					case x.ep.Role != probe.RoleUnknown:
						// Opened and closed between two polls.
						meet(x)
					}
					if x.admitted {
						admitted--
					}
					for j, y := range live {
						if y == x {
							live = append(live[:j], live[j+1:]...)
							break
						}
					}
				}
			case 5: // found open at start but missed by discovery: first seen in a sample
				x := newConn(probe.RoleUnknown, probe.Counters{BytesAcked: 777, SegsDelivered: 3})
				x.unseen = true
			case 6:
				poll()
			case 7:
				report()
			case 8: // the reducer comes back: a new epoch
				enc.Resync()
				d.newEpoch()
			case 9: // another process uses the socket
				if x := pick(&i); x != nil {
					x.owner = owners[int(next(&i))%len(owners)]
				}
			}
		}
		poll()
		report()
		for _, x := range conns {
			k := tupleKey(netns, localIP, x.ep.LocalPort, remoteIP, 80)
			if got := d.totals[k]; got != x.want {
				t.Fatalf("socket %d (role %d, admitted %v, closed %v): decoded %+v, want %+v", x.ep.Cookie, x.ep.Role, x.admitted, x.closed, got, x.want)
			}
		}
	})
}
