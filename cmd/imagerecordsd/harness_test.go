package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/aliyun/credentials-go/credentials"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	imagerecordsv1 "github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1"
	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// harness is a gateway served by the real serve path on a loopback port,
// answering from a simulator on another loopback port.
type harness struct {
	sim       *ecdsim.Simulator
	simURL    string
	url       string
	gateway   *gateway
	telemetry *telemetry
	auth      *bearerAuth // nil without --auth-tokens-file
	// http is the harness's client transport: h2c, or TLS when the
	// gateway serves TLS (set before the first call to client).
	http *http.Client
	// handlers tracks the gateway's in-flight HTTP handlers, so a test can
	// wait for the server side of a cancelled stream to finish.
	handlers sync.WaitGroup
	// stop ends serve (as SIGTERM does) and returns its error.
	stop func() error
}

type harnessConfig struct {
	desktops          []ecdsim.Desktop
	faults            ecdsim.Faults
	retry             upstream.RetryPolicy
	signature         upstream.SignatureVersion
	secretOverride    string // sign with this secret instead of the registered one
	readHeaderTimeout time.Duration
	shutdownGrace     time.Duration
	spans             sdktrace.SpanProcessor // e.g. a tracetest.SpanRecorder
	logs              io.Writer              // JSON logs; nil discards them
	credentials       upstream.CredentialsProvider
	wrapSim           func(http.Handler) http.Handler // fault injection around the simulator
	keys              []ecdsim.Key                    // default: the test key
	args              []string                        // gateway flags, e.g. --auth-tokens-file
	clientOpts        []upstream.Option               // added to the upstream client's options
}

const (
	testKeyID     = "LTAItestgatewaykey"
	testKeySecret = "test-secret-9f8e7d6c5b4a"
	testRegion    = "cn-hangzhou"
)

// testRetry retries fast so that fault tests finish quickly.
var testRetry = upstream.RetryPolicy{MaxAttempts: 10, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}

func startHarness(t *testing.T, cfg harnessConfig) *harness {
	t.Helper()
	if cfg.retry.MaxAttempts == 0 {
		cfg.retry = testRetry
	}
	if cfg.readHeaderTimeout == 0 {
		cfg.readHeaderTimeout = 10 * time.Second
	}
	if cfg.shutdownGrace == 0 {
		cfg.shutdownGrace = 10 * time.Second
	}
	if cfg.signature == "" {
		cfg.signature = upstream.SignatureV3
	}
	if cfg.keys == nil {
		cfg.keys = []ecdsim.Key{{AccessKeyID: testKeyID, AccessKeySecret: testKeySecret}}
	}
	sim, err := ecdsim.New(ecdsim.Config{
		Seed:     7,
		Desktops: cfg.desktops,
		Keys:     cfg.keys,
		Faults:   cfg.faults,
	})
	if err != nil {
		t.Fatal(err)
	}
	var simHandler http.Handler = sim
	if cfg.wrapSim != nil {
		simHandler = cfg.wrapSim(sim)
	}
	simServer := httptest.NewServer(simHandler)
	t.Cleanup(simServer.Close)

	secret := testKeySecret
	if cfg.secretOverride != "" {
		secret = cfg.secretOverride
	}
	cred, err := credentials.NewCredential(&credentials.Config{
		Type:            ptr("access_key"),
		AccessKeyId:     ptr(testKeyID),
		AccessKeySecret: ptr(secret),
	})
	if err != nil {
		t.Fatal(err)
	}
	var creds upstream.CredentialsProvider = upstream.CredentialsLibrary{Credential: cred}
	if cfg.credentials != nil {
		creds = cfg.credentials
	}
	var processors []sdktrace.SpanProcessor
	if cfg.spans != nil {
		processors = append(processors, cfg.spans)
	}
	tel, err := newTelemetry(t.Context(), processors...)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	if cfg.logs != nil {
		logger = slog.New(traceLogHandler{slog.NewJSONHandler(cfg.logs, &slog.HandlerOptions{Level: slog.LevelDebug})})
	}
	transport := upstream.NewTransport()
	t.Cleanup(transport.CloseIdleConnections)
	client := upstream.NewClient(creds, append([]upstream.Option{
		upstream.WithEndpoint(simServer.URL),
		upstream.WithTransport(transport),
		upstream.WithSignatureVersion(cfg.signature),
		upstream.WithRetryPolicy(cfg.retry),
		upstream.WithLogger(logger),
		upstream.WithTracerProvider(tel.tracerProvider),
		upstream.WithMeterProvider(tel.meterProvider),
	}, cfg.clientOpts...)...)
	h := &harness{sim: sim, simURL: simServer.URL, telemetry: tel}
	gwCfg, err := parseConfig(cfg.args, io.Discard) // the defaults, and any flags the test gives
	if err != nil {
		t.Fatal(err)
	}
	gwCfg.shutdownGrace, gwCfg.readHeaderTimeout = cfg.shutdownGrace, cfg.readHeaderTimeout
	var auth *bearerAuth
	if gwCfg.authTokensFile != "" {
		if auth, err = newBearerAuth(gwCfg.authTokensFile); err != nil {
			t.Fatal(err)
		}
	}
	h.auth = auth
	tlsConfig, err := serverTLS(gwCfg)
	if err != nil {
		t.Fatal(err)
	}
	h.gateway, err = newGateway(client, logger, tel, gwCfg, auth)
	if err != nil {
		t.Fatal(err)
	}
	inner := h.gateway.handler
	h.gateway.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.handlers.Add(1)
		defer h.handlers.Done()
		inner.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.url = "http://" + ln.Addr().String()
	if tlsConfig != nil {
		h.url = "https://" + ln.Addr().String()
	}
	h.http = h2c()
	t.Cleanup(func() { h.http.CloseIdleConnections() })
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- h.gateway.serve(ctx, ln, nil, gwCfg, tlsConfig)
	}()
	var once sync.Once
	var serveErr error
	h.stop = func() error {
		once.Do(func() {
			cancel()
			serveErr = <-served
		})
		return serveErr
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return h
}

