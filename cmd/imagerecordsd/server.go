package main

import (
	"compress/gzip"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"connectrpc.com/otelconnect"

	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/upstream"
)

// Run runs the gateway until ctx is done, then shuts it down gracefully:
// health turns NOT_SERVING, in-flight streams get --shutdown-grace to
// finish, and whatever still runs is cancelled. It returns nil after a clean
// shutdown.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return run(ctx, args, stdout, stderr, nil)
}

// run is Run with a hook that learns the bound addresses, for tests that
// listen on port 0.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, ready func(addrs listenAddrs)) error {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(traceLogHandler{slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel})})
	tel, err := newTelemetry(ctx)
	if err != nil {
		return err
	}
	defer func() {
		// Flush what is buffered (the last spans of drained streams).
		flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := tel.shutdown(flushCtx); err != nil {
			logger.Warn("telemetry flush failed", slog.String("error", err.Error()))
		}
	}()

	clientOpts := []upstream.Option{
		upstream.WithSignatureVersion(cfg.signature),
		upstream.WithLogger(logger),
		upstream.WithTracerProvider(tel.tracerProvider),
		upstream.WithMeterProvider(tel.meterProvider),
		upstream.WithRateLimit(cfg.upstreamQPS, cfg.upstreamBurst),
		upstream.WithAttemptTimeout(cfg.upstreamAttemptTimeout),
	}
	var creds upstream.CredentialsProvider
	var sim *simulation
	if cfg.simulate {
		sim, err = startSimulation(cfg.simulateSeed, cfg.simulateFaults, logger)
		if err != nil {
			return err
		}
		defer sim.close()
		creds = sim.credentials
		clientOpts = append(clientOpts, upstream.WithEndpoint(sim.endpoint))
	} else {
		lib, err := upstream.DefaultCredentials()
		if err != nil {
			return err
		}
		creds = lib
		if cfg.upstreamEndpoint != "" {
			clientOpts = append(clientOpts, upstream.WithEndpoint(cfg.upstreamEndpoint))
		}
	}
	client := upstream.NewClient(creds, clientOpts...)

	var auth *bearerAuth
	if cfg.authTokensFile != "" {
		if auth, err = newBearerAuth(cfg.authTokensFile); err != nil {
			return err
		}
		logger.Info("bearer token auth on", slog.Int("tokens", auth.tokens()))
		stopReload := reloadOnSIGHUP(ctx, auth, logger)
		defer stopReload()
	}
	gw, err := newGateway(client, logger, tel, cfg, auth)
	if err != nil {
		return err
	}
	tlsConfig, err := serverTLS(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.listen, err)
	}
	addrs := listenAddrs{api: ln.Addr().String()}
	var adminLn net.Listener
	if cfg.adminListen != "" {
		if adminLn, err = net.Listen("tcp", cfg.adminListen); err != nil {
			ln.Close()
			return fmt.Errorf("listening on %s: %w", cfg.adminListen, err)
		}
		addrs.admin = adminLn.Addr().String()
	}
	logger.Info("serving", slog.String("addr", addrs.api), slog.String("admin_addr", addrs.admin),
		slog.String("signature", string(cfg.signature)), slog.String("upstream", describeUpstream(cfg, sim)),
		slog.String("version", version()))
	if sim != nil {
		sim.printBanner(stdout, addrs.api)
	}
	if ready != nil {
		ready(addrs)
	}
	return gw.serve(ctx, ln, adminLn, cfg, tlsConfig)
}

// listenAddrs are the addresses the gateway bound.
type listenAddrs struct {
	api   string
	admin string // empty without --admin-listen
}

func describeUpstream(cfg config, sim *simulation) string {
	switch {
	case sim != nil:
		return "simulator " + sim.endpoint
	case cfg.upstreamEndpoint != "":
		return cfg.upstreamEndpoint
	}
	return "https://ecd.<region>.aliyuncs.com"
}

// gateway is the HTTP side: the service, health and reflection on one mux,
// and the admin mux with metrics.
type gateway struct {
	handler  http.Handler
	admin    http.Handler
	health   *grpchealth.StaticChecker
	draining atomic.Bool
	logger   *slog.Logger
}

// errShutdown is the cause with which the gateway cancels the RPCs still
// running when the shutdown grace period ends.
var errShutdown = errors.New("the gateway shut down")

