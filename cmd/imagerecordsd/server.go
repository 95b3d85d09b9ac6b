package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

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

// run is Run with a hook that learns the bound address, for tests that
// listen on port 0.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, ready func(addr string)) error {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))

	clientOpts := []upstream.Option{
		upstream.WithSignatureVersion(cfg.signature),
		upstream.WithLogger(logger),
	}
	var creds upstream.CredentialsProvider
	var sim *simulation
	if cfg.simulate {
		sim, err = startSimulation(cfg.simulateSeed, logger)
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

	gw := newGateway(client, logger)
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.listen, err)
	}
	addr := ln.Addr().String()
	logger.Info("serving", slog.String("addr", addr), slog.String("signature", string(cfg.signature)),
		slog.String("upstream", describeUpstream(cfg, sim)))
	if sim != nil {
		sim.printBanner(stdout, addr)
	}
	if ready != nil {
		ready(addr)
	}
	return gw.serve(ctx, ln, cfg)
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

// gateway is the HTTP side: the service, health and reflection on one mux.
type gateway struct {
	handler http.Handler
	health  *grpchealth.StaticChecker
	logger  *slog.Logger
}

// newGateway wires the service with its interceptors. Extra handler options
// (e.g. tracing interceptors) are appended to the defaults.
func newGateway(api upstream.API, logger *slog.Logger, extra ...connect.HandlerOption) *gateway {
	opts := append([]connect.HandlerOption{
		connect.WithCompressMinBytes(1024),
		connect.WithRecover(func(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
			logger.LogAttrs(ctx, slog.LevelError, "panic in handler", slog.String("procedure", spec.Procedure), slog.Any("panic", p))
			return connect.NewError(connect.CodeInternal, errors.New("internal error"))
		}),
	}, extra...)
	mux := http.NewServeMux()
	mux.Handle(imagerecordsv1connect.NewImageRecordsServiceHandler(service.New(api, service.WithLogger(logger)), opts...))
	health := grpchealth.NewStaticChecker(imagerecordsv1connect.ImageRecordsServiceName)
	mux.Handle(grpchealth.NewHandler(health))
	reflector := grpcreflect.NewStaticReflector(imagerecordsv1connect.ImageRecordsServiceName)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	return &gateway{handler: mux, health: health, logger: logger}
}

// serve serves on ln until ctx is done, then drains.
func (g *gateway) serve(ctx context.Context, ln net.Listener, cfg config) error {
	// Handlers run under base, not under ctx: a SIGTERM must let in-flight
	// streams finish, and cancels them only when the grace period is over.
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:   g.handler,
		Protocols: &protocols,
		// No ReadTimeout or WriteTimeout: they would cut long streams.
		ReadHeaderTimeout: cfg.readHeaderTimeout,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(g.logger.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}

	g.health.SetStatus("", grpchealth.StatusNotServing)
	g.health.SetStatus(imagerecordsv1connect.ImageRecordsServiceName, grpchealth.StatusNotServing)
	g.logger.Info("shutting down: draining in-flight requests", slog.Duration("grace", cfg.shutdownGrace))
	start := time.Now()
	graceCtx, cancel := context.WithTimeout(context.Background(), cfg.shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(graceCtx); err != nil {
		g.logger.Warn("grace period over: cancelling the remaining requests", slog.Duration("grace", cfg.shutdownGrace))
		cancelBase()
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
