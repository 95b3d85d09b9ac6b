package gateway_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// h2Preface is what an HTTP/2 client sends first.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// dialFrom opens a TCP connection to the gateway of h from the loopback
// address ip.
func dialFrom(t *testing.T, h *gatewaytest.Stack, ip string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", strings.TrimPrefix(strings.TrimPrefix(h.URL, "http://"), "https://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitClosed reads c until the gateway closes it, and returns how long
// that took; t fails if it stays open for bound.
func waitClosed(t *testing.T, c net.Conn, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(bound))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection is still open after %v", bound)
	}
	return time.Since(start)
}

// listFrom makes one List call from the loopback address ip.
func listFrom(ctx context.Context, h *gatewaytest.Stack, ip string) error {
	c := imagerecordsv1connect.NewImageRecordsServiceClient(gatewaytest.H2CFrom(ip, nil), h.URL, connect.WithGRPC())
	_, err := c.ListImageModifiedRecords(ctx, connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId: gatewaytest.Region, DesktopId: smallDesktop, PageSize: 2,
	}))
	return err
}

func TestIdleConnectionsAreClosed(t *testing.T) {
	t.Parallel()
	// 500 ms instead of the default 2 minutes, so the test does not wait
	// minutes; what is measured does not depend on the length.
	const idle = 500 * time.Millisecond
	ca := newTestCA(t, "gateway CA")
	serverCert, serverKey := writePEM(t, ca.issue(t, "gateway", true))
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	plain := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		Faults:   ecdsim.Faults{Latency: 100 * time.Millisecond}, // a stream of 13 pages lasts 1.3 s
		Args:     []string{"--idle-timeout", idle.String()},
	})
	tlsStack := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--idle-timeout", idle.String(), "--tls-cert", serverCert, "--tls-key", serverKey}})

	http1Request := func(t *testing.T, c net.Conn) {
		t.Helper()
		if _, err := io.WriteString(c, "GET /no-such-path HTTP/1.1\r\nHost: gateway\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.Close {
			t.Fatal("the gateway closed the connection after the answer: not a keep-alive test")
		}
	}
	testCases := []struct {
		name string
		open func(t *testing.T) net.Conn
	}{
		{"HTTP/1.1 keep-alive after a request", func(t *testing.T) net.Conn {
			c := dialFrom(t, plain, "127.0.0.1")
			http1Request(t, c)
			return c
		}},
		{"h2c with only the preface", func(t *testing.T) net.Conn {
			c := dialFrom(t, plain, "127.0.0.1")
			if _, err := io.WriteString(c, h2Preface+"\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil { // preface, empty SETTINGS
				t.Fatal(err)
			}
			return c
		}},
		{"TLS HTTP/1.1 keep-alive", func(t *testing.T) net.Conn {
			c := tls.Client(dialFrom(t, tlsStack, "127.0.0.1"), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12})
			http1Request(t, c)
			return c
		}},
		{"TLS h2 with only the preface", func(t *testing.T) net.Conn {
			c := tls.Client(dialFrom(t, tlsStack, "127.0.0.1"), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
			if _, err := io.WriteString(c, h2Preface+"\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
				t.Fatal(err)
			}
			return c
		}},
	}
	for _, tc := range testCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := tc.open(t)
			if took := waitClosed(t, c, 20*idle); took < idle/2 {
				t.Errorf("closed after %v, before the idle timeout of %v: closed for another reason", took, idle)
			}
		})
	}
	t.Run("a live stream is not idle", func(t *testing.T) {
		t.Parallel()
		msgs, err := gatewaytest.Stream(t.Context(), plain.Client(connect.WithGRPC()), &imagerecordsv1.StreamImageModifiedRecordsRequest{
			RegionId: gatewaytest.Region, DesktopId: bigDesktop,
		})
		if got := len(gatewaytest.RecordsOf(msgs)); err != nil || got != 1234 {
			t.Fatalf("a 1.3 s stream on a connection with a %v idle timeout: %d records, %v", idle, got, err)
		}
	})
}

// readRefusal reads what a refused connection gets and returns the reason
// it names.
func readRefusal(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a connection past the limit got no refusal: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a connection past the limit got HTTP %d", res.StatusCode)
	}
	return res.Header.Get("X-Refused")
}

