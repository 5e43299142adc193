package probe

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// TestPrivilegedDNS sends a query to a UDP server on port 53 of a loopback
// address, which answers it; the probe reports the query on egress with
// the sender, and the answer on ingress, both with their payloads. A UDP
// packet to another port and a TCP connection report nothing.
func TestPrivilegedDNS(t *testing.T) {
	requirePrivileged(t)
	d, err := OpenDNS(DNSConfig{RingBytes: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 97), Port: 53})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			buf[2] |= 0x80 // QR: a response
			_, _ = srv.WriteToUDP(buf[:n], from)
		}
	}()
	other, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 97), Port: 5353})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	query := []byte{0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'x', 0, 0, 1, 0, 1}
	c, err := net.Dial("udp", "127.0.0.97:5353")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write(query)
	c.Close()
	c, err = net.Dial("udp", "127.0.0.97:53")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(query); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()

	var got []DNSEvent
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(got) < 2 {
			ev, err := d.ReadEvent()
			if err != nil {
				return
			}
			if ev.Src != local && ev.Dst != local {
				continue // another test's or process's DNS
			}
			ev.Payload = bytes.Clone(ev.Payload)
			got = append(got, ev)
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		d.Close()
		<-done
		t.Fatalf("events %+v, want a query and an answer", got)
	}
	q, a := got[0], got[1]
	if !q.Egress || q.Dst.Port() != 53 || q.Src != local || !bytes.Equal(q.Payload, query) {
		t.Errorf("query %+v", q)
	}
	if q.Comm == "" || q.PID == 0 || q.NetNS == 0 || q.Cookie == 0 {
		t.Errorf("query without its sender: %+v", q)
	}
	if a.Egress || a.Src.Port() != 53 || a.Dst != local || a.Payload[2]&0x80 == 0 {
		t.Errorf("answer %+v", a)
	}
	if a.Cookie != q.Cookie {
		t.Errorf("answer cookie %d, query cookie %d", a.Cookie, q.Cookie)
	}
	if n, err := d.RingFull(); err != nil || n != 0 {
		t.Errorf("ring full %d, %v", n, err)
	}
}

// tcpPacket is an IPv4 TCP segment, as cgroup_skb sees it (from the IP
// header).
func tcpPacket() []byte {
	p := make([]byte, 20+20+100)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, 6
	copy(p[12:], []byte{127, 0, 0, 1, 127, 0, 0, 1})
	binary.BigEndian.PutUint16(p[20:], 40000)
	binary.BigEndian.PutUint16(p[22:], 80)
	return p
}

// BenchmarkDNSFastPath runs the egress program on a TCP segment through
// BPF_PROG_TEST_RUN: the cost every non-DNS packet pays.
func BenchmarkDNSFastPath(b *testing.B) {
	b.ReportAllocs()
	requirePrivileged(b)
	var objs dnsObjects
	if err := loadDnsObjects(&objs, nil); err != nil {
		b.Fatal(err)
	}
	defer objs.Close()
	// test_run for cgroup_skb takes an Ethernet frame.
	frame := append(make([]byte, 14), tcpPacket()...)
	binary.BigEndian.PutUint16(frame[12:], 0x0800)
	ret, per, err := objs.DnsEgress.Benchmark(frame, b.N, b.ResetTimer)
	if err != nil {
		b.Skipf("test run: %v", err)
	}
	if ret != 1 {
		b.Errorf("return %d, want 1 (pass)", ret)
	}
	b.ReportMetric(float64(per.Nanoseconds()), "ns/run")
}