// newGateway wires the service with its interceptors: tracing and RPC
// metrics outermost, then the access log, the shutdown guard, the bearer
// token check (when auth is not nil) and panic recovery. Health checks
// answer without a token.
func newGateway(api upstream.API, logger *slog.Logger, tel *telemetry, cfg config, auth *bearerAuth) (*gateway, error) {
	otelOpts := []otelconnect.Option{
		otelconnect.WithTracerProvider(tel.tracerProvider),
		otelconnect.WithMeterProvider(tel.meterProvider),
		otelconnect.WithPropagator(tel.propagator),
	}
	if cfg.trustRemoteTrace {
		otelOpts = append(otelOpts, otelconnect.WithTrustRemote())
	}
	tracing, err := otelconnect.NewInterceptor(otelOpts...)
	if err != nil {
		return nil, fmt.Errorf("tracing interceptor: %w", err)
	}
	g := &gateway{health: grpchealth.NewStaticChecker(imagerecordsv1connect.ImageRecordsServiceName), logger: logger}
	interceptors := []connect.Interceptor{tracing, accessLog{logger: logger}, lifecycle{g}}
	if auth != nil {
		interceptors = append(interceptors, auth)
	}
	opts := []connect.HandlerOption{
		responseCompression(cfg.compressMinBytes),
		connect.WithCompression("gzip", newGzipReader, newGzipWriter),
		connect.WithReadMaxBytes(cfg.maxRequestBytes),
		connect.WithInterceptors(interceptors...),
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			logger.LogAttrs(ctx, slog.LevelError, "panic in handler", slog.String("procedure", spec.Procedure), slog.Any("panic", p))
			return connect.NewError(connect.CodeInternal, errors.New("internal error"))
		}),
	}
	svc := service.New(api, service.WithLogger(logger), service.WithMeterProvider(tel.meterProvider))
	mux := http.NewServeMux()
	mux.Handle(imagerecordsv1connect.NewImageRecordsServiceHandler(svc, opts...))
	mux.Handle(grpchealth.NewHandler(g.health))
	if cfg.reflection {
		reflector := grpcreflect.NewStaticReflector(imagerecordsv1connect.ImageRecordsServiceName)
		reflOpts := []connect.HandlerOption{connect.WithReadMaxBytes(cfg.maxRequestBytes)}
		if auth != nil {
			reflOpts = append(reflOpts, connect.WithInterceptors(auth))
		}
		mux.Handle(grpcreflect.NewHandlerV1(reflector, reflOpts...))
		mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, reflOpts...))
	}
	g.handler = mux

	admin := http.NewServeMux()
	admin.Handle("GET /metrics", tel.metrics)
	admin.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if g.draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	g.admin = admin
	return g, nil
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

func newGzipReader() connect.Decompressor { return &gzip.Reader{} }

// newGzipWriter compresses at the fastest level: records compress well even
// so, for a fraction of the default level's CPU.
func newGzipWriter() connect.Compressor {
	w, _ := gzip.NewWriterLevel(io.Discard, gzip.BestSpeed) // the level is valid
	return w
}

// serve serves on ln (and adminLn, when not nil) until ctx is done, then
// drains: health turns NOT_SERVING, new RPCs are refused with Unavailable,
// in-flight ones get cfg.shutdownGrace, and the rest are cancelled with
// Unavailable. tlsConfig, when not nil, makes ln serve TLS.
func (g *gateway) serve(ctx context.Context, ln, adminLn net.Listener, cfg config, tlsConfig *tls.Config) error {
	// Handlers run under base, not under ctx: a SIGTERM must let in-flight
	// streams finish, and cancels them only when the grace period is over.
	base, cancelBase := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelBase(nil)
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	if tlsConfig != nil {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	srv := &http.Server{
		Handler:   g.handler,
		Protocols: &protocols,
		TLSConfig: tlsConfig,
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: cfg.maxConcurrentStreams},
		// No ReadTimeout or WriteTimeout: they would cut long streams.
		ReadHeaderTimeout: cfg.readHeaderTimeout,
		MaxHeaderBytes:    cfg.maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(g.logger.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() {
		if tlsConfig != nil {
			served <- srv.ServeTLS(ln, "", "")
		} else {
			served <- srv.Serve(ln)
		}
	}()
	if adminLn != nil {
		adminSrv := &http.Server{Handler: g.admin, ReadHeaderTimeout: cfg.readHeaderTimeout, MaxHeaderBytes: cfg.maxHeaderBytes}
		adminDone := make(chan struct{})
		go func() {
			defer close(adminDone)
			if err := adminSrv.Serve(adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				g.logger.Error("admin listener stopped", slog.String("error", err.Error()))
			}
		}()
		defer func() { _ = adminSrv.Close(); <-adminDone }()
	}
	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}

	g.draining.Store(true)
	g.health.SetStatus("", grpchealth.StatusNotServing)
	g.health.SetStatus(imagerecordsv1connect.ImageRecordsServiceName, grpchealth.StatusNotServing)
	g.logger.Info("shutting down: draining in-flight requests", slog.Duration("grace", cfg.shutdownGrace))
	start := time.Now()
	graceCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(graceCtx); err != nil {
		g.logger.Warn("grace period over: cancelling the remaining requests", slog.Duration("grace", cfg.shutdownGrace))
		cancelBase(errShutdown)
		// Give cancelled handlers a moment to send their final status.
		closeCtx, cancelClose := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancelClose()
		if err := srv.Shutdown(closeCtx); err != nil {
			_ = srv.Close()
		}
	}
	<-served
	g.logger.Info("stopped", slog.Duration("drain", time.Since(start)))
	return nil
}

// lifecycle refuses RPCs that arrive while the gateway drains, and tells
// the callers of RPCs cut by the end of the grace period why, with a code
// that invites a retry elsewhere.
type lifecycle struct{ g *gateway }

var errDraining = errors.New("the gateway is shutting down; retry on another instance")

func (l lifecycle) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if l.g.draining.Load() {
			return nil, connect.NewError(connect.CodeUnavailable, errDraining)
		}
		res, err := next(ctx, req)
		return res, shutdownError(ctx, err)
	}
}

func (l lifecycle) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (l lifecycle) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		if l.g.draining.Load() {
			return connect.NewError(connect.CodeUnavailable, errDraining)
		}
		return shutdownError(ctx, next(ctx, conn))
	}
}

func shutdownError(ctx context.Context, err error) error {
	if err != nil && context.Cause(ctx) == errShutdown {
		return connect.NewError(connect.CodeUnavailable,
			errors.New("the gateway shut down before the stream finished; resume from the last resume_token"))
	}
	return err
}
