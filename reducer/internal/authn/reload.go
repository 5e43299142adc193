// Package authn owns who a peer of the reducer is: the TLS files, reloaded
// when they change, the SPIFFE identity in a peer's certificate, and which
// gRPC services each kind of identity may call.
package authn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Files are the PEM files of a TLS identity: a certificate chain, its key
// and the CA that peers' certificates must chain to.
type Files struct {
	Cert, Key, CA string
}

// CheckInterval is how often, at most, the files are looked at again: on a
// handshake, the first one after the interval stats the three files.
const CheckInterval = time.Second

// Reloader holds the current certificate, key and CA pool, and loads them
// again when a file's modification time, size or inode changes, as when
// Kubernetes swaps a mounted Secret's ..data symlink. The check runs on a
// TLS handshake, at most once per CheckInterval, so that an idle server
// costs nothing and live connections are never touched: a rotation only
// changes what new handshakes present and accept.
//
// A reload that fails (a half-written file, a key that does not match its
// certificate) keeps the last good material, counts the error and is
// tried again at the next check.
type Reloader struct {
	files Files
	now   func() time.Time

	mu      sync.Mutex
	checked time.Time
	stamps  [3]stamp
	cur     atomic.Pointer[material]

	reloads *prometheus.CounterVec
	expiry  prometheus.Gauge
}

type material struct {
	cert tls.Certificate
	pool *x509.CertPool
}

// stamp is what tells that a file changed.
type stamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// NewReloader loads files and fails if they do not make a TLS identity.
// Its metrics, named prefix+"_tls_reloads_total" and
// prefix+"_tls_certificate_expiry_timestamp_seconds", register with reg
// when it is not nil.
func NewReloader(files Files, prefix string, reg prometheus.Registerer) (*Reloader, error) {
	r := &Reloader{
		files: files,
		now:   time.Now,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "_tls_reloads_total",
			Help: "Reloads of the TLS certificate, key and CA after a file changed, by result (ok, error: the last good files stay in use).",
		}, []string{"result"}),
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: prefix + "_tls_certificate_expiry_timestamp_seconds",
			Help: "Unix time at which the TLS certificate in use expires.",
		}),
	}
	r.reloads.WithLabelValues("ok")
	r.reloads.WithLabelValues("error")
	stamps, err := statAll(files)
	if err != nil {
		return nil, err
	}
	m, err := load(files)
	if err != nil {
		return nil, err
	}
	r.stamps, r.checked = stamps, r.now()
	r.set(m)
	if reg != nil {
		for _, c := range []prometheus.Collector{r.reloads, r.expiry} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register tls metrics: %w", err)
			}
		}
	}
	return r, nil
}

func (r *Reloader) set(m *material) {
	r.cur.Store(m)
	if m.cert.Leaf != nil {
		r.expiry.Set(float64(m.cert.Leaf.NotAfter.Unix()))
	}
}

// current returns the material in use, reloading it first if a file
// changed since the last check.
func (r *Reloader) current() *material {
	r.check()
	return r.cur.Load()
}

// check reloads the files if CheckInterval has passed and one of them
// changed.
func (r *Reloader) check() {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.checked) < CheckInterval {
		return
	}
	r.checked = now
	stamps, err := statAll(r.files)
	if err != nil || stamps == r.stamps {
		return // a file missing for a moment, as while a Secret updates, is looked at again later
	}
	m, err := load(r.files)
	if err != nil {
		r.reloads.WithLabelValues("error").Inc()
		return // r.stamps unchanged: tried again at the next check
	}
	r.stamps = stamps
	r.set(m)
	r.reloads.WithLabelValues("ok").Inc()
}

// Reload checks the files now, whatever the interval, and reports an
// error if they changed and do not load.
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	stamps, err := statAll(r.files)
	if err != nil {
		return err
	}
	m, err := load(r.files)
	if err != nil {
		r.reloads.WithLabelValues("error").Inc()
		return err
	}
	r.stamps, r.checked = stamps, r.now()
	r.set(m)
	r.reloads.WithLabelValues("ok").Inc()
	return nil
}

// Leaf returns the certificate in use.
func (r *Reloader) Leaf() *x509.Certificate { return r.cur.Load().cert.Leaf }

// ServerConfig returns a TLS 1.3 server configuration that requires a
// client certificate chaining to the CA, and that presents and checks
// against the files as they are at each handshake.
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := r.current()
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{m.cert},
				ClientCAs:    m.pool,
				ClientAuth:   tls.RequireAndVerifyClientCert,
				NextProtos:   []string{"h2"},
			}, nil
		},
	}
}

func statAll(f Files) ([3]stamp, error) {
	var out [3]stamp
	for i, p := range []string{f.Cert, f.Key, f.CA} {
		fi, err := os.Stat(p)
		if err != nil {
			return out, err
		}
		out[i] = stamp{mod: fi.ModTime(), size: fi.Size()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			out[i].ino = st.Ino
		}
	}
	return out, nil
}

func load(f Files) (*material, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("load key pair: %w", err)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("read ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("read ca: no certificate in PEM")
	}
	return &material{cert: cert, pool: pool}, nil
}
