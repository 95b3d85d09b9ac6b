package gateway_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
)

const listPath = "/" + imagerecordsv1connect.ImageRecordsServiceName + "/ListImageModifiedRecords"

// grpcStatus posts a raw gRPC request body to path and returns the
// grpc-status and grpc-message of the answer.
func grpcStatus(t *testing.T, h *gatewaytest.Stack, path string, body []byte, header http.Header) (string, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, h.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if header != nil {
		req.Header = header.Clone()
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Grpc-Encoding", "gzip")
	req.Header.Set("Te", "trailers")
	res, err := h.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	status, msg := res.Header.Get("Grpc-Status"), res.Header.Get("Grpc-Message")
	if status == "" {
		status, msg = res.Trailer.Get("Grpc-Status"), res.Trailer.Get("Grpc-Message")
	}
	m, _ := url.PathUnescape(msg)
	return status, m
}

// TestAuthComesBeforeTheBody: with bearer tokens on, a caller without a
// token learns nothing but Unauthenticated and costs no body read and no
// inflating, for unary and streaming calls alike; a caller with a token
// who sends a gzip bomb is refused once the inflated size passes the read
// limit.
func TestAuthComesBeforeTheBody(t *testing.T) {
	t.Parallel()
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, "token-alpha-0123456789\n")
	var bodyRead atomic.Int64
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		Args:     []string{"--auth-tokens-file", tokens},
		WrapHandler: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				r.Body = countingBody{r.Body, &bodyRead}
				next.ServeHTTP(w, r)
			})
		},
	})
	bomb := gatewaytest.GzipBomb(60 << 20)
	if len(bomb) >= 64<<10 {
		t.Fatalf("the bomb compresses to %d bytes, over the read limit it must pass", len(bomb))
	}
	authorized := http.Header{"Authorization": {"Bearer token-alpha-0123456789"}}
	for _, path := range []string{listPath, streamPath} {
		t.Run(path, func(t *testing.T) {
			bodyRead.Store(0)
			if status, msg := grpcStatus(t, h, path, bomb, nil); status != "16" {
				t.Errorf("an unauthenticated gzip bomb: grpc-status %s %q, want 16 (Unauthenticated)", status, msg)
			}
			if n := bodyRead.Load(); n != 0 {
				t.Errorf("the gateway read %d bytes of an unauthenticated body", n)
			}
			before := h.Sim.Stats().Requests
			status, msg := grpcStatus(t, h, path, bomb, authorized)
			if status != "8" || !strings.Contains(msg, "inflates to more than the limit of 65536 bytes") {
				t.Errorf("an authenticated gzip bomb: grpc-status %s %q, want 8 (ResourceExhausted) from the bounded inflater", status, msg)
			}
			if after := h.Sim.Stats().Requests; after != before {
				t.Errorf("the bomb caused %d upstream calls", after-before)
			}
		})
	}
	t.Run("an invalid request without a token", func(t *testing.T) {
		code, body := postJSON(t, h.URL+listPath, `{"regionId":"NOT A REGION","desktopId":"nope"}`)
		if code != http.StatusUnauthorized || strings.Contains(body, "region") || strings.Contains(body, "BadRequest") {
			t.Errorf("HTTP %d %s; want 401 and nothing about the request's fields", code, body)
		}
	})
}

