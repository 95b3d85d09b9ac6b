// Package gatewaytest runs a whole gateway for tests and benchmarks: an ECD
// simulator on a loopback port, the gateway built by package gateway from
// its production defaults in front of it on another loopback port (HTTP/1.1
// and h2c, or TLS), and what a test needs to talk to it — clients for the
// three protocols, stream draining, and readers of google.rpc error
// details.
package gatewaytest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aliyun/credentials-go/credentials"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

const (
	// Region is the region the kit's requests name.
	Region = "cn-hangzhou"
	// KeyID and KeySecret are the AccessKey the simulator accepts and the
	// gateway signs with, unless Config.Keys or Config.Credentials say
	// otherwise.
	KeyID     = "LTAItestgatewaykey"
	KeySecret = "test-secret-9f8e7d6c5b4a"
	// Seed seeds the simulator's records, tokens and fault decisions.
	Seed = 7
)

// Config says what to start. The zero value is a gateway at production
// defaults in front of the simulator's default desktops.
type Config struct {
	// Args are gateway flags applied on top of gateway.DefaultConfig, as
	// the daemon would parse them (the environment is not read). --listen
	// and --upstream-endpoint are the kit's.
	Args []string
	// Upstream, when set, is the base URL of the upstream to answer from
	// (e.g. an upstreamtest.Upstream) instead of a simulator; Stack.Sim is
	// nil then.
	Upstream string
	// Desktops are the simulator's desktops; empty: ecdsim.DefaultDesktops.
	Desktops []ecdsim.Desktop
	// Faults are the simulator's initial faults.
	Faults ecdsim.Faults
	// Keys are the simulator's accepted keys; empty: KeyID/KeySecret.
	Keys []ecdsim.Key
	// Credentials sign the gateway's calls; nil: the real credentials
	// library with KeyID/KeySecret.
	Credentials upstream.CredentialsProvider
	// WrapSimulator, when not nil, wraps the simulator's handler (fault
	// injection, request logs).
	WrapSimulator func(http.Handler) http.Handler
	// WrapHandler, when not nil, wraps the gateway's handler outside its
	// chain (see gateway.Gateway.Instrument), for measurements.
	WrapHandler func(http.Handler) http.Handler
	// UpstreamOptions are added last to the upstream client's options, for
	// what no flag sets. A test that uses one says why.
	UpstreamOptions []upstream.Option
	// Telemetry records the gateway's spans and metrics; nil: the OTel SDK
	// as the daemon builds it (exporting nothing), with SpanProcessor.
	Telemetry *gateway.Telemetry
	// SpanProcessor, when not nil, sees every span (e.g. a
	// tracetest.SpanRecorder).
	SpanProcessor sdktrace.SpanProcessor
	// Logs receives the gateway's JSON logs at debug level; nil discards
	// them.
	Logs io.Writer

	// Fleet and watch (issue 12).
	// Now, when not nil, is the clock of the simulator (its timestamp
	// checks, quota and live desktops) and of the gateway's signatures,
	// e.g. a *Clock's Now.
	Now func() time.Time
	// Live configures the simulator's desktops marked ecdsim.Desktop.Live;
	// Order is its record order; Quota its account quota.
	Live  ecdsim.Live
	Order ecdsim.Order
	Quota ecdsim.Quota
	// ServiceOptions are added last to the service's options (e.g.
	// service.WithWatchClock with a *Clock).
	ServiceOptions []service.Option
}

// Stack is a running simulator and gateway.
type Stack struct {
	// Sim is the simulator (nil with Config.Upstream); SimURL the base URL
	// of the upstream.
	Sim    *ecdsim.Simulator
	SimURL string
	// URL is the gateway's base URL.
	URL string
	// Config is the gateway's configuration.
	Config gateway.Config
	// Gateway is the gateway; Telemetry where it records.
	Gateway   *gateway.Gateway
	Telemetry *gateway.Telemetry
	// Upstream is the gateway's upstream client.
	Upstream *upstream.Client
	// HTTP is the transport of Client: h2c, or TLS once a test sets it.
	HTTP *http.Client

	closers  []func()
	stopOnce sync.Once
	stopErr  error
	cancel   context.CancelFunc
	served   chan error
}

