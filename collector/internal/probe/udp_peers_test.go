package probe

import (
	"net"
	"net/netip"
	"testing"
)

// TestPrivilegedUDPPeerCap: with --udp-peers 2, an unconnected socket that
// sends to four remotes reports the first two by address with their exact
// bytes, and the other two under "other peers", counted in Folded. On
// 5.10 this is bpf/udp_hash.c's slot claiming (no compare-and-swap there).
func TestPrivilegedUDPPeerCap(t *testing.T) {
	requirePrivileged(t)
	cfg := udpConfig()
	cfg.UDP.Peers = 2
	p, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer p.Close()

	cli, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	var remotes []netip.AddrPort
	for range 4 {
		srv, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		remotes = append(remotes, srv.LocalAddr().(*net.UDPAddr).AddrPort())
	}
	for i, r := range remotes {
		if _, err := cli.WriteTo(make([]byte, 10*(i+1)), net.UDPAddrFromAddrPort(r)); err != nil {
			t.Fatal(err)
		}
	}
	got := udpSamples(t, p, cli.LocalAddr().(*net.UDPAddr).AddrPort())
	for i, r := range remotes[:2] {
		rec := got[r]
		if rec.Other || rec.BytesSent != uint64(10*(i+1)) || rec.DatagramsSent != 1 {
			t.Errorf("remote %s: %+v, want %d bytes in 1 datagram", r, rec, 10*(i+1))
		}
	}
	for _, r := range remotes[2:] {
		if rec, ok := got[r]; ok {
			t.Errorf("remote %s beyond the cap reported by address: %+v", r, rec)
		}
	}
	other := got[netip.AddrPort{}]
	if !other.Other || other.BytesSent != 30+40 || other.DatagramsSent != 2 || other.Folded != 2 {
		t.Errorf("other peers: %+v, want 70 bytes in 2 datagrams, 2 folded", other)
	}
}
