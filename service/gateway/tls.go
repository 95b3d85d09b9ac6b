package gateway

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// tlsPollInterval is how often the certificate, key and client-CA files
// are checked for change. cert-manager and the kubelet replace a
// mounted Secret's files within about a minute of a renewal; checking
// every 10 s adds little to that and costs three small reads.
const tlsPollInterval = 10 * time.Second

// serverTLS returns the TLS configuration of --tls-cert/--tls-key (and, with
// --client-ca, required and verified client certificates), or nil for
// cleartext. The files are re-read when they change ([Gateway.Reload],
// and a poll while serving): every new handshake uses the current
// certificate and client CAs, and open connections stay as they are.
func serverTLS(cfg Config, logger *slog.Logger) (*tls.Config, *tlsFiles, error) {
	if cfg.TLSCert == "" {
		return nil, nil, nil
	}
	files := &tlsFiles{cert: cfg.TLSCert, key: cfg.TLSKey, clientCA: cfg.ClientCA, logger: logger}
	if _, err := files.reload(); err != nil {
		return nil, nil, err
	}
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return files.config(), nil
		},
	}
	return tc, files, nil
}

// tlsFiles holds the TLS configuration read from the files, and what the
// files held when they were read.
type tlsFiles struct {
	cert, key, clientCA string
	logger              *slog.Logger

	mu      sync.Mutex
	current *tls.Config
	read    [][]byte // the contents current was built from
}

func (f *tlsFiles) config() *tls.Config {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.current
}

// reload re-reads the files and, when their contents changed, builds the
// configuration of new handshakes from them. changed reports whether it
// did. A failed reload (a file half-written, a key that does not match)
// keeps what is in force.
func (f *tlsFiles) reload() (changed bool, err error) {
	paths := []string{f.cert, f.key}
	if f.clientCA != "" {
		paths = append(paths, f.clientCA)
	}
	contents := make([][]byte, len(paths))
	for i, p := range paths {
		if contents[i], err = os.ReadFile(p); err != nil {
			return false, fmt.Errorf("reading TLS file: %w", err)
		}
	}
	f.mu.Lock()
	same := f.read != nil && equalContents(f.read, contents)
	f.mu.Unlock()
	if same {
		return false, nil
	}
	cert, err := tls.X509KeyPair(contents[0], contents[1])
	if err != nil {
		return false, fmt.Errorf("loading --tls-cert %s / --tls-key %s: %w", f.cert, f.key, err)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// The configuration of a handshake replaces the server's whole
		// configuration, protocol negotiation included.
		NextProtos: []string{"h2", "http/1.1"},
	}
	if f.clientCA != "" {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(contents[2]) {
			return false, fmt.Errorf("--client-ca %s holds no PEM certificate", f.clientCA)
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	f.mu.Lock()
	f.current, f.read = tc, contents
	f.mu.Unlock()
	return true, nil
}

func equalContents(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// reloadTLS re-reads the TLS files when they changed and logs the outcome;
// without TLS it does nothing.
func (g *Gateway) reloadTLS() error {
	if g.tlsFiles == nil {
		return nil
	}
	changed, err := g.tlsFiles.reload()
	switch {
	case err != nil:
		g.logger.Error("TLS files not reloaded; the previous certificate stays in force", slog.String("error", err.Error()))
	case changed:
		g.logger.Info("TLS files reloaded: new connections use the new certificate and client CAs")
	}
	return err
}

// watchTLSFiles checks the TLS files for change every tlsPollInterval
// until the returned stop is called.
func (g *Gateway) watchTLSFiles() (stop func()) {
	if g.tlsFiles == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(tlsPollInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = g.reloadTLS() // reloadTLS logs what it did
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
