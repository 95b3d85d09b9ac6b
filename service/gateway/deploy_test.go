package gateway_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
	"github.com/imagerecords/imagerecords/upstream/upstreamtest"
)

// lateCredentials has no key until present is set, as a pod whose
// RRSA token or Secret arrives after it started.
type lateCredentials struct {
	present atomic.Bool
	asked   atomic.Int64
}

func (c *lateCredentials) Credentials(context.Context) (upstream.Credentials, error) {
	c.asked.Add(1)
	if !c.present.Load() {
		return upstream.Credentials{}, errors.New("no key yet")
	}
	return upstream.Credentials{AccessKeyID: gatewaytest.KeyID, AccessKeySecret: gatewaytest.KeySecret}, nil
}

func healthOf(t *testing.T, client *grpchealth.Client, service string) grpchealth.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	res, err := client.Check(ctx, &grpchealth.CheckRequest{Service: service})
	if err != nil {
		t.Fatalf("health check of %q: %v", service, err)
	}
	return res.Status
}

func TestReadinessFollowsTheCredentials(t *testing.T) {
	t.Parallel()
	creds := &lateCredentials{}
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Credentials: creds})
	health := grpchealth.NewClient(h.HTTP, h.URL, connect.WithGRPC())
	check := func(step string, wantLive, wantReady grpchealth.Status) {
		t.Helper()
		if got := healthOf(t, health, gateway.LivenessService); got != wantLive {
			t.Errorf("%s: liveness %v, want %v", step, got, wantLive)
		}
		if got := healthOf(t, health, gateway.ReadinessService); got != wantReady {
			t.Errorf("%s: readiness %v, want %v", step, got, wantReady)
		}
	}

	check("no credentials", grpchealth.StatusServing, grpchealth.StatusNotServing)
	err := listOK(t, h)
	if info := gatewaytest.ErrorInfo(t, err); info.GetReason() != "GATEWAY_CREDENTIALS_MISSING" {
		t.Fatalf("a call without credentials: %v, want GATEWAY_CREDENTIALS_MISSING", err)
	}

	creds.present.Store(true)
	check("credentials arrived", grpchealth.StatusServing, grpchealth.StatusServing)
	if err := listOK(t, h); err != nil {
		t.Fatalf("a call with credentials: %v", err)
	}

	creds.present.Store(false)
	check("credentials vanished", grpchealth.StatusServing, grpchealth.StatusNotServing)

	_, err = health.Check(t.Context(), &grpchealth.CheckRequest{Service: "no.such.Service"})
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("an unknown service: %v, want NotFound", err)
	}
	// Liveness never asks the credentials provider.
	before := creds.asked.Load()
	healthOf(t, health, gateway.LivenessService)
	if creds.asked.Load() != before {
		t.Error("a liveness check asked the credentials provider")
	}
}

// TestHealthIgnoresAnUpstreamOutage: while ECD answers every call 503,
// calls fail Unavailable but liveness and readiness stay SERVING and ask
// the upstream nothing: an outage every replica shares must neither
// restart pods nor empty the Service.
func TestHealthIgnoresAnUpstreamOutage(t *testing.T) {
	t.Parallel()
	u := upstreamtest.InOrder(t, upstreamtest.Fail(http.StatusServiceUnavailable, "ServiceUnavailable"))
	h := gatewaytest.New(t, gatewaytest.Config{Upstream: u.URL})
	if _, err := listOnce(t.Context(), h); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("List during the outage: %v, want Unavailable", err)
	}
	before := len(u.Requests())
	health := grpchealth.NewClient(h.HTTP, h.URL, connect.WithGRPC())
	for _, service := range []string{gateway.LivenessService, gateway.ReadinessService} {
		if got := healthOf(t, health, service); got != grpchealth.StatusServing {
			t.Errorf("health of %q during an upstream outage: %v, want SERVING", service, got)
		}
	}
	if n := len(u.Requests()) - before; n != 0 {
		t.Errorf("the health checks made %d upstream requests, want none", n)
	}
}

