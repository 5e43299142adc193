package probe

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// TestPrivilegedDNSOverTCP connects to a TCP server on port 53 of a
// loopback address, sends a length-prefixed query, and gets the answer in
// two segments (its length prefix alone, then the message): the probe
// reports the query's segment on egress and the answer's two segments on
// ingress, each with its sequence number and length, and nothing for the
// segments without payload (the handshake, the ACKs, the FINs).
func TestPrivilegedDNSOverTCP(t *testing.T) {
	requirePrivileged(t)
	d, err := OpenDNS(DNSConfig{RingBytes: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 97), Port: 53})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		msg[2] |= 0x80 // QR: a response
		// TCP_NODELAY (Go's default): a segment per write.
		_, _ = c.Write(l[:])
		time.Sleep(20 * time.Millisecond)
		_, _ = c.Write(msg)
		_, _ = io.Copy(io.Discard, c)
	}()

	query := []byte{0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'x', 0, 0, 1, 0, 1}
	framed := append(binary.BigEndian.AppendUint16(nil, uint16(len(query))), query...)
	c, err := net.Dial("tcp", "127.0.0.97:53")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(framed); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	answer := make([]byte, len(framed))
	if _, err := io.ReadFull(c, answer); err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	c.Close()

	var got []DNSEvent
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(got) < 3 {
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
		t.Fatalf("events %+v, want a query segment and two answer segments", got)
	}
	q, a1, a2 := got[0], got[1], got[2]
	if !q.TCP || !q.Egress || q.Dst.Port() != 53 || q.Total != len(framed) || !bytes.Equal(q.Payload, framed) {
		t.Errorf("query segment %+v", q)
	}
	if q.Comm == "" || q.PID == 0 || q.Cookie == 0 {
		t.Errorf("query without its sender: %+v", q)
	}
	if !a1.TCP || a1.Egress || a1.Src.Port() != 53 || a1.Total != 2 || !bytes.Equal(a1.Payload, framed[:2]) {
		t.Errorf("first answer segment %+v", a1)
	}
	if !a2.TCP || a2.Egress || a2.Seq != a1.Seq+2 || a2.Total != len(query) || a2.Payload[2]&0x80 == 0 {
		t.Errorf("second answer segment %+v (first at seq %d)", a2, a1.Seq)
	}
	if a1.Cookie != q.Cookie || a2.Cookie != q.Cookie {
		t.Errorf("answer cookies %d, %d; query cookie %d", a1.Cookie, a2.Cookie, q.Cookie)
	}
	// Nothing else of this connection: its segments without payload.
	time.Sleep(200 * time.Millisecond)
	extra := make(chan DNSEvent, 1)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			ev, err := d.ReadEvent()
			if err != nil {
				return
			}
			if ev.Src == local || ev.Dst == local {
				extra <- ev
				return
			}
		}
	}()
	select {
	case ev := <-extra:
		t.Errorf("an event of a segment without payload: %+v", ev)
	case <-time.After(time.Second):
	}
	d.Close()
	<-stopped
}
