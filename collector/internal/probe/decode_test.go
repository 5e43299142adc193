package probe

import (
	"net/netip"
	"testing"
	"unsafe"
)

// rawEvent lays out e as the BPF program writes it to the ring.
func rawEvent(e tcpEvent) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&e)), unsafe.Sizeof(e))...)
}

func comm16(s string) (c [16]int8) {
	for i := range min(len(s), len(c)) {
		c[i] = int8(s[i])
	}
	return c
}

func TestDecodeEvent(t *testing.T) {
	v4 := func(a, b, c, d byte) (x [16]uint8) { x[0], x[1], x[2], x[3] = a, b, c, d; return x }
	mapped := netip.MustParseAddr("::ffff:10.1.2.3").As16()
	loop6 := netip.IPv6Loopback().As16()

	for _, tc := range []struct {
		name string
		in   tcpEvent
		want Event
	}{
		{
			name: "ipv4 close",
			in: func() (e tcpEvent) {
				e.Sk, e.Kind, e.Role, e.Family = 0xffff1234, 2, 1, afInet
				e.Saddr, e.Daddr, e.Sport, e.Dport = v4(127, 0, 0, 1), v4(127, 0, 0, 2), 40000, 80
				e.Netns, e.Pid, e.Comm = 4026531840, 42, comm16("curl")
				e.Counters.BytesAcked, e.Counters.BytesReceived = 100, 200
				e.Counters.Delivered, e.Counters.DataSegsIn = 3, 4
				return e
			}(),
			want: Event{
				Kind: EventClose, Role: RoleClient, Sock: 0xffff1234,
				LocalAddr: netip.MustParseAddr("127.0.0.1"), LocalPort: 40000,
				RemoteAddr: netip.MustParseAddr("127.0.0.2"), RemotePort: 80,
				NetNS: 4026531840, Owner: Owner{PID: 42, Comm: "curl"},
				Counters: Counters{BytesAcked: 100, BytesReceived: 200, SegsDelivered: 3, DataSegsIn: 4},
			},
		},
		{
			name: "ipv6 open",
			in: func() (e tcpEvent) {
				e.Kind, e.Role, e.Family = 1, 2, afInet6
				e.Saddr, e.Daddr, e.Sport, e.Dport = loop6, loop6, 443, 50000
				return e
			}(),
			want: Event{
				Kind: EventOpen, Role: RoleServer,
				LocalAddr: netip.IPv6Loopback(), LocalPort: 443,
				RemoteAddr: netip.IPv6Loopback(), RemotePort: 50000,
			},
		},
		{
			name: "v4-mapped v6 is unmapped",
			in: func() (e tcpEvent) {
				e.Kind, e.Family = 3, afInet6
				e.Saddr, e.Sport = mapped, 8080
				e.Comm = comm16("a-name-of-16-chr") // no NUL
				return e
			}(),
			want: Event{
				Kind: EventListen, LocalAddr: netip.MustParseAddr("10.1.2.3"), LocalPort: 8080,
				RemoteAddr: netip.IPv6Unspecified(), Owner: Owner{Comm: "a-name-of-16-chr"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeEvent(rawEvent(tc.in))
			if err != nil {
				t.Fatalf("decodeEvent: %v", err)
			}
			if got != tc.want {
				t.Errorf("decodeEvent:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeEventRejects(t *testing.T) {
	var unknown tcpEvent
	unknown.Kind, unknown.Family = 9, afInet
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"empty", nil},
		{"short", make([]byte, 10)},
		{"unknown kind", rawEvent(unknown)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ev, err := decodeEvent(tc.raw); err == nil {
				t.Fatalf("decodeEvent = %+v, want an error", ev)
			}
		})
	}
}

func BenchmarkDecodeEvent(b *testing.B) {
	var e tcpEvent
	e.Kind, e.Family, e.Comm = 2, afInet6, comm16("nginx")
	raw := rawEvent(e)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeEvent(raw); err != nil {
			b.Fatal(err)
		}
	}
}