func ptr(s string) *string { return &s }

// h2c is an HTTP client that speaks HTTP/2 without TLS, as a mesh sidecar does.
func h2c() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}}
}

// protocols are the three wire protocols the gateway serves on one port.
var protocols = []struct {
	name string
	opts []connect.ClientOption
}{
	{"connect", nil},
	{"grpc", []connect.ClientOption{connect.WithGRPC()}},
	{"grpcweb", []connect.ClientOption{connect.WithGRPCWeb()}},
}

func (h *harness) client(opts ...connect.ClientOption) imagerecordsv1connect.ImageRecordsServiceClient {
	return imagerecordsv1connect.NewImageRecordsServiceClient(h.http, h.url, opts...)
}

// newClient is a client of the gateway at addr (host:port) over h2c.
func newClient(addr string, opts ...connect.ClientOption) imagerecordsv1connect.ImageRecordsServiceClient {
	return imagerecordsv1connect.NewImageRecordsServiceClient(h2c(), "http://"+addr, opts...)
}

// drain receives a whole stream.
func drain(t *testing.T, stream *connect.ServerStreamForClient[imagerecordsv1.StreamImageModifiedRecordsResponse]) ([]*imagerecordsv1.StreamImageModifiedRecordsResponse, error) {
	t.Helper()
	var msgs []*imagerecordsv1.StreamImageModifiedRecordsResponse
	for stream.Receive() {
		msgs = append(msgs, stream.Msg())
	}
	err := stream.Err()
	if cerr := stream.Close(); err == nil && cerr != nil && !errors.Is(cerr, io.EOF) {
		err = cerr
	}
	return msgs, err
}

func recordsOf(msgs []*imagerecordsv1.StreamImageModifiedRecordsResponse) []*imagerecordsv1.ImageModifiedRecord {
	var out []*imagerecordsv1.ImageModifiedRecord
	for _, m := range msgs {
		out = append(out, m.GetRecords()...)
	}
	return out
}

// checkRecords asserts that got are the simulator's records first..first+len(got)-1
// of desktop, converted faithfully.
func (h *harness) checkRecords(t *testing.T, desktop string, first int, got []*imagerecordsv1.ImageModifiedRecord) {
	t.Helper()
	for i, r := range got {
		want, ok := h.sim.Record(desktop, first+i)
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
			!r.GetUpdateTime().AsTime().Equal(wantTime) || r.GetStatus() != wantStatus(want.Status) {
			t.Fatalf("record %d (simulator index %d) = %v, want %+v", i, first+i, r, want)
		}
	}
}

func wantStatus(n int) imagerecordsv1.ImageModificationStatus {
	return map[int]imagerecordsv1.ImageModificationStatus{
		0: imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_IN_PROGRESS,
		1: imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_SUCCEEDED,
		2: imagerecordsv1.ImageModificationStatus_IMAGE_MODIFICATION_STATUS_FAILED,
	}[n]
}