func TestConnectionFloodIsRefused(t *testing.T) {
	t.Parallel()
	t.Run("past the per-peer cap, at the defaults", func(t *testing.T) {
		t.Parallel()
		h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops})
		perPeer := h.Config.MaxConnectionsPerPeer
		for range perPeer {
			dialFrom(t, h, "127.0.0.2") // accepted in order: these are admitted
		}
		for range 20 {
			if reason := readRefusal(t, dialFrom(t, h, "127.0.0.2")); reason != "max_connections_per_peer" {
				t.Fatalf("refused for %q", reason)
			}
		}
		if err := listFrom(t.Context(), h, "127.0.0.1"); err != nil {
			t.Fatalf("another peer's call during the flood: %v", err)
		}
	})
	t.Run("a trusted proxy is exempt from the per-peer cap", func(t *testing.T) {
		t.Parallel()
		// A cap of 4 instead of the default 256 keeps the test small; the
		// sidecar (a trusted proxy) carries every caller's connections.
		h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--max-connections-per-peer", "4", "--trusted-proxies", "127.0.0.2"}})
		for i := range 8 {
			c := dialFrom(t, h, "127.0.0.2")
			if _, err := io.WriteString(c, "GET /no-such-path HTTP/1.1\r\nHost: gateway\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("connection %d of the trusted proxy: %v", i+1, err)
			}
			res.Body.Close()
			if res.StatusCode == http.StatusServiceUnavailable {
				t.Fatalf("connection %d of the trusted proxy refused for %q", i+1, res.Header.Get("X-Refused"))
			}
		}
		for range 4 {
			dialFrom(t, h, "127.0.0.3") // accepted in order: these are admitted
		}
		if reason := readRefusal(t, dialFrom(t, h, "127.0.0.3")); reason != "max_connections_per_peer" {
			t.Fatalf("another address past the cap refused for %q", reason)
		}
	})
	t.Run("past the global cap, refused; a quiet caller evicts the flood's idle connection", func(t *testing.T) {
		t.Parallel()
		// A cap of 32 instead of the default 1024 keeps the flood (and the test's file
		// descriptors) small; the rule is the same at any size.
		const max = 32
		h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Args: []string{"--max-connections", "32"}})
		// A quiet caller's keep-alive connection, idle before the flood
		// began: the longest idle of all, yet not the one to go.
		quiet := dialFrom(t, h, "127.0.0.1")
		quietReader := bufio.NewReader(quiet)
		get := func() error {
			if _, err := io.WriteString(quiet, "GET /no-such-path HTTP/1.1\r\nHost: gateway\r\n\r\n"); err != nil {
				return err
			}
			res, err := http.ReadResponse(quietReader, nil)
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, res.Body)
			return res.Body.Close()
		}
		if err := get(); err != nil {
			t.Fatal(err)
		}
		var flood []net.Conn
		for i := range 2 * max {
			flood = append(flood, dialFrom(t, h, fmt.Sprintf("127.0.0.%d", 2+i%4)))
		}
		// The first fill the cap; the rest are refused: their peers hold
		// as many connections as any other, so they evict no one.
		for _, c := range flood[max-1:] {
			if reason := readRefusal(t, c); reason != "max_connections" {
				t.Fatalf("refused for %q", reason)
			}
		}
		if err := get(); err != nil {
			t.Errorf("the quiet caller's connection after the flood: %v", err)
		}
		// A caller with few connections makes room by closing an idle one
		// of the biggest peer.
		if err := listFrom(t.Context(), h, "127.0.0.1"); err != nil {
			t.Fatalf("a new call with the cap full of idle connections: %v", err)
		}
		closed := 0
		for _, c := range flood[:max-1] {
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond)) // the evicted one is closed already: EOF at once
			if _, err := c.Read(make([]byte, 1)); err == io.EOF {
				closed++
			}
		}
		if closed != 1 {
			t.Errorf("%d idle flood connections were closed to make room for one, want 1", closed)
		}
	})
	t.Run("past the global cap, all busy: refused", func(t *testing.T) {
		t.Parallel()
		// A cap of 8 instead of the default 1024: as above.
		const max = 8
		entered := make(chan struct{}, max)
		h := gatewaytest.New(t, gatewaytest.Config{
			Desktops: testDesktops,
			Args:     []string{"--max-connections", "8"},
			WrapHandler: func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					entered <- struct{}{}
					next.ServeHTTP(w, r)
				})
			},
		})
		for range max {
			// A request whose body never completes: busy until the
			// request deadline (--read-header-timeout) ends it.
			c := dialFrom(t, h, "127.0.0.2")
			_, err := io.WriteString(c, "POST /ecd.imagerecords.v1.ImageRecordsService/ListImageModifiedRecords HTTP/1.1\r\n"+
				"Host: gateway\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
			if err != nil {
				t.Fatal(err)
			}
		}
		for range max {
			<-entered
		}
		if reason := readRefusal(t, dialFrom(t, h, "127.0.0.1")); reason != "max_connections" {
			t.Fatalf("refused for %q", reason)
		}
	})
}
