package grpcserver

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

// TestKeepaliveEnforced: a client that pings more often than every 10 s is
// told GOAWAY ENHANCE_YOUR_CALM ("too_many_pings") and its connection is
// closed, so a peer cannot keep the server busy with pings.
func TestKeepaliveEnforced(t *testing.T) {
	srv := New(Config{Addr: "127.0.0.1:0", MaxMessageBytes: 1 << 20}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Shutdown(t.Context()) }()
	c, fr := rawHTTP2(t, srv)
	defer c.Close()
	pings := make(chan struct{})
	go func() {
		defer close(pings)
		for i := range 20 {
			if fr.WritePing(false, [8]byte{byte(i)}) != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() { <-pings }()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("connection ended without GOAWAY: %v", err)
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != http2.ErrCodeEnhanceYourCalm || !bytes.Contains(ga.DebugData(), []byte("too_many_pings")) {
				t.Fatalf("GOAWAY %v %q", ga.ErrCode, ga.DebugData())
			}
			break
		}
	}
	// Then the server closes the connection.
	for {
		if _, err := fr.ReadFrame(); err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("connection still open after GOAWAY")
				}
			}
			return
		}
	}
}

// rawHTTP2 opens a plain HTTP/2 connection to srv, as a client that speaks
// frames itself: the preface and its settings sent. The caller closes it.
func rawHTTP2(t *testing.T, srv *Server) (net.Conn, *http2.Framer) {
	t.Helper()
	c, err := net.Dial("tcp", srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		c.Close()
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c, fr
}