// Simulator starts a simulator on a loopback port for t, accepting the
// kit's key unless cfg names keys, and returns it with its base URL: for
// several gateways (Config.Upstream) in front of one simulated account.
func Simulator(t testing.TB, cfg ecdsim.Config) (*ecdsim.Simulator, string) {
	t.Helper()
	if cfg.Keys == nil {
		cfg.Keys = []ecdsim.Key{{AccessKeyID: KeyID, AccessKeySecret: KeySecret}}
	}
	if cfg.Seed == 0 {
		cfg.Seed = Seed
	}
	sim, err := ecdsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv.URL
}

// Start starts a stack; Close stops it. Tests use [New].
func Start(cfg Config) (*Stack, error) {
	gwCfg, err := gateway.ParseArgs(cfg.Args, func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("gateway flags %q: %w", cfg.Args, err)
	}
	s := &Stack{served: make(chan error, 1), SimURL: cfg.Upstream}
	if cfg.Upstream == "" {
		keys := cfg.Keys
		if keys == nil {
			keys = []ecdsim.Key{{AccessKeyID: KeyID, AccessKeySecret: KeySecret}}
		}
		sim, err := ecdsim.New(ecdsim.Config{Seed: Seed, Desktops: cfg.Desktops, Keys: keys, Faults: cfg.Faults,
			Now: cfg.Now, Live: cfg.Live, Order: cfg.Order, Quota: cfg.Quota})
		if err != nil {
			return nil, err
		}
		s.Sim = sim
		var simHandler http.Handler = sim
		if cfg.WrapSimulator != nil {
			simHandler = cfg.WrapSimulator(sim)
		}
		simServer := httptest.NewServer(simHandler)
		s.closers = append(s.closers, simServer.Close)
		s.SimURL = simServer.URL
	}

	creds := cfg.Credentials
	if creds == nil {
		if creds, err = LibraryCredentials(KeyID, KeySecret); err != nil {
			s.Close()
			return nil, err
		}
	}
	tel := cfg.Telemetry
	if tel == nil {
		var processors []sdktrace.SpanProcessor
		if cfg.SpanProcessor != nil {
			processors = append(processors, cfg.SpanProcessor)
		}
		if tel, err = gateway.NewTelemetry(context.Background(), processors...); err != nil {
			s.Close()
			return nil, err
		}
		s.closers = append(s.closers, func() { _ = tel.Shutdown(context.Background()) })
	}
	s.Telemetry = tel
	logger := slog.New(slog.DiscardHandler)
	if cfg.Logs != nil {
		logger = gateway.NewLogger(cfg.Logs, slog.LevelDebug)
	}
	transport := upstream.NewTransport()
	s.closers = append(s.closers, transport.CloseIdleConnections)
	gwCfg.UpstreamEndpoint = s.SimURL
	s.Config = gwCfg
	upstreamOpts := []upstream.Option{upstream.WithTransport(transport)}
	if cfg.Now != nil {
		upstreamOpts = append(upstreamOpts, upstream.WithClock(cfg.Now))
	}
	var release func()
	s.Upstream, release = gateway.NewUpstream(gwCfg, creds, logger, tel, append(upstreamOpts, cfg.UpstreamOptions...)...)
	s.closers = append(s.closers, release)
	if s.Gateway, err = gateway.New(gwCfg, s.Upstream, logger, tel, cfg.ServiceOptions...); err != nil {
		s.Close()
		return nil, err
	}
	s.Gateway.CheckCredentials(creds) // readiness, as the daemon's
	if cfg.WrapHandler != nil {
		s.Gateway.Instrument(cfg.WrapHandler)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.Close()
		return nil, err
	}
	s.URL = "http://" + ln.Addr().String()
	if gwCfg.TLSCert != "" {
		s.URL = "https://" + ln.Addr().String()
	}
	s.HTTP = H2C()
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() { s.served <- s.Gateway.Serve(ctx, ln, nil) }()
	return s, nil
}