// countingBody counts what the gateway reads of a request body.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// TestRefusalsAreLoggedSparinglyAndCallersNamed: a flood of refused tokens
// writes a few WARN lines (each with the peer and the reason, counting
// what it left out), not one line per refusal; accepted calls log the
// peer and the token's id (its name, or a hash), never the token.
func TestRefusalsAreLoggedSparinglyAndCallersNamed(t *testing.T) {
	t.Parallel()
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, "reports token-reports-0123456789\ntoken-unnamed-0123456789\n")
	var logs gatewaytest.Output
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--auth-tokens-file", tokens}, Logs: &logs})
	c := h.Client(connect.WithGRPC())
	list := func(token string) error {
		req := connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: smallDesktop})
		req.Header().Set("Authorization", "Bearer "+token)
		_, err := c.ListImageModifiedRecords(t.Context(), req)
		return err
	}
	const refused = 200
	start := time.Now()
	for i := range refused {
		if err := list("guess-" + strings.Repeat("x", i%20)); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("a wrong token: %v", err)
		}
	}
	elapsed := time.Since(start)
	lines := strings.Count(logs.String(), `"msg":"refused"`)
	if most := 10 + int(elapsed.Seconds()) + 1; lines < 1 || lines > most {
		t.Errorf("%d refusals in %v wrote %d log lines, want 1..%d", refused, elapsed, lines, most)
	}
	if !strings.Contains(logs.String(), `"reason":"unauthenticated","peer":"127.0.0.1"`) {
		t.Errorf("the refusal lines lack the reason or the peer:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), `"msg":"rpc"`) {
		t.Errorf("refused calls wrote access lines:\n%s", logs.String())
	}

	for _, tc := range []struct{ token, id string }{{"token-reports-0123456789", `"token_id":"reports"`}, {"token-unnamed-0123456789", `"token_id":"sha256:`}} {
		if err := list(tc.token); err != nil {
			t.Fatal(err)
		}
		logs.WaitFor(t, `"msg":"rpc","peer":"127.0.0.1",`+tc.id, 10*time.Second)
		if strings.Contains(logs.String(), tc.token) {
			t.Errorf("the token %s is in the logs", tc.token)
		}
	}
}

func TestTokensFileRefusesShortTokens(t *testing.T) {
	t.Parallel()
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, "token-alpha-0123456789\nq7Zp\n")
	s, err := gatewaytest.Start(gatewaytest.Config{Desktops: testDesktops, Args: []string{"--auth-tokens-file", tokens}})
	if err == nil {
		s.Close()
		t.Fatal("a 4-character token was accepted")
	}
	if !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), "at least 16") || strings.Contains(err.Error(), "q7Zp") {
		t.Errorf("error %q: want the line and the minimum, never the token", err)
	}
}

// TestPeerIsTheClientCertificate: with --peer-identity client-cert the
// caller is the SPIFFE id of its mTLS certificate.
func TestPeerIsTheClientCertificate(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "mesh CA")
	serverCert, serverKey := writePEM(t, ca.issue(t, "gateway", true))
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	writeFile(t, caFile, string(ca.pem))
	var logs gatewaytest.Output
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		Logs:     &logs,
		Args:     []string{"--tls-cert", serverCert, "--tls-key", serverKey, "--client-ca", caFile, "--peer-identity", "client-cert"},
	})
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	const id = "spiffe://cluster.local/ns/shop/sa/checkout"
	h.HTTP = tlsClient(roots, issueSPIFFE(t, ca, id))
	if err := listOK(t, h); err != nil {
		t.Fatal(err)
	}
	logs.WaitFor(t, `"msg":"rpc","peer":"`+id+`"`, 10*time.Second)
}

// issueSPIFFE returns a client certificate of ca whose URI SAN is id.
func issueSPIFFE(t *testing.T, ca *testCA, id string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "checkout"},
		URIs:         []*url.URL{u},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestPeerIsTheBearerToken: with --peer-identity token the caller is its
// token's id, whatever address it calls from (behind a sidecar every
// address is the sidecar's), and a refused call without a known token is
// named by its address.
func TestPeerIsTheBearerToken(t *testing.T) {
	t.Parallel()
	tokens := filepath.Join(t.TempDir(), "tokens")
	writeFile(t, tokens, "reports token-reports-0123456789\n")
	var logs gatewaytest.Output
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Logs: &logs, Args: []string{"--auth-tokens-file", tokens, "--peer-identity", "token"}})
	list := func(from, token string) error {
		req := connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: smallDesktop, PageSize: 2})
		req.Header().Set("Authorization", "Bearer "+token)
		_, err := clientFrom(h, from, 0).ListImageModifiedRecords(t.Context(), req)
		return err
	}
	for _, from := range []string{"127.0.0.2", "127.0.0.3"} {
		if err := list(from, "token-reports-0123456789"); err != nil {
			t.Fatalf("from %s: %v", from, err)
		}
	}
	if err := list("127.0.0.4", "token-unknown-0123456789"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("an unknown token: %v, want Unauthenticated", err)
	}
	logs.WaitFor(t, `"reason":"unauthenticated","peer":"127.0.0.4"`, 10*time.Second)
	if n := strings.Count(logs.String(), `"msg":"rpc","peer":"token:reports","token_id":"reports"`); n != 2 {
		t.Errorf("%d access lines name the peer token:reports, want both calls:\n%s", n, logs.String())
	}
}
