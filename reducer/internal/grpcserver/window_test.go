package grpcserver

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// TestNoPingPerMessage: the server answers a stream of messages with their
// answers only. With gRPC's dynamic windows it would also probe the
// bandwidth after each message its last probe was acked before: a window
// update and a ping, and the read of the ping's ack, per collector batch.
func TestNoPingPerMessage(t *testing.T) {
	srv := New(Config{Addr: "127.0.0.1:0", MaxMessageBytes: 1 << 20}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	srv.RegisterService(&frameService, struct{}{})
	if err := srv.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Shutdown(t.Context()) }()
	c, fr := rawHTTP2(t, srv)
	defer c.Close()
	var hdr bytes.Buffer
	enc := hpack.NewEncoder(&hdr)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", "/weir.test.Frames/Echo"},
		{":authority", "weir"}, {"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	const messages = 5
	var answers, pings int
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for sent := 0; answers < messages; {
		if sent == answers {
			// The next message, once the last one is answered, as a
			// collector sends its next batch after its interval.
			msg := make([]byte, 5+1000)
			binary.BigEndian.PutUint32(msg[1:5], 1000)
			if err := fr.WriteData(1, false, msg); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d answers: %v", answers, err)
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			if !f.IsAck() {
				pings++
				// Acked, so that a server that probes probes again.
				if err := fr.WritePing(true, f.Data); err != nil {
					t.Fatal(err)
				}
			}
		case *http2.DataFrame:
			if f.StreamID == 1 && len(f.Data()) > 0 {
				answers++
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if err := fr.WriteSettingsAck(); err != nil {
					t.Fatal(err)
				}
			}
		case *http2.RSTStreamFrame, *http2.GoAwayFrame:
			t.Fatalf("the server ended the stream: %v", f)
		}
	}
	if pings != 0 {
		t.Errorf("the server sent %d pings for %d messages, want none", pings, messages)
	}
}