// New starts a stack for t and stops it when t ends, failing t if the
// gateway's shutdown fails.
func New(t testing.TB, cfg Config) *Stack {
	t.Helper()
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("gateway: %v", err)
		}
		s.Close()
	})
	return s
}

// Stop ends the gateway's Serve as SIGTERM does (drain, then stop) and
// returns its error. It is safe to call more than once.
func (s *Stack) Stop() error {
	s.stopOnce.Do(func() {
		if s.cancel == nil {
			return
		}
		s.cancel()
		s.stopErr = <-s.served
	})
	return s.stopErr
}

// Close stops the gateway and the simulator and releases what they hold.
func (s *Stack) Close() {
	_ = s.Stop()
	if s.HTTP != nil {
		s.HTTP.CloseIdleConnections()
	}
	for i := len(s.closers) - 1; i >= 0; i-- {
		s.closers[i]()
	}
}

// Client is an ImageRecordsService client of the gateway over s.HTTP.
func (s *Stack) Client(opts ...connect.ClientOption) imagerecordsv1connect.ImageRecordsServiceClient {
	return imagerecordsv1connect.NewImageRecordsServiceClient(s.HTTP, s.URL, opts...)
}

// CheckRecords fails t unless got are the simulator's records
// first..first+len(got)-1 of desktop, converted faithfully.
func (s *Stack) CheckRecords(t testing.TB, desktop string, first int, got []*imagerecordsv1.ImageModifiedRecord) {
	t.Helper()
	for i, r := range got {
		want, ok := s.Sim.Record(desktop, first+i)
		if !ok {
			t.Fatalf("record %d: the simulator has no record %d", i, first+i)
		}
		wantTime, err := time.Parse(time.RFC3339Nano, want.UpdateTime)
		if err != nil {
			t.Fatal(err)
		}
		if r.GetImageId() != want.ImageID || r.GetNewImageId() != want.NewImageID ||
			r.GetImageName() != want.ImageName || r.GetNewImageName() != want.NewImageName ||
			r.GetReason() != want.Reason || int(r.GetUpstreamStatus()) != want.Status ||
			!r.GetUpdateTime().AsTime().Equal(wantTime) || r.GetStatus() != Status(want.Status) {
			t.Fatalf("record %d (simulator index %d) = %v, want %+v", i, first+i, r, want)
		}
	}
}

// Status is the proto status of an upstream Status number 0, 1 or 2.
func Status(n int) imagerecordsv1.ImageModificationStatus {
	switch n {
	case 0:
		return imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_IN_PROGRESS
	case 1:
		return imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_SUCCEEDED
	case 2:
		return imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_FAILED
	}
	return imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_UNSPECIFIED
}

// LibraryCredentials is an AccessKey pair through the real Alibaba Cloud
// credentials library, as the daemon gets its credentials.
func LibraryCredentials(id, secret string) (upstream.CredentialsLibrary, error) {
	c, err := credentials.NewCredential(&credentials.Config{
		Type:            new("access_key"),
		AccessKeyId:     new(id),
		AccessKeySecret: new(secret),
	})
	if err != nil {
		return upstream.CredentialsLibrary{}, err
	}
	return upstream.CredentialsLibrary{Credential: c}, nil
}

// H2C is an HTTP client that speaks HTTP/2 without TLS, as a mesh sidecar
// does.
func H2C() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

// H2CFrom is H2C with connections from the loopback address localIP
// (127.0.0.2, 127.0.0.3, ...: Linux routes all of 127.0.0.0/8 to the
// loopback interface), so a test can be several peers of the gateway's
// per-peer limits; tune, when not nil, adjusts the transport (say, its
// HTTP/2 receive window).
func H2CFrom(localIP string, tune func(*http.Transport)) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(localIP)}}
	c := H2C()
	t := c.Transport.(*http.Transport)
	t.DialContext = d.DialContext
	if tune != nil {
		tune(t)
	}
	return c
}

// ClientOf is an ImageRecordsService client of the gateway at addr
// (host:port) over h2c.
func ClientOf(addr string, opts ...connect.ClientOption) imagerecordsv1connect.ImageRecordsServiceClient {
	return imagerecordsv1connect.NewImageRecordsServiceClient(H2C(), "http://"+addr, opts...)
}