func TestDrainDelayServesWithReadinessOff(t *testing.T) {
	t.Parallel()
	var logs gatewaytest.Output
	// A drain delay long enough for the calls below on a loaded machine
	// (the default is 0: a laptop's Ctrl-C stops at once).
	h := gatewaytest.New(t, gatewaytest.Config{Desktops: testDesktops, Logs: &logs, Args: []string{"--drain-delay", "4s"}})
	stopped := make(chan error, 1)
	start := time.Now()
	go func() { stopped <- h.Stop() }() // SIGTERM
	logs.WaitFor(t, "draining: readiness is NOT_SERVING", 10*time.Second)

	// A new connection, as a client that has not yet learnt of the drain.
	fresh := grpchealth.NewClient(gatewaytest.H2C(), h.URL, connect.WithGRPC())
	if got := healthOf(t, fresh, gateway.ReadinessService); got != grpchealth.StatusNotServing {
		t.Errorf("readiness during the drain delay: %v, want NOT_SERVING", got)
	}
	if got := healthOf(t, fresh, gateway.LivenessService); got != grpchealth.StatusServing {
		t.Errorf("liveness during the drain delay: %v, want SERVING", got)
	}
	_, err := gatewaytest.ClientOf(strings.TrimPrefix(h.URL, "http://"), connect.WithGRPC()).ListImageModifiedRecords(t.Context(),
		connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: smallDesktop}))
	if err != nil {
		t.Errorf("a call on a new connection during the drain delay: %v, want it served", err)
	}
	if took := time.Since(start); took >= 4*time.Second {
		t.Fatalf("the checks took %v, longer than the drain delay: the test proves nothing", took)
	}

	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 4*time.Second {
		t.Errorf("the gateway stopped %v after SIGTERM, before its 4 s drain delay", took)
	}
	if _, err := net.DialTimeout("tcp", strings.TrimPrefix(h.URL, "http://"), 5*time.Second); err == nil {
		t.Error("the listener still accepts after the drain")
	}
	if status, _ := h.Gateway.Health(t.Context()); status != grpchealth.StatusNotServing {
		t.Errorf("liveness after the stop: %v, want NOT_SERVING", status)
	}
}

// TestExitTimeIsBounded stops a gateway whose stream never finishes (the
// upstream answers only when the call is cancelled): it must take the
// drain delay and the whole grace, and no longer than MaxExitTime says.
func TestExitTimeIsBounded(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 1)
	// Short delay and grace keep the test short; the bound is their sum
	// plus fixed waits either way.
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		Args:     []string{"--drain-delay", "200ms", "--shutdown-grace", "300ms"},
		WrapSimulator: func(http.Handler) http.Handler {
			return http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				<-r.Context().Done() // a stalled upstream
			})
		},
	})
	streamErr := make(chan error, 1)
	go func() {
		_, err := gatewaytest.Stream(t.Context(), h.Client(connect.WithGRPC()), &imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop})
		streamErr <- err
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the stream's upstream call never arrived")
	}
	start := time.Now()
	if err := h.Stop(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if minimum := h.Config.DrainDelay + h.Config.ShutdownGrace; took < minimum {
		t.Errorf("stopped after %v with a stream in flight, before drain delay + grace (%v)", took, minimum)
	}
	if bound := h.Config.MaxExitTime(); took > bound {
		t.Errorf("stopped after %v, past MaxExitTime %v", took, bound)
	}
	if err := <-streamErr; connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("the stream cut by the end of the grace: %v, want Unavailable", err)
	}
}

func TestMaxExitTimeAddsUpTheTimeline(t *testing.T) {
	t.Parallel()
	testCases := []struct {
		args []string
		want time.Duration
	}{
		// 15 s grace + 2 s for final statuses + 5 s telemetry flush.
		{nil, 22 * time.Second},
		{[]string{"--drain-delay", "5s"}, 27 * time.Second},
		// The simulator's stop adds 1 s.
		{[]string{"--simulate", "--drain-delay", "5s", "--shutdown-grace", "10s"}, 23 * time.Second},
	}
	for _, tc := range testCases {
		cfg, err := gateway.ParseArgs(tc.args, noEnv, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.MaxExitTime(); got != tc.want {
			t.Errorf("%q: MaxExitTime %v, want %v", tc.args, got, tc.want)
		}
	}
}

// TestDefaultListenIsLoopback: the binary started with no flag or
// variable listens on loopback only (safe on a laptop) and has no admin
// listener; the image and the manifests open it with IMAGERECORDS_LISTEN
// (their own tests check 0.0.0.0:8080).
func TestDefaultListenIsLoopback(t *testing.T) {
	t.Parallel()
	cfg, err := gateway.ParseArgs(nil, noEnv, nil)
	if err != nil {
		t.Fatal(err)
	}
	host, _, err := net.SplitHostPort(cfg.Listen)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		t.Errorf("default --listen %q is not a loopback address", cfg.Listen)
	}
	if cfg.AdminListen != "" {
		t.Errorf("default --admin-listen %q, want none", cfg.AdminListen)
	}
}

