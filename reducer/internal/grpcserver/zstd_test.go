package grpcserver

import (
	"bytes"
	"io"
	"testing"

	"google.golang.org/grpc/encoding"
)

func TestZstdRoundTrip(t *testing.T) {
	c := encoding.GetCompressor(Zstd)
	if c == nil {
		t.Fatal("zstd is not registered")
	}
	for i, msg := range [][]byte{bytes.Repeat([]byte("batch "), 1000), {}, []byte("ack")} {
		var wire bytes.Buffer
		w, err := c.Compress(&wire)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		r, err := c.Decompress(&wire)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Errorf("message %d: got %d bytes back, want %d", i, len(got), len(msg))
		}
	}
}

func BenchmarkZstdDecompress(b *testing.B) {
	b.ReportAllocs()
	c := encoding.GetCompressor(Zstd)
	var wire bytes.Buffer
	w, _ := c.Compress(&wire)
	if _, err := w.Write(bytes.Repeat([]byte{1, 2, 3, 200, 17}, 2000)); err != nil {
		b.Fatal(err)
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	packed := wire.Bytes()
	buf := make([]byte, 16<<10)
	for b.Loop() {
		r, _ := c.Decompress(bytes.NewReader(packed))
		for {
			if _, err := r.Read(buf); err != nil {
				break
			}
		}
	}
}
