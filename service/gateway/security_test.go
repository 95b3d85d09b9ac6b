package gateway_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a leaf certificate for a server (127.0.0.1) or a client.
func (ca *testCA) issue(t *testing.T, name string, server bool) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// writePEM writes a certificate and its key to files and returns their paths.
func writePEM(t *testing.T, c tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writeFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	return certFile, keyFile
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// tlsClient speaks HTTP/2 over TLS, trusting roots and presenting certs.
func tlsClient(roots *x509.CertPool, certs ...tls.Certificate) *http.Client {
	var p http.Protocols
	p.SetHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Protocols:       &p,
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12},
	}}
}

func listOK(t *testing.T, h *gatewaytest.Stack) error {
	t.Helper()
	_, err := h.Client(connect.WithGRPC()).ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: smallDesktop, PageSize: 2,
	}))
	return err
}

func TestTLSAndMutualTLS(t *testing.T) {
	t.Parallel()
	ca, otherCA := newTestCA(t, "gateway CA"), newTestCA(t, "some other CA")
	serverCert, serverKey := writePEM(t, ca.issue(t, "gateway", true))
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)

	t.Run("tls", func(t *testing.T) {
		t.Parallel()
		h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--tls-cert", serverCert, "--tls-key", serverKey}})
		h.HTTP = tlsClient(roots)
		if err := listOK(t, h); err != nil {
			t.Fatalf("gRPC over TLS: %v", err)
		}
		h.HTTP = gatewaytest.H2C()
		h.URL = strings.Replace(h.URL, "https://", "http://", 1)
		if err := listOK(t, h); err == nil {
			t.Fatal("a cleartext client got an answer from the TLS port")
		}
	})
	t.Run("mtls", func(t *testing.T) {
		t.Parallel()
		caFile := filepath.Join(t.TempDir(), "ca.pem")
		writeFile(t, caFile, string(ca.pem))
		h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--tls-cert", serverCert, "--tls-key", serverKey, "--client-ca", caFile}})
		testCases := []struct {
			name  string
			certs []tls.Certificate
			ok    bool
		}{
			{"certificate from the trusted CA", []tls.Certificate{ca.issue(t, "caller", false)}, true},
			{"no certificate", nil, false},
			{"certificate from another CA", []tls.Certificate{otherCA.issue(t, "intruder", false)}, false},
		}
		for _, tc := range testCases {
			h.HTTP = tlsClient(roots, tc.certs...)
			err := listOK(t, h)
			if (err == nil) != tc.ok {
				t.Errorf("%s: err = %v, want success %v", tc.name, err, tc.ok)
			}
			h.HTTP.CloseIdleConnections()
		}
	})
}

func TestBearerTokenAuth(t *testing.T) {
	t.Parallel()
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, "# callers of the gateway\ntoken-alpha-0123456789\n\n  reports  token-beta-0123456789  \n")
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--auth-tokens-file", tokens}})
	list := func(header string) error {
		req := connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: smallDesktop})
		if header != "" {
			req.Header().Set("Authorization", header)
		}
		_, err := h.Client(connect.WithGRPC()).ListImageModifiedRecords(t.Context(), req)
		return err
	}
	before := h.Sim.Stats().Requests
	for _, header := range []string{"", "Bearer ", "Bearer token-alpha-012345678", "Bearer token-alpha-01234567890", "Basic dG9rZW4tYWxwaGEtMDEyMzQ1Njc4OQ==", "bearer token-alpha-0123456789", "Bearer reports"} {
		err := list(header)
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("Authorization %q: %v, want Unauthenticated", header, err)
			continue
		}
		if cerr := err.(*connect.Error); cerr.Message() != "missing or invalid bearer token" || len(cerr.Details()) != 0 {
			t.Errorf("Authorization %q: the refusal says more than it should: %v %v", header, cerr.Message(), cerr.Details())
		}
	}
	if after := h.Sim.Stats().Requests; after != before {
		t.Errorf("refused callers caused %d upstream calls", after-before)
	}
	for _, header := range []string{"Bearer token-alpha-0123456789", "Bearer token-beta-0123456789"} {
		if err := list(header); err != nil {
			t.Errorf("Authorization %q: %v", header, err)
		}
	}
	// A stream needs a token as well.
	stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: smallDesktop}))
	if err == nil {
		_, err = gatewaytest.Drain(stream)
	}
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("stream without a token: %v", err)
	}
	// Health checks stay open; reflection does not.
	health := grpchealth.NewClient(h.HTTP, h.URL, connect.WithGRPC())
	if res, err := health.Check(t.Context(), &grpchealth.CheckRequest{}); err != nil || res.Status != grpchealth.StatusServing {
		t.Errorf("health without a token: %v %v", res, err)
	}
	rs := grpcreflect.NewClient(h.HTTP, h.URL, connect.WithGRPC()).NewStream(t.Context())
	if _, err := rs.ListServices(); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("reflection without a token: %v", err)
	}
	_, _ = rs.Close()
}