// GzipBomb is a compressed gRPC request envelope of ImageRecordsService
// whose message (a desktop_id of inflated zero bytes) is gzip-compressed
// about a thousandfold: 60 MiB inflated fits under the gateway's 64 KiB
// read limit.
func GzipBomb(inflated int) []byte {
	var z bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&z, gzip.BestCompression) // the level is valid
	_, _ = gz.Write(protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.BytesType), uint64(inflated)))
	zeros := make([]byte, 64<<10)
	for left := inflated; left > 0; left -= len(zeros) {
		_, _ = gz.Write(zeros[:min(left, len(zeros))])
	}
	_ = gz.Close()
	envelope := binary.BigEndian.AppendUint32([]byte{1}, uint32(z.Len())) // flag 1: compressed
	return append(envelope, z.Bytes()...)
}

// Protocol is one of the wire protocols the gateway serves on one port.
type Protocol struct {
	Name string
	Opts []connect.ClientOption
}

// Protocols are Connect, gRPC and gRPC-Web.
var Protocols = []Protocol{
	{"connect", nil},
	{"grpc", []connect.ClientOption{connect.WithGRPC()}},
	{"grpcweb", []connect.ClientOption{connect.WithGRPCWeb()}},
}

// StreamMessage is one message of a StreamImageModifiedRecords stream.
type StreamMessage = imagerecordsv1.StreamImageModifiedRecordsResponse

// Drain receives a whole stream and returns its messages and how it ended
// (nil for a clean end).
func Drain(stream *connect.ServerStreamForClient[StreamMessage]) ([]*StreamMessage, error) {
	var msgs []*StreamMessage
	for stream.Receive() {
		msgs = append(msgs, stream.Msg())
	}
	err := stream.Err()
	if cerr := stream.Close(); err == nil && cerr != nil && !errors.Is(cerr, io.EOF) {
		err = cerr
	}
	return msgs, err
}

// Stream opens a stream with req and drains it.
func Stream(ctx context.Context, c imagerecordsv1connect.ImageRecordsServiceClient, req *imagerecordsv1.StreamImageModifiedRecordsRequest) ([]*StreamMessage, error) {
	stream, err := c.StreamImageModifiedRecords(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return Drain(stream)
}

// RecordsOf concatenates the records of msgs.
func RecordsOf(msgs []*StreamMessage) []*imagerecordsv1.ImageModifiedRecord {
	var out []*imagerecordsv1.ImageModifiedRecord
	for _, m := range msgs {
		out = append(out, m.GetRecords()...)
	}
	return out
}

// Detail returns the first error detail of type T in err, a *connect.Error.
func Detail[T proto.Message](err error) (T, bool) {
	var zero T
	cerr, ok := errors.AsType[*connect.Error](err)
	if !ok {
		return zero, false
	}
	for _, d := range cerr.Details() {
		v, derr := d.Value()
		if x, ok := v.(T); derr == nil && ok {
			return x, true
		}
	}
	return zero, false
}

// MustDetail is Detail that fails t when err has no detail of type T.
func MustDetail[T proto.Message](t testing.TB, err error) T {
	t.Helper()
	d, ok := Detail[T](err)
	if !ok {
		var zero T
		t.Fatalf("no %T detail in %v", zero, err)
	}
	return d
}

// ErrorInfo is the google.rpc.ErrorInfo of err; t fails without one.
func ErrorInfo(t testing.TB, err error) *errdetails.ErrorInfo {
	t.Helper()
	return MustDetail[*errdetails.ErrorInfo](t, err)
}

// RetryInfo is the google.rpc.RetryInfo of err; t fails without one.
func RetryInfo(t testing.TB, err error) *errdetails.RetryInfo {
	t.Helper()
	return MustDetail[*errdetails.RetryInfo](t, err)
}

// CheckFieldViolation fails t unless err carries a google.rpc.BadRequest
// that names field.
func CheckFieldViolation(t testing.TB, err error, field string) {
	t.Helper()
	br := MustDetail[*errdetails.BadRequest](t, err)
	for _, fv := range br.GetFieldViolations() {
		if fv.GetField() == field {
			return
		}
	}
	t.Fatalf("BadRequest %v does not name %s", br, field)
}

// Output is a buffer for a gateway's logs or banner that is safe for
// concurrent writes and reads, and that a test can wait on.
type Output struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // closed and replaced on every write
}

