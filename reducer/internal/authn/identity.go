package authn

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Kind is what a peer is, as its certificate names it.
type Kind uint8

// Kinds of peers. Each calls one service of the reducer only.
const (
	KindUnspecified Kind = iota
	// KindNode is a collector: spiffe://<trust-domain>/node/<node-name>.
	// It may open ingest sessions for that node only.
	KindNode
	// KindWatcher is the k8s-watcher: spiffe://<trust-domain>/k8s-watcher.
	// It may push Kubernetes metadata, and nothing else.
	KindWatcher
	// KindObserver is a reader such as weirctl or a UI:
	// spiffe://<trust-domain>/observer/<name>. It may read the Observer
	// API, and cannot send node data or metadata.
	KindObserver
)

func (k Kind) String() string {
	switch k {
	case KindNode:
		return "node"
	case KindWatcher:
		return "k8s-watcher"
	case KindObserver:
		return "observer"
	}
	return "unspecified"
}

// DefaultTrustDomain is the trust domain of the reducer's --trust-domain
// and of weirctl certs when none is given.
const DefaultTrustDomain = "weir.local"

// Identity is a peer's identity, from the one SPIFFE ID (a URI SAN) of its
// verified certificate.
type Identity struct {
	Kind Kind
	// Name is the node's name for KindNode, the observer's for
	// KindObserver, empty for KindWatcher.
	Name string
}

// ID returns the SPIFFE ID of the identity in trust domain td.
func (id Identity) ID(td string) string {
	switch id.Kind {
	case KindNode:
		return "spiffe://" + td + "/node/" + id.Name
	case KindWatcher:
		return "spiffe://" + td + "/k8s-watcher"
	case KindObserver:
		return "spiffe://" + td + "/observer/" + id.Name
	}
	return ""
}

func (id Identity) String() string {
	if id.Name == "" {
		return id.Kind.String()
	}
	return id.Kind.String() + "/" + id.Name
}

// ErrNoIdentity is the error of a certificate without a usable SPIFFE ID.
var ErrNoIdentity = errors.New("certificate has no weir identity")

// Parse returns the identity that cert names in trust domain td. The
// certificate must carry exactly one spiffe:// URI SAN (as SPIFFE X.509-SVIDs
// do), in td, of one of the forms of Kind.
func Parse(cert *x509.Certificate, td string) (Identity, error) {
	var ids []*url.URL
	for _, u := range cert.URIs {
		if u.Scheme == "spiffe" {
			ids = append(ids, u)
		}
	}
	if len(ids) != 1 {
		return Identity{}, fmt.Errorf("%w: %d spiffe:// URI SANs, want 1", ErrNoIdentity, len(ids))
	}
	return ParseID(ids[0].String(), td)
}

// ParseID parses a SPIFFE ID string in trust domain td.
func ParseID(id, td string) (Identity, error) {
	u, err := url.Parse(id)
	if err != nil || u.Scheme != "spiffe" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return Identity{}, fmt.Errorf("%w: %q is not a SPIFFE ID", ErrNoIdentity, id)
	}
	if u.Host != td {
		return Identity{}, fmt.Errorf("%w: %q is not in trust domain %q", ErrNoIdentity, id, td)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	switch {
	case len(parts) == 2 && parts[0] == "node" && ValidName(parts[1]):
		return Identity{Kind: KindNode, Name: parts[1]}, nil
	case len(parts) == 1 && parts[0] == "k8s-watcher":
		return Identity{Kind: KindWatcher}, nil
	case len(parts) == 2 && parts[0] == "observer" && ValidName(parts[1]):
		return Identity{Kind: KindObserver, Name: parts[1]}, nil
	}
	return Identity{}, fmt.Errorf("%w: %q is not /node/<name>, /k8s-watcher or /observer/<name>", ErrNoIdentity, id)
}

// ValidName reports whether s can name a node or an observer in a SPIFFE
// ID: a Kubernetes node name (a DNS subdomain: lower-case letters, digits,
// '-' and '.', at most 253 bytes).
func ValidName(s string) bool {
	if s == "" || len(s) > 253 || s[0] == '.' || s[0] == '-' || s[len(s)-1] == '.' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		lower, digit := c >= 'a' && c <= 'z', c >= '0' && c <= '9'
		if !lower && !digit && c != '-' && c != '.' {
			return false
		}
	}
	return true
}
