package stream

import (
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/grpc/encoding"
)

// zstdName is the grpc name of the zstd compressor, a copy of the
// reducer's (reducer/internal/grpcserver): the stream uses it when the
// reducer's welcome names compression_zstd.
const zstdName = "zstd"

func init() { encoding.RegisterCompressor(&zstdCompressor{}) }

// zstdCompressor is a grpc compressor over pooled zstd encoders and
// decoders, each single-threaded: a stream decompresses on its own
// goroutine, and the streams of a thousand collectors run side by side.
type zstdCompressor struct {
	encoders, decoders sync.Pool
}

func (c *zstdCompressor) Name() string { return zstdName }

func (c *zstdCompressor) Compress(w io.Writer) (io.WriteCloser, error) {
	e, _ := c.encoders.Get().(*zstd.Encoder)
	if e == nil {
		var err error
		if e, err = zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithLowerEncoderMem(true)); err != nil {
			return nil, err
		}
	} else {
		e.Reset(w)
	}
	return &zstdWriter{Encoder: e, pool: &c.encoders}, nil
}

type zstdWriter struct {
	*zstd.Encoder
	pool *sync.Pool
}

func (w *zstdWriter) Close() error {
	err := w.Encoder.Close()
	w.pool.Put(w.Encoder)
	return err
}

func (c *zstdCompressor) Decompress(r io.Reader) (io.Reader, error) {
	d, _ := c.decoders.Get().(*zstd.Decoder)
	if d == nil {
		var err error
		if d, err = zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true)); err != nil {
			return nil, err
		}
	} else if err := d.Reset(r); err != nil {
		c.decoders.Put(d)
		return nil, err
	}
	return &zstdReader{d: d, pool: &c.decoders}, nil
}

// zstdReader returns its decoder to the pool at the end of the message.
type zstdReader struct {
	d    *zstd.Decoder
	pool *sync.Pool
}

func (r *zstdReader) Read(p []byte) (int, error) {
	if r.d == nil {
		return 0, io.EOF
	}
	n, err := r.d.Read(p)
	if err == io.EOF {
		r.pool.Put(r.d)
		r.d = nil
	}
	return n, err
}
