package main

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/otelconnect"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/upstream"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// region is the region every request names; the simulator serves its
// desktops in any region.
const region = "cn-hangzhou"

// The one access key: the simulator accepts it, the gateway's upstream
// client and the direct client sign with it.
const (
	accessKeyID     = "LTAIbenchmark0001"
	accessKeySecret = "bench-secret-0123456789abcdef"
)

// simSeed fixes the simulator's records, tokens and request ids.
const simSeed = 1

// Telemetry modes of the gateway stack.
const (
	// telemetryNoop gives the upstream client and the service no-op OTel
	// providers and adds no tracing interceptor: the gateway's own cost.
	telemetryNoop = "noop"
	// telemetrySDK mirrors imagerecordsd without exporters: SDK tracer
	// (ParentBased(AlwaysSample), so every span is recorded), SDK meter with
	// a pull reader (as the Prometheus reader is), and the otelconnect
	// interceptor on the handler.
	telemetrySDK = "sdk"
)

// stackConfig says what one in-process deployment looks like.
type stackConfig struct {
	desktops  []ecdsim.Desktop
	latency   time.Duration
	telemetry string
	// compressMin is the gateway's --compress-min-bytes: 0 never
	// compresses responses; clients accept gzip, as connect-go's do.
	compressMin int
	// clientWindow, when positive, is the gateway clients' HTTP/2
	// per-stream receive window (MaxReceiveBufferPerStream).
	clientWindow int
	// upstreamQPS, when positive, turns on the upstream client's shared
	// rate limit (imagerecordsd's --upstream-qps, default 100 there).
	upstreamQPS   float64
	upstreamBurst int
	// traceSim records when the simulator starts and ends each request.
	traceSim bool
	// beforeSend, when not nil, is called in the gateway's handler just
	// before it hands each stream message to the transport.
	beforeSend func()
}

// stack is one in-process deployment on loopback: the simulator behind an
// HTTP/1.1 server, and the gateway (upstream client, service, connect
// handler) behind an HTTP/1.1 + h2c server, as imagerecordsd --simulate
// runs them.
type stack struct {
	cfg        stackConfig
	sim        *ecdsim.Simulator
	simURL     string
	gatewayURL string
	// simTrace holds the simulator's request times, with traceSim.
	simTrace *callTrace
	// upstream is the gateway's upstream client.
	upstream *upstream.Client
	servers  []*http.Server
	// simConns and gatewayConns count the TCP connections each server
	// accepted: how well the clients reuse connections.
	simConns, gatewayConns atomic.Int64
	shutdown               []func(context.Context) error
}

func startStack(cfg stackConfig) (*stack, error) {
	sim, err := ecdsim.New(ecdsim.Config{
		Seed:     simSeed,
		Desktops: cfg.desktops,
		Keys:     []ecdsim.Key{{AccessKeyID: accessKeyID, AccessKeySecret: accessKeySecret}},
		Faults:   ecdsim.Faults{Latency: cfg.latency},
	})
	if err != nil {
		return nil, err
	}
	s := &stack{cfg: cfg, sim: sim}
	var simHandler http.Handler = sim
	if cfg.traceSim {
		s.simTrace = &callTrace{next: sim}
		simHandler = s.simTrace
	}
	simAddr, err := s.serve(simHandler, false, &s.simConns)
	if err != nil {
		return nil, err
	}
	s.simURL = "http://" + simAddr

	tp, mp, interceptors, err := s.telemetry()
	if err != nil {
		s.close()
		return nil, err
	}
	if cfg.beforeSend != nil {
		interceptors = append(interceptors, sendObserver{cfg.beforeSend})
	}
	clientOpts := []upstream.Option{
		upstream.WithEndpoint(s.simURL),
		upstream.WithTracerProvider(tp),
		upstream.WithMeterProvider(mp),
	}
	if cfg.upstreamQPS > 0 {
		clientOpts = append(clientOpts, upstream.WithRateLimit(cfg.upstreamQPS, cfg.upstreamBurst))
	}
	client := upstream.NewClient(upstream.StaticCredentials{AccessKeyID: accessKeyID, AccessKeySecret: accessKeySecret}, clientOpts...)
	s.upstream = client
	svc := service.New(client, service.WithMeterProvider(mp))
	mux := http.NewServeMux()
	mux.Handle(imagerecordsv1connect.NewImageRecordsServiceHandler(svc,
		responseCompression(cfg.compressMin),
		connect.WithInterceptors(interceptors...),
	))
	gwAddr, err := s.serve(mux, true, &s.gatewayConns)
	if err != nil {
		s.close()
		return nil, err
	}
	s.gatewayURL = "http://" + gwAddr
	return s, nil
}

