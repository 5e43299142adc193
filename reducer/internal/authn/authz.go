package authn

import (
	"context"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Rules map a gRPC service's full name to the one kind of identity that may
// call it. A service that no rule names is refused to everyone.
type Rules map[string]Kind

// Authorizer checks, on every RPC of a TLS server, that the peer's
// certificate names an identity allowed to call the service, and puts the
// identity in the RPC's context for the service (see FromContext). A
// refusal is PERMISSION_DENIED, counted by reason in
// weir_reducer_auth_denied_total.
type Authorizer struct {
	td     string
	rules  Rules
	denied *prometheus.CounterVec
}

// Reasons of weir_reducer_auth_denied_total.
const (
	DeniedNoCertificate = "no_certificate" // no verified client certificate
	DeniedNoIdentity    = "no_identity"    // no SPIFFE ID of this trust domain, or of no known form
	DeniedWrongKind     = "wrong_kind"     // an identity that may not call this service
)

// NewAuthorizer returns an Authorizer for trust domain td; its counter
// registers with reg.
func NewAuthorizer(td string, rules Rules, reg prometheus.Registerer) (*Authorizer, error) {
	a := &Authorizer{td: td, rules: rules, denied: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_reducer_auth_denied_total",
		Help: "RPCs refused with PERMISSION_DENIED because of the peer's identity, by reason (no_certificate, no_identity: no SPIFFE ID of the trust domain, wrong_kind: e.g. an observer calling ingest).",
	}, []string{"reason"})}
	for _, r := range []string{DeniedNoCertificate, DeniedNoIdentity, DeniedWrongKind} {
		a.denied.WithLabelValues(r)
	}
	if reg != nil {
		if err := reg.Register(a.denied); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// TrustDomain returns the trust domain that identities must be in.
func (a *Authorizer) TrustDomain() string { return a.td }

type identityKey struct{}

// FromContext returns the identity of an RPC's peer that an Authorizer
// checked; false on a server without TLS.
func FromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// WithIdentity returns ctx carrying id, as an Authorizer leaves it; for
// tests of services.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// authorize returns the context with the peer's identity, or the status
// that refuses the call.
func (a *Authorizer) authorize(ctx context.Context, method string) (context.Context, error) {
	p, ok := peer.FromContext(ctx)
	var info credentials.TLSInfo
	if ok {
		info, ok = p.AuthInfo.(credentials.TLSInfo)
	}
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		a.denied.WithLabelValues(DeniedNoCertificate).Inc()
		return nil, status.Error(codes.PermissionDenied, "no verified client certificate")
	}
	id, err := Parse(info.State.VerifiedChains[0][0], a.td)
	if err != nil {
		a.denied.WithLabelValues(DeniedNoIdentity).Inc()
		return nil, status.Errorf(codes.PermissionDenied, "client certificate: %v", err)
	}
	service, _, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	want, ok := a.rules[service]
	if !ok || want != id.Kind {
		a.denied.WithLabelValues(DeniedWrongKind).Inc()
		return nil, status.Errorf(codes.PermissionDenied, "identity %s may not call %s", id.ID(a.td), service)
	}
	return WithIdentity(ctx, id), nil
}

// Stream is the interceptor of streaming RPCs.
func (a *Authorizer) Stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := a.authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

// Unary is the interceptor of unary RPCs.
func (a *Authorizer) Unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// contextStream is a stream with another context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }
