package gateway

import (
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"connectrpc.com/otelconnect"

	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/upstream"
)

// Gateway is the HTTP side of the service: ImageRecordsService, health and
// reflection on one handler, the admin handler with metrics, and the
// server that serves them and drains on shutdown. Build it with [New].
type Gateway struct {
	cfg      Config
	logger   *slog.Logger
	handler  http.Handler
	admin    http.Handler
	health   *healthChecker
	auth     *bearerAuth // nil without Config.AuthTokensFile
	tls      *tls.Config // nil for cleartext
	tlsFiles *tlsFiles   // nil for cleartext
	chain    []string
	hardened *hardening
	draining atomic.Bool
	// inflight counts the service handler's requests in progress.
	inflight sync.WaitGroup
}

// New builds the gateway of cfg in front of api, logging to logger and
// recording to tel. It reads the files cfg names (TLS, tokens) now, so a
// bad file fails here rather than at the first call.
//
// The handler chain is built here and nowhere else. Before connect reads
// a body, HTTP layers answer CORS preflights (with
// Config.CORSAllowedOrigins; cors.go), check the bearer token (with
// Config.AuthTokensFile; health Check answers without one), name the
// caller, and bound its streams, stalls and request bodies
// (hardening.go); then the interceptors: Cache-Control and List's ETag
// (cache.go), tracing and RPC metrics, the access log, the shutdown guard
// and panic recovery, plus the read limit and compression settings.
// svcOpts come last to the service (tests pass a fake watch clock).
func New(cfg Config, api upstream.API, logger *slog.Logger, tel *Telemetry, svcOpts ...service.Option) (*Gateway, error) {
	g := &Gateway{
		cfg:    cfg,
		logger: logger,
		health: &healthChecker{logger: logger},
	}
	var err error
	if cfg.AuthTokensFile != "" {
		if g.auth, err = newBearerAuth(cfg.AuthTokensFile); err != nil {
			return nil, err
		}
		logger.Info("bearer token auth on", slog.Int("tokens", g.auth.tokens()))
	}
	if g.tls, g.tlsFiles, err = serverTLS(cfg, logger); err != nil {
		return nil, err
	}
	if g.hardened, err = newHardening(cfg, logger, tel); err != nil {
		return nil, err
	}
	otelOpts := []otelconnect.Option{
		otelconnect.WithTracerProvider(tel.TracerProvider),
		otelconnect.WithMeterProvider(tel.MeterProvider),
		otelconnect.WithPropagator(tel.Propagator),
	}
	if cfg.TrustRemoteTrace {
		otelOpts = append(otelOpts, otelconnect.WithTrustRemote())
	}
	tracing, err := otelconnect.NewInterceptor(otelOpts...)
	if err != nil {
		return nil, fmt.Errorf("tracing interceptor: %w", err)
	}
	caching := newListCaching(cfg.ListCacheMaxAge) // outside tracing: a 304 is no failed call
	interceptors := []namedInterceptor{
		{caching.name(), caching.interceptor()},
		{"otelconnect", tracing},
		{"access-log", accessLog{logger: logger}.interceptor()},
		{"lifecycle", lifecycle(g)},
	}
	opts := []namedOption{
		{"compress-min-bytes=" + strconv.Itoa(cfg.CompressMinBytes), responseCompression(cfg.CompressMinBytes)},
		{"compression=gzip(best-speed)", connect.WithCompression("gzip", newBoundedGzipReader(int64(cfg.MaxRequestBytes)), newGzipWriter)},
		{"read-max-bytes=" + strconv.Itoa(cfg.MaxRequestBytes), connect.WithReadMaxBytes(cfg.MaxRequestBytes)},
		{"codec=proto(records-encoder)", connect.WithCodec(recordsCodec{})},
		{"recover", connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			logger.LogAttrs(ctx, slog.LevelError, "panic in handler", slog.String("procedure", spec.Procedure), slog.Any("panic", p))
			return connect.NewError(connect.CodeInternal, errors.New("internal error"))
		})},
	}
	handlerOpts := make([]connect.HandlerOption, 0, len(opts)+1)
	ics := make([]connect.Interceptor, 0, len(interceptors))
	for _, ic := range interceptors {
		g.chain = append(g.chain, "interceptor:"+ic.name)
		ics = append(ics, ic.interceptor)
	}
	handlerOpts = append(handlerOpts, connect.WithInterceptors(ics...))
	for _, o := range opts {
		g.chain = append(g.chain, "option:"+o.name)
		handlerOpts = append(handlerOpts, o.option)
	}

	svc := service.New(g.hardened.upstream(api), append(append(g.hardened.serviceOptions(),
		service.WithLogger(logger), service.WithMeterProvider(tel.MeterProvider), service.WithTracerProvider(tel.TracerProvider),
		service.WithFleetConcurrency(cfg.FleetConcurrency),
		service.WithWatchIntervals(service.WatchIntervals{Min: cfg.WatchMinInterval, Max: cfg.WatchMaxInterval}),
	), svcOpts...)...)
	mux := http.NewServeMux()
	mux.Handle(imagerecordsv1connect.NewImageRecordsServiceHandler(svc, handlerOpts...))
	mux.Handle(grpchealth.NewHandler(g.health, g.hardened.readLimits()...))
	if cfg.Reflection {
		reflector := grpcreflect.NewStaticReflector(imagerecordsv1connect.ImageRecordsServiceName, grpchealth.HealthV1ServiceName)
		reflOpts := g.hardened.readLimits()
		mux.Handle(grpcreflect.NewHandlerV1(reflector, reflOpts...))
		mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, reflOpts...))
		g.chain = append(g.chain, "reflection")
	}
	served := g.hardened.handler(mux, g.auth, &g.chain)
	served = withCORS(cfg.CORSAllowedOrigins, served, &g.chain) // preflights answered before the token check
	g.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.inflight.Add(1)
		defer g.inflight.Done()
		served.ServeHTTP(w, r)
	})

	admin := http.NewServeMux()
	admin.Handle("GET /metrics", tel.Metrics)
	g.health.route(admin) // /livez, /readyz, /healthz
	g.admin = admin
	return g, nil
}