func TestTokenRevokedOnSIGHUPWithoutDroppingStreams(t *testing.T) {
	// A SIGHUP reaches the whole test process: keep it from killing the
	// process should it arrive while no gateway listens for it.
	guard := make(chan os.Signal, 1)
	signal.Notify(guard, syscall.SIGHUP)
	defer signal.Stop(guard)

	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, "token-old-0123456789\ntoken-kept-0123456789\n")
	run := gatewaytest.Run(t, "--simulate", "--simulate-latency", "5ms", "--auth-tokens-file", tokens)
	addr, stderr, stop := run.Addrs.API, run.Stderr, run.Stop
	c := gatewaytest.ClientOf(addr, connect.WithGRPC())
	desktop := ecdsim.DefaultDesktops(1)[0] // 1234 records
	req := connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop.ID})
	req.Header().Set("Authorization", "Bearer token-old-0123456789")
	stream, err := c.StreamImageModifiedRecords(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	got := len(stream.Msg().GetRecords())

	writeFile(t, tokens, "token-kept-0123456789\ntoken-new-0123456789\n")
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	list := func(token string) error {
		req := connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: desktop.ID})
		req.Header().Set("Authorization", "Bearer "+token)
		_, err := c.ListImageModifiedRecords(t.Context(), req)
		return err
	}
	// The reload happens on the gateway's signal goroutine; its log line
	// says it took effect.
	stderr.WaitFor(t, `"msg":"auth tokens reloaded","tokens":2`, 10*time.Second)
	if err := list("token-new-0123456789"); err != nil {
		t.Errorf("the new token after SIGHUP: %v", err)
	}
	if err := list("token-old-0123456789"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("the revoked token: %v", err)
	}
	if err := list("token-kept-0123456789"); err != nil {
		t.Errorf("the kept token: %v", err)
	}
	for stream.Receive() {
		got += len(stream.Msg().GetRecords())
	}
	if err := stream.Err(); err != nil || got != desktop.Records {
		t.Errorf("the stream opened with the revoked token: %d records, %v; want all %d", got, err, desktop.Records)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), `"msg":"auth tokens reloaded","tokens":2`) {
		t.Errorf("no reload in the logs:\n%s", stderr)
	}
}

func TestReflectionCanBeTurnedOff(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--reflection=false"}})
	rs := grpcreflect.NewClient(h.HTTP, h.URL, connect.WithGRPC()).NewStream(t.Context())
	if _, err := rs.ListServices(); err == nil {
		t.Error("reflection answered with --reflection=false")
	}
	_, _ = rs.Close()
	if err := listOK(t, h); err != nil {
		t.Error(err)
	}
}

func TestRequestLimits(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--max-request-bytes", "1024", "--max-header-bytes", "4096"}})
	before := h.Sim.Stats().Requests
	_, err := h.Client(connect.WithGRPC()).ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: smallDesktop, PageToken: strings.Repeat("A", 2000),
	}))
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Errorf("a 2 KB request with a 1 KB limit: %v, want ResourceExhausted", err)
	}
	req := connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: smallDesktop})
	req.Header().Set("X-Padding", strings.Repeat("p", 16<<10))
	if _, err := h.Client(connect.WithGRPC()).ListImageModifiedRecords(t.Context(), req); err == nil {
		t.Error("a 16 KB header with a 4 KB limit was accepted")
	}
	if after := h.Sim.Stats().Requests; after != before {
		t.Errorf("oversized requests caused %d upstream calls", after-before)
	}
}

func TestMaxConcurrentStreamsPerConnection(t *testing.T) {
	t.Parallel()
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		Faults:   ecdsim.Faults{Latency: 100 * time.Millisecond},
		Args:     []string{"--max-concurrent-streams", "1"},
	})
	// One connection whose client honours the server's stream limit
	// instead of dialing another connection.
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	h.HTTP = &http.Client{Transport: &http.Transport{Protocols: &p, HTTP2: &http.HTTP2Config{StrictMaxConcurrentRequests: true}}}
	c := h.Client(connect.WithGRPC())
	stream, err := c.StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: bigDesktop, // 13 pages of 100 ms: holds the only stream for over a second
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = c.ListImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: smallDesktop}))
	if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Errorf("a second RPC on a connection limited to one stream: %v, want it to wait (DeadlineExceeded)", err)
	}
	if _, err := gatewaytest.Drain(stream); err != nil {
		t.Fatal(err)
	}
	// With the stream done, the slot is free again.
	if err := listOK(t, h); err != nil {
		t.Errorf("after the stream: %v", err)
	}
}