// Write appends p.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n, err := o.b.Write(p)
	if o.changed != nil {
		close(o.changed)
		o.changed = nil
	}
	return n, err
}

// String returns everything written so far.
func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}

// WaitFor waits until the output contains s, and fails t when that takes
// longer than timeout.
func (o *Output) WaitFor(t testing.TB, s string, timeout time.Duration) {
	t.Helper()
	if err := o.await(s, timeout); err != nil {
		t.Fatal(err)
	}
}

// await waits until the output contains s, or returns an error when that
// takes longer than timeout.
func (o *Output) await(s string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		found := bytes.Contains(o.b.Bytes(), []byte(s))
		if o.changed == nil {
			o.changed = make(chan struct{})
		}
		changed := o.changed
		o.mu.Unlock()
		if found {
			return nil
		}
		select {
		case <-changed:
		case <-deadline.C:
			return fmt.Errorf("after %v the output still lacks %s:\n%s", timeout, s, o.String())
		}
	}
}

// Running is a gateway started by [Run], as the daemon runs it.
type Running struct {
	Gateway        *gateway.Gateway
	Addrs          gateway.Addrs
	Stdout, Stderr *Output
	stop           func() error
}

// Run runs gateway.Run with args parsed as the daemon parses them (the
// environment is not read) until t ends or Stop is called; --listen
// defaults to a free loopback port.
func Run(t testing.TB, args ...string) *Running {
	t.Helper()
	cfg, err := gateway.ParseArgs(append([]string{"--listen", "127.0.0.1:0"}, args...), func(string) (string, bool) { return "", false }, io.Discard)
	if err != nil {
		t.Fatalf("flags %q: %v", args, err)
	}
	r := &Running{Stdout: &Output{}, Stderr: &Output{}}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan *Running, 1)
	done := make(chan error, 1)
	go func() {
		done <- gateway.Run(ctx, cfg, r.Stdout, r.Stderr, func(g *gateway.Gateway, a gateway.Addrs) {
			r.Gateway, r.Addrs = g, a
			ready <- r
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("gateway.Run: %v\n%s", err, r.Stderr)
	}
	var once sync.Once
	var runErr error
	r.stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { _ = r.stop() })
	return r
}

// Stop ends the gateway as SIGTERM does and returns what Run returned.
func (r *Running) Stop() error { return r.stop() }

// RedisServer is a real redis-server on a free loopback port, started for
// one test.
type RedisServer struct {
	// URL is the server's redis:// URL.
	URL  string
	cmd  *exec.Cmd
	done chan error
}

// Redis starts Debian's redis-server (.ci/run installs it) on a free
// loopback port, without persistence, and stops it when t ends.
func Redis(t testing.TB) *RedisServer {
	t.Helper()
	r, err := StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// StartRedis starts redis-server as [Redis] does, for a caller without a
// test (the benchmark); Stop stops it. The error wraps [exec.ErrNotFound]
// when redis-server is not installed.
func StartRedis() (*RedisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server is not installed (apt-get install redis-server; .ci/run does): %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	out := &Output{}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &RedisServer{URL: fmt.Sprintf("redis://127.0.0.1:%d/0", port), cmd: cmd, done: make(chan error, 1)}
	go func() { r.done <- cmd.Wait() }()
	if err := out.await("Ready to accept connections", 30*time.Second); err != nil {
		r.Stop()
		return nil, fmt.Errorf("redis-server: %w", err)
	}
	return r, nil
}

// Stop kills the server (as a crash would) and waits for it to exit. It
// is safe to call more than once.
func (r *RedisServer) Stop() {
	if r.cmd.ProcessState != nil {
		return
	}
	_ = r.cmd.Process.Kill()
	<-r.done
	r.done <- nil // for a second Stop
}