// telemetry returns the providers and handler interceptors of the
// configured telemetry mode.
func (s *stack) telemetry() (trace.TracerProvider, metric.MeterProvider, []connect.Interceptor, error) {
	switch s.cfg.telemetry {
	case telemetryNoop:
		return tracenoop.NewTracerProvider(), metricnoop.NewMeterProvider(), nil, nil
	case telemetrySDK:
		tp := sdktrace.NewTracerProvider()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		s.shutdown = append(s.shutdown, tp.Shutdown, mp.Shutdown)
		tracing, err := otelconnect.NewInterceptor(
			otelconnect.WithTracerProvider(tp),
			otelconnect.WithMeterProvider(mp),
			otelconnect.WithPropagator(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})),
		)
		if err != nil {
			return nil, nil, nil, err
		}
		return tp, mp, []connect.Interceptor{tracing}, nil
	}
	return nil, nil, nil, fmt.Errorf("unknown telemetry mode %q (want %s or %s)", s.cfg.telemetry, telemetryNoop, telemetrySDK)
}

// serve serves h on a new 127.0.0.1 port and returns its address; h2c adds
// cleartext HTTP/2 to HTTP/1.1. conns counts the accepted connections.
func (s *stack) serve(h http.Handler, h2c bool, conns *atomic.Int64) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(_ net.Conn, state http.ConnState) {
			if state == http.StateNew {
				conns.Add(1)
			}
		},
	}
	if h2c {
		var p http.Protocols
		p.SetHTTP1(true)
		p.SetUnencryptedHTTP2(true)
		srv.Protocols = &p
	}
	s.servers = append(s.servers, srv)
	go func() { _ = srv.Serve(ln) }()
	return ln.Addr().String(), nil
}

// close stops the servers and the telemetry providers.
func (s *stack) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range s.servers {
		if err := srv.Shutdown(ctx); err != nil {
			_ = srv.Close()
		}
	}
	for _, f := range s.shutdown {
		_ = f(ctx)
	}
}

// newGatewayClient returns a gRPC client of the gateway with its own h2c
// connection pool.
func (s *stack) newGatewayClient() imagerecordsv1connect.ImageRecordsServiceClient {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	t := &http.Transport{Protocols: &p}
	if s.cfg.clientWindow > 0 {
		t.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: s.cfg.clientWindow}
	}
	opts := []connect.ClientOption{connect.WithGRPC()}
	return imagerecordsv1connect.NewImageRecordsServiceClient(&http.Client{Transport: t}, s.gatewayURL, opts...)
}

// newDirectClient returns a reference client of the simulator with its own
// keep-alive pool, sized like the gateway's upstream pool.
func (s *stack) newDirectClient() *directClient {
	return newDirectClient(s.simURL, accessKeyID, accessKeySecret)
}

// connections says how many TCP connections the simulator and the gateway
// have accepted so far.
func (s *stack) connections() string {
	return fmt.Sprintf("simulator %d, gateway %d", s.simConns.Load(), s.gatewayConns.Load())
}

// desktopCalls is the simulator's request count for a desktop.
func (s *stack) desktopCalls(id string) int64 { return s.sim.DesktopCalls(id) }

// sendObserver is a handler interceptor that calls before just before
// every message a streaming handler sends.
type sendObserver struct{ before func() }

func (o sendObserver) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (o sendObserver) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (o sendObserver) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return next(ctx, observedConn{conn, o.before})
	}
}

type observedConn struct {
	connect.StreamingHandlerConn
	before func()
}

func (c observedConn) Send(msg any) error {
	c.before()
	return c.StreamingHandlerConn.Send(msg)
}

// callTrace is a handler that records when each request started and ended.
type callTrace struct {
	next  http.Handler
	mu    sync.Mutex
	spans [][2]time.Time
}

func (c *callTrace) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	c.next.ServeHTTP(w, r)
	end := time.Now()
	c.mu.Lock()
	c.spans = append(c.spans, [2]time.Time{start, end})
	c.mu.Unlock()
}

// take returns the spans recorded since the last take.
func (c *callTrace) take() [][2]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.spans
	c.spans = nil
	return s
}

// idleBetween sums the time from the end of each request to the start of
// the next, for requests made one after another.
func idleBetween(spans [][2]time.Time) time.Duration {
	var idle time.Duration
	for i := 1; i < len(spans); i++ {
		idle += spans[i][0].Sub(spans[i-1][1])
	}
	return idle
}

// responseCompression mirrors imagerecordsd's --compress-min-bytes: gzip at
// the fastest level for responses of at least minBytes, none for 0.
func responseCompression(minBytes int) connect.HandlerOption {
	if minBytes <= 0 {
		return connect.WithCompressMinBytes(math.MaxInt32)
	}
	return connect.WithHandlerOptions(
		connect.WithCompressMinBytes(minBytes),
		connect.WithCompression("gzip",
			func() connect.Decompressor { return &gzip.Reader{} },
			func() connect.Compressor { w, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed); return w }),
	)
}