type namedInterceptor struct {
	name        string
	interceptor connect.Interceptor
}

type namedOption struct {
	name   string
	option connect.HandlerOption
}

// Handler serves ImageRecordsService, gRPC health and (unless turned off)
// reflection, over Connect, gRPC and gRPC-Web.
func (g *Gateway) Handler() http.Handler { return g.handler }

// AdminHandler serves /metrics, /livez, /readyz and /healthz.
func (g *Gateway) AdminHandler() http.Handler { return g.admin }

// Chain names, in order, the interceptors and handler options of the
// service handler, and whether reflection is served: two gateways with
// the same Chain run the same handler code.
func (g *Gateway) Chain() []string { return append([]string(nil), g.chain...) }

// Health reports the liveness of the server ("" service), as
// grpc.health.v1 answers it.
func (g *Gateway) Health(ctx context.Context) (grpchealth.Status, error) {
	res, err := g.health.Check(ctx, &grpchealth.CheckRequest{})
	if err != nil {
		return grpchealth.StatusUnknown, err
	}
	return res.Status, nil
}

// Instrument wraps the handler that Serve serves in an outer layer, for
// measurements that must see every request and response as the server
// does (the benchmark counts messages handed to the transport). The layer
// runs outside the chain that Chain reports. Call it before Serve.
func (g *Gateway) Instrument(wrap func(http.Handler) http.Handler) {
	g.handler = wrap(g.handler)
}

// WaitIdle waits until no request of the service handler is in progress:
// after a caller cancels a stream, WaitIdle returns once the gateway's side
// of it has ended. New requests must not arrive while it waits.
func (g *Gateway) WaitIdle() { g.inflight.Wait() }

// Draining reports whether the gateway refuses new RPCs: from the end of
// the drain delay after a SIGTERM on (readiness turned NOT_SERVING
// earlier, at the SIGTERM itself).
func (g *Gateway) Draining() bool { return g.draining.Load() }

// Reload re-reads what can change while the gateway runs: the TLS
// certificate, key and client CAs (when they changed), the bearer tokens
// file and the token key file. A failed reload keeps what is in force.
// The daemon calls it on SIGHUP; it logs what it did.
func (g *Gateway) Reload() error {
	errs := []error{g.reloadTLS()} // certificate rotation (issue 10)
	if g.auth != nil {
		if err := g.auth.reload(); err != nil {
			g.logger.Error("auth tokens not reloaded; the previous tokens stay in force", slog.String("error", err.Error()))
			errs = append(errs, err)
		} else {
			g.logger.Info("auth tokens reloaded", slog.Int("tokens", g.auth.tokens()))
		}
	}
	keyFile, err := g.hardened.reload(g.logger)
	if err != nil {
		errs = append(errs, err)
	}
	if g.auth == nil && !keyFile && g.cfg.TLSCert == "" {
		g.logger.Info("reload: nothing to reload (no --auth-tokens-file, --token-key-file or --tls-cert)")
	}
	return errors.Join(errs...)
}

// responseCompression compresses responses of at least minBytes when the
// caller accepts gzip, and none when minBytes is 0: on a mesh's loopback or
// LAN hops gzip costs more CPU than it saves (a third of a stream's CPU
// time, measured by cmd/imagerecords-bench). Compressed requests are
// always accepted.
func responseCompression(minBytes int) connect.HandlerOption {
	if minBytes <= 0 {
		return connect.WithCompressMinBytes(math.MaxInt32)
	}
	return connect.WithCompressMinBytes(minBytes)
}

// newGzipWriter compresses at the fastest level: records compress well even
// so, for a fraction of the default level's CPU.
func newGzipWriter() connect.Compressor {
	w, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed) // the level is valid
	return w
}