// dnsNotFound is a transport whose every dial fails as DNS does for a host
// that does not exist: no name is ever resolved.
func dnsNotFound(dials *atomic.Int64) *http.Transport {
	t := upstream.NewTransport()
	t.DialContext = func(_ context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		host, _, _ := net.SplitHostPort(addr)
		return nil, &net.OpError{Op: "dial", Net: network, Err: &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}}
	}
	return t
}

func TestUnknownRegionIsInvalidArgument(t *testing.T) {
	t.Parallel()
	var dials atomic.Int64
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		// The regional endpoint (ecd.<region>.aliyuncs.com), as in
		// production, with DNS answered by the test.
		UpstreamOptions: []upstream.Option{upstream.WithEndpoint(""), upstream.WithTransport(dnsNotFound(&dials))},
	})
	_, err := h.Client(connect.WithGRPC()).ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId: "cn-hangzou", DesktopId: smallDesktop,
	}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), `"cn-hangzou"`) {
		t.Fatalf("a region typo: %v, want InvalidArgument naming the region", err)
	}
	gatewaytest.CheckFieldViolation(t, err, "region_id")
	if _, ok := gatewaytest.Detail[*errdetails.RetryInfo](err); ok {
		t.Error("a region typo carries RetryInfo, as if it were an outage")
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("the upstream was dialled %d times, want 1 (never retried)", n)
	}
}

// TestSimulatorRefusesRegionsItDoesNotServe: behind an endpoint that does
// not depend on the region (the simulator, a VPC endpoint), the upstream's
// own InvalidRegionId answer is the caller's InvalidArgument, not retried.
func TestSimulatorRefusesRegionsItDoesNotServe(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		WrapSimulator: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				next.ServeHTTP(w, r)
			})
		},
	})
	c := h.Client(connect.WithGRPC())
	_, err := c.ListImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.ListImageModifiedRecordsRequest{
		RegionId: "cn-hangzou", DesktopId: smallDesktop,
	}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || gatewaytest.ErrorInfo(t, err).GetReason() != "InvalidRegionId" {
		t.Fatalf("a region the simulator does not serve: %v, want InvalidArgument with reason InvalidRegionId", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d upstream calls, want 1 (never retried)", n)
	}
	if err := listOK(t, h); err != nil { // cn-hangzhou, the README's region
		t.Errorf("the README's region: %v", err)
	}
}

// tlsSerial dials addr and returns the serial number of the server's
// certificate.
func tlsSerial(t *testing.T, addr string, roots *x509.CertPool, certs ...tls.Certificate) (string, error) {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	// With TLS 1.3 a refused client certificate shows at the first read;
	// an accepted one reads the server's HTTP/2 SETTINGS.
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return "", err
	}
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		return "", err
	}
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

func TestTLSFilesReloadWithoutDroppingConnections(t *testing.T) {
	t.Parallel()
	ca, newCA := newTestCA(t, "gateway CA"), newTestCA(t, "rotated client CA")
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	dir := t.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "ca.crt")
	install := func(c tls.Certificate, clientCA *testCA) string {
		cf, kf := writePEM(t, c)
		for src, dst := range map[string]string{cf: certFile, kf: keyFile} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, dst, string(b))
		}
		writeFile(t, caFile, string(clientCA.pem))
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf.SerialNumber.String()
	}
	first := install(ca.issue(t, "gateway", true), ca)
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		Faults:   ecdsim.Faults{Latency: 10 * time.Millisecond},
		Args:     []string{"--tls-cert", certFile, "--tls-key", keyFile, "--client-ca", caFile},
	})
	addr := strings.TrimPrefix(h.URL, "https://")
	oldClient := ca.issue(t, "caller", false)
	h.HTTP = tlsClient(roots, oldClient)

	// A stream on a connection made before the rotation.
	stream, err := h.Client(connect.WithGRPC()).StreamImageModifiedRecords(t.Context(), connect.NewRequest(&imagerecordsv1.StreamImageModifiedRecordsRequest{RegionId: gatewaytest.Region, DesktopId: bigDesktop}))
	if err != nil {
		t.Fatal(err)
	}
	if !stream.Receive() {
		t.Fatal(stream.Err())
	}
	if got, err := tlsSerial(t, addr, roots, oldClient); err != nil || got != first {
		t.Fatalf("before the rotation: serial %s, %v; want %s", got, err, first)
	}

	second := install(ca.issue(t, "gateway", true), newCA)
	if err := h.Gateway.Reload(); err != nil { // SIGHUP, or the file poll
		t.Fatal(err)
	}
	newClient := newCA.issue(t, "caller", false)
	if got, err := tlsSerial(t, addr, roots, newClient); err != nil || got != second {
		t.Errorf("after the rotation: serial %s, %v; want the new certificate %s", got, err, second)
	}
	if _, err := tlsSerial(t, addr, roots, oldClient); err == nil {
		t.Error("after the rotation a client certificate of the old client CA is still accepted")
	}

	// A broken file keeps what is in force.
	writeFile(t, keyFile, "not a key")
	if err := h.Gateway.Reload(); err == nil {
		t.Error("reloading a broken key succeeded")
	}
	if got, err := tlsSerial(t, addr, roots, newClient); err != nil || got != second {
		t.Errorf("after a failed reload: serial %s, %v; want %s still", got, err, second)
	}

	n := len(stream.Msg().GetRecords())
	for stream.Receive() {
		n += len(stream.Msg().GetRecords())
	}
	if err := stream.Err(); err != nil || n != 1234 {
		t.Errorf("the stream across the rotation: %d records, %v; want all 1234", n, err)
	}
}

