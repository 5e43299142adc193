package ingest

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// frame is a received message before it is decoded, so that the server,
// not grpc, decides how a malformed message ends the stream.
type frame struct{ data []byte }

// frameCodec is the server's codec: it hands requests over as frames and
// marshals responses as protobuf.
type frameCodec struct{}

func (frameCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("marshal %T: not a protobuf message", v)
	}
	return proto.Marshal(m)
}

func (frameCodec) Unmarshal(data []byte, v any) error {
	if f, ok := v.(*frame); ok {
		f.data = append(f.data[:0], data...)
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("unmarshal %T: not a protobuf message", v)
	}
	return proto.Unmarshal(data, m)
}

func (frameCodec) Name() string { return "proto" }

// malformedError is a message that is not a valid StreamRequest.
type malformedError struct{ err error }

func (e *malformedError) Error() string { return "malformed message: " + e.err.Error() }

// recvRequest receives and decodes one request, reusing f's buffer.
func recvRequest(ss grpc.ServerStream, f *frame) (*ingestv1.StreamRequest, error) {
	if err := ss.RecvMsg(f); err != nil {
		return nil, err
	}
	req := new(ingestv1.StreamRequest)
	if err := proto.Unmarshal(f.data, req); err != nil {
		return nil, &malformedError{err: err}
	}
	return req, nil
}

// serviceDesc is the ingest service with a handler that receives frames.
func serviceDesc() *grpc.ServiceDesc {
	desc := ingestv1.IngestService_ServiceDesc
	desc.Streams = []grpc.StreamDesc{{
		StreamName:    "Stream",
		Handler:       func(srv any, ss grpc.ServerStream) error { return srv.(*Server).serve(ss) },
		ServerStreams: true,
		ClientStreams: true,
	}}
	return &desc
}
