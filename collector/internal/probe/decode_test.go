package probe

import (
	"bytes"
	"io"
	"net/netip"
	"testing"
	"testing/iotest"
	"unsafe"
)

// rawEvent lays out e as the BPF programs write it.
func rawEvent(e tcpEvent) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&e)), unsafe.Sizeof(e))...)
}

func rawDiscovered(d tcpIterDiscovered) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&d)), unsafe.Sizeof(d))...)
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
				e.Endpoint.Kind = 2
				e.Endpoint.Cookie, e.Endpoint.Role, e.Endpoint.Family = 0x1234, 1, afInet
				e.Endpoint.Saddr, e.Endpoint.Daddr = v4(127, 0, 0, 1), v4(127, 0, 0, 2)
				e.Endpoint.Sport, e.Endpoint.Dport, e.Endpoint.Netns = 40000, 80, 4026531840
				e.Owner.Pid, e.Owner.Comm = 42, comm16("curl")
				e.Owner.StartTime, e.Owner.CgroupId = 12_345_678_901, 7 // ns since boot
				e.Counters.BytesAcked, e.Counters.BytesReceived = 100, 200
				e.Counters.Delivered, e.Counters.DataSegsIn = 3, 4
				return e
			}(),
			want: Event{
				Kind: EventClose,
				Endpoint: Endpoint{
					Cookie: 0x1234, Role: RoleClient,
					LocalAddr: netip.MustParseAddr("127.0.0.1"), LocalPort: 40000,
					RemoteAddr: netip.MustParseAddr("127.0.0.2"), RemotePort: 80,
					NetNS: 4026531840,
				},
				Owner:    Owner{PID: 42, StartTime: 1234, CgroupID: 7, Comm: "curl"},
				Counters: Counters{BytesAcked: 100, BytesReceived: 200, SegsDelivered: 3, DataSegsIn: 4},
			},
		},
		{
			name: "ipv6 close",
			in: func() (e tcpEvent) {
				e.Endpoint.Kind, e.Endpoint.Role, e.Endpoint.Family = 2, 2, afInet6
				e.Endpoint.Saddr, e.Endpoint.Daddr, e.Endpoint.Sport, e.Endpoint.Dport = loop6, loop6, 443, 50000
				return e
			}(),
			want: Event{
				Kind: EventClose,
				Endpoint: Endpoint{
					Role:      RoleServer,
					LocalAddr: netip.IPv6Loopback(), LocalPort: 443,
					RemoteAddr: netip.IPv6Loopback(), RemotePort: 50000,
				},
			},
		},
		{
			name: "v4-mapped v6 is unmapped",
			in: func() (e tcpEvent) {
				e.Endpoint.Kind, e.Endpoint.Family = 3, afInet6
				e.Endpoint.Saddr, e.Endpoint.Sport = mapped, 8080
				e.Owner.Comm = comm16("a-name-of-16-chr") // no NUL
				return e
			}(),
			want: Event{
				Kind: EventListen,
				Endpoint: Endpoint{
					LocalAddr: netip.MustParseAddr("10.1.2.3"), LocalPort: 8080,
					RemoteAddr: netip.IPv6Unspecified(),
				},
				Owner: Owner{Comm: "a-name-of-16-chr"},
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

func TestDecodeDiscovered(t *testing.T) {
	var d tcpIterDiscovered
	d.Event.Endpoint.Kind, d.Event.Endpoint.Family, d.Inode = 4, afInet, 987654
	d.Event.Counters.BytesAcked = 5
	want := Event{
		Kind: EventExisting,
		Endpoint: Endpoint{
			LocalAddr: netip.IPv4Unspecified(), RemoteAddr: netip.IPv4Unspecified(),
		},
		Inode:    987654,
		Counters: Counters{BytesAcked: 5},
	}
	got, err := decodeDiscovered(rawDiscovered(d))
	if err != nil || got != want {
		t.Errorf("decodeDiscovered = %+v, %v\nwant %+v", got, err, want)
	}
	if _, err := decodeDiscovered(rawEvent(tcpEvent(d.Event))); err == nil {
		t.Error("decodeDiscovered of a short record: no error")
	}
}

func TestDecodeEventRejects(t *testing.T) {
	var unknown tcpEvent
	unknown.Endpoint.Kind, unknown.Endpoint.Family = 9, afInet
	formerOpen := unknown
	formerOpen.Endpoint.Kind = 1 // the open event, no longer sent
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"empty", nil},
		{"short", make([]byte, 10)},
		{"unknown kind", rawEvent(unknown)},
		{"former open kind", rawEvent(formerOpen)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ev, err := decodeEvent(tc.raw); err == nil {
				t.Fatalf("decodeEvent = %+v, want an error", ev)
			}
		})
	}
}

// TestReadRecords: records come out whole however the reads split them.
func TestReadRecords(t *testing.T) {
	var stream []byte
	for i := range 50 {
		var e tcpEvent
		e.Endpoint.Cookie = uint64(i + 1)
		stream = append(stream, rawEvent(e)...)
	}
	for _, tc := range []struct {
		name string
		r    io.Reader
		buf  int
	}{
		{"one read", bytes.NewReader(stream), len(stream) + 1},
		{"one byte at a time", iotest.OneByteReader(bytes.NewReader(stream)), 1000},
		{"half reads", iotest.HalfReader(bytes.NewReader(stream)), 1000},
		{"buffer of one record and a bit", bytes.NewReader(stream), eventSize + 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cookies []uint64
			err := readRecords(tc.r, make([]byte, tc.buf), eventSize, func(raw []byte) {
				cookies = append(cookies, (*tcpEvent)(unsafe.Pointer(&raw[0])).Endpoint.Cookie)
			}, nil)
			if err != nil {
				t.Fatalf("readRecords: %v", err)
			}
			if len(cookies) != 50 {
				t.Fatalf("%d records, want 50", len(cookies))
			}
			for i, c := range cookies {
				if c != uint64(i+1) {
					t.Fatalf("record %d: cookie %d", i, c)
				}
			}
		})
	}
	if err := readRecords(bytes.NewReader(stream[:eventSize+3]), make([]byte, 1000), eventSize, func([]byte) {}, nil); err == nil {
		t.Error("a truncated record: no error")
	}
}

func BenchmarkDecodeEvent(b *testing.B) {
	var e tcpEvent
	e.Endpoint.Kind, e.Endpoint.Family, e.Owner.Comm = 2, afInet6, comm16("nginx")
	raw := rawEvent(e)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeEvent(raw); err != nil {
			b.Fatal(err)
		}
	}
}
