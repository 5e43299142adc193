package grpcserver

import (
	"slices"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// Frame is a received message left undecoded. A handler that receives into
// a *Frame decodes the bytes itself, so that it, not grpc, decides how a
// malformed message ends the stream. Every other message, of every service,
// goes through the standard proto codec.
type Frame struct {
	// Data is the message's bytes; RecvMsg reuses its capacity.
	Data []byte
	// Buffer, when set and Data is nil, gives the buffer to copy the
	// message into once it has arrived, so that a stream that waits for
	// its next message holds none. It is told the message's size.
	Buffer func(size int) []byte
}

// codec is the server's codec: it copies the bytes of a message received
// into a *Frame and hands everything else to the proto codec.
type codec struct{ proto encoding.CodecV2 }

func newCodec() codec { return codec{proto: encoding.GetCodecV2(proto.Name)} }

func (c codec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*Frame)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	if f.Data == nil && f.Buffer != nil {
		f.Data = f.Buffer(data.Len())
	}
	// One allocation when the message is larger than the buffer, not a
	// doubling per slice of it.
	f.Data = slices.Grow(f.Data[:0], data.Len())
	for _, b := range data {
		f.Data = append(f.Data, b.ReadOnlyData()...)
	}
	return nil
}

func (c codec) Name() string { return proto.Name }