// TestTLSFilesReloadOnChange rotates the certificate and client CA as the
// kubelet updates a mounted cert-manager Secret: the files are symlinks
// into a "..data" directory link that is swapped in one rename. No SIGHUP
// and no Reload call: the gateway's own poll must find the change. A
// connection made before the rotation keeps working; new handshakes get
// the new certificate and the new client CA.
func TestTLSFilesReloadOnChange(t *testing.T) {
	t.Parallel()
	ca, newCA := newTestCA(t, "gateway CA"), newTestCA(t, "rotated client CA")
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	dir := t.TempDir()
	// install writes one version of the Secret and points ..data at it,
	// as the kubelet's atomic writer does; it returns the serial number
	// of the server certificate.
	version := 0
	install := func(c tls.Certificate, clientCA *testCA) string {
		version++
		cf, kf := writePEM(t, c)
		vdir := filepath.Join(dir, "..version"+strconv.Itoa(version))
		if err := os.Mkdir(vdir, 0o700); err != nil {
			t.Fatal(err)
		}
		for src, name := range map[string]string{cf: "tls.crt", kf: "tls.key"} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(vdir, name), string(b))
		}
		writeFile(t, filepath.Join(vdir, "ca.crt"), string(clientCA.pem))
		link := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(filepath.Base(vdir), link); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(link, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf.SerialNumber.String()
	}
	first := install(ca.issue(t, "gateway", true), ca)
	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	var logs gatewaytest.Output
	h := gatewaytest.New(t, gatewaytest.Config{
		Desktops: testDesktops,
		Logs:     &logs,
		Args: []string{"--tls-cert", filepath.Join(dir, "tls.crt"), "--tls-key", filepath.Join(dir, "tls.key"),
			"--client-ca", filepath.Join(dir, "ca.crt")},
	})
	addr := strings.TrimPrefix(h.URL, "https://")
	oldClient := ca.issue(t, "caller", false)
	h.HTTP = tlsClient(roots, oldClient)
	if err := listOK(t, h); err != nil { // opens the connection of before the rotation
		t.Fatal(err)
	}
	if got, err := tlsSerial(t, addr, roots, oldClient); err != nil || got != first {
		t.Fatalf("before the rotation: serial %s, %v; want %s", got, err, first)
	}

	second := install(ca.issue(t, "gateway", true), newCA)
	// The gateway checks the files every 10 s: the bound leaves room for
	// one poll on a loaded machine.
	logs.WaitFor(t, "TLS files reloaded", 30*time.Second)

	newClient := newCA.issue(t, "caller", false)
	if got, err := tlsSerial(t, addr, roots, newClient); err != nil || got != second {
		t.Errorf("after the rotation: serial %s, %v; want the new certificate %s", got, err, second)
	}
	if _, err := tlsSerial(t, addr, roots, oldClient); err == nil {
		t.Error("after the rotation a new connection with a client certificate of the old client CA is accepted")
	}
	// The old client CA no longer admits a new connection: a call that
	// succeeds went over the connection made before the rotation.
	if err := listOK(t, h); err != nil {
		t.Errorf("a call on the connection made before the rotation: %v, want it served", err)
	}
}
