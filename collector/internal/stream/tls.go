package stream

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
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// tlsCheckInterval is how often, at most, the TLS files are looked at
// again, at a handshake.
const tlsCheckInterval = time.Second

// tlsFiles holds the collector's client certificate and the CA of the
// reducer, and loads them again when a file's modification time, size or
// inode changes, as when a mounted Secret rotates. The check runs at a
// handshake (the collector dials anew for each session), so the open
// session keeps going with the certificate it was made with and the next
// one uses the new files. A reload that fails keeps the last good files and
// is counted. The certificate must name the node:
// spiffe://<trust-domain>/node/<node-name> (see weirctl certs).
type tlsFiles struct {
	cert, key, ca string
	now           func() time.Time

	mu      sync.Mutex
	checked time.Time
	stamps  [3]fileStamp
	cur     atomic.Pointer[tlsMaterial]

	reloads *prometheus.CounterVec
	expiry  prometheus.Gauge
}

type tlsMaterial struct {
	cert tls.Certificate
	pool *x509.CertPool
}

type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// transportCredentials returns plaintext credentials when no TLS file is
// set, else mTLS credentials that reload the files.
func transportCredentials(cfg Config, reg prometheus.Registerer) (credentials.TransportCredentials, error) {
	if cfg.TLSCert == "" && cfg.TLSKey == "" && cfg.TLSCA == "" {
		return insecure.NewCredentials(), nil
	}
	if cfg.TLSCert == "" || cfg.TLSKey == "" || cfg.TLSCA == "" {
		return nil, errors.New("tls needs a certificate, a key and a CA")
	}
	f, err := newTLSFiles(cfg.TLSCert, cfg.TLSKey, cfg.TLSCA, reg)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(f.config()), nil
}

func newTLSFiles(cert, key, ca string, reg prometheus.Registerer) (*tlsFiles, error) {
	f := &tlsFiles{cert: cert, key: key, ca: ca, now: time.Now,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_collector_tls_reloads_total",
			Help: "Reloads of the TLS certificate, key and CA after a file changed, by result (ok, error: the last good files stay in use).",
		}, []string{"result"}),
		expiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_collector_tls_certificate_expiry_timestamp_seconds",
			Help: "Unix time at which the client certificate in use expires.",
		}),
	}
	f.reloads.WithLabelValues("ok")
	f.reloads.WithLabelValues("error")
	stamps, err := f.stat()
	if err != nil {
		return nil, err
	}
	m, err := f.load()
	if err != nil {
		return nil, err
	}
	f.stamps, f.checked = stamps, f.now()
	f.set(m)
	if reg != nil {
		for _, c := range []prometheus.Collector{f.reloads, f.expiry} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register tls metrics: %w", err)
			}
		}
	}
	return f, nil
}

func (f *tlsFiles) set(m *tlsMaterial) {
	f.cur.Store(m)
	if m.cert.Leaf != nil {
		f.expiry.Set(float64(m.cert.Leaf.NotAfter.Unix()))
	}
}

// current returns the material in use, reloaded first if a file changed.
func (f *tlsFiles) current() *tlsMaterial {
	now := f.now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if now.Sub(f.checked) >= tlsCheckInterval {
		f.checked = now
		if stamps, err := f.stat(); err == nil && stamps != f.stamps {
			if m, err := f.load(); err != nil {
				f.reloads.WithLabelValues("error").Inc()
			} else {
				f.stamps = stamps
				f.set(m)
				f.reloads.WithLabelValues("ok").Inc()
			}
		}
	}
	return f.cur.Load()
}

// config is a TLS 1.3 client configuration that presents the current
// certificate and verifies the reducer against the current CA. Since
// RootCAs cannot change under grpc's copy of the configuration, the
// standard verification is done in VerifyConnection instead, with the
// server name grpc sets from the target's authority.
func (f *tlsFiles) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &f.current().cert, nil
		},
		InsecureSkipVerify: true, // verified in VerifyConnection, against the reloaded CA
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: the reducer sent no certificate")
			}
			opts := x509.VerifyOptions{
				Roots:         f.current().pool,
				DNSName:       cs.ServerName,
				Intermediates: x509.NewCertPool(),
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(opts)
			return err
		},
	}
}

func (f *tlsFiles) stat() ([3]fileStamp, error) {
	var out [3]fileStamp
	for i, p := range []string{f.cert, f.key, f.ca} {
		fi, err := os.Stat(p)
		if err != nil {
			return out, err
		}
		out[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			out[i].ino = st.Ino
		}
	}
	return out, nil
}

func (f *tlsFiles) load() (*tlsMaterial, error) {
	cert, err := tls.LoadX509KeyPair(f.cert, f.key)
	if err != nil {
		return nil, fmt.Errorf("load tls key pair: %w", err)
	}
	pem, err := os.ReadFile(f.ca)
	if err != nil {
		return nil, fmt.Errorf("read tls ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls ca %s: no certificate found", f.ca)
	}
	return &tlsMaterial{cert: cert, pool: pool}, nil
}
