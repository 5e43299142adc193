package ingest

import (
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/grpcserver"
)

// malformedError is a message that is not a valid StreamRequest.
type malformedError struct{ err error }

func (e *malformedError) Error() string { return "malformed message: " + e.err.Error() }

// recvRequest receives and decodes one request, reusing f's buffer.
func recvRequest(ss grpc.ServerStream, f *grpcserver.Frame) (*ingestv1.StreamRequest, error) {
	if err := ss.RecvMsg(f); err != nil {
		return nil, err
	}
	req := new(ingestv1.StreamRequest)
	if err := proto.Unmarshal(f.Data, req); err != nil {
		return nil, &malformedError{err: err}
	}
	return req, nil
}
