package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"
)

// errShutdown is the cause with which the gateway cancels the RPCs still
// running when the shutdown grace period ends.
var errShutdown = errors.New("the gateway shut down")

// errDraining is what an RPC arriving during the drain learns.
var errDraining = errors.New("the gateway is shutting down; retry on another instance")

// Serve serves the gateway on ln (TLS when the Config names a certificate)
// and the admin handler on adminLn (when not nil) until ctx is done, then
// drains: readiness turns NOT_SERVING, the listener serves on for
// Config.DrainDelay, then new RPCs are refused with Unavailable, in-flight
// ones get Config.ShutdownGrace to finish, and the rest are cancelled with
// Unavailable telling the caller to resume (drain.go has the timeline). It
// returns nil after a clean shutdown.
func (g *Gateway) Serve(ctx context.Context, ln, adminLn net.Listener) error {
	// Handlers run under base, not under ctx: a SIGTERM must let in-flight
	// streams finish, and cancels them only when the grace period is over.
	base, cancelBase := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelBase(nil)
	defer g.health.setStopped() // liveness: off once the server stopped
	defer g.watchTLSFiles()()   // certificate rotation (issue 10)
	srv := g.server(base)
	limited := g.hardened.listener(ln) // connection limits (hardening.go)
	g.hardened.server(srv, limited)
	ln = limited
	served := make(chan error, 1)
	go func() {
		if g.tls != nil {
			served <- srv.ServeTLS(ln, "", "")
		} else {
			served <- srv.Serve(ln)
		}
	}()
	if adminLn != nil {
		adminSrv := &http.Server{Handler: g.admin, ReadHeaderTimeout: g.cfg.ReadHeaderTimeout, MaxHeaderBytes: g.cfg.MaxHeaderBytes}
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

	if err := g.beginDrain(served); err != nil { // readiness off, then the drain delay
		return err
	}
	g.draining.Store(true)
	grace := g.cfg.ShutdownGrace
	g.logger.Info("shutting down: draining in-flight requests", slog.Duration("grace", grace))
	start := time.Now()
	graceCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(graceCtx); err != nil {
		g.logger.Warn("grace period over: cancelling the remaining requests", slog.Duration("grace", grace))
		cancelBase(errShutdown)
		// Give cancelled handlers a moment to send their final status.
		closeCtx, cancelClose := context.WithTimeout(context.Background(), cancelledStatusWait)
		defer cancelClose()
		if err := srv.Shutdown(closeCtx); err != nil {
			_ = srv.Close()
		}
	}
	<-served
	g.logger.Info("stopped", slog.Duration("drain", time.Since(start)))
	return nil
}

// server is the HTTP server of the service handler: HTTP/1.1 and HTTP/2
// (h2c without TLS) on one port, handlers under base.
func (g *Gateway) server(base context.Context) *http.Server {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	if g.tls != nil {
		protocols.SetHTTP2(true)
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	return &http.Server{
		Handler:   g.handler,
		Protocols: &protocols,
		TLSConfig: g.tls,
		HTTP2:     &http.HTTP2Config{MaxConcurrentStreams: g.cfg.MaxConcurrentStreams},
		// No ReadTimeout or WriteTimeout: they would cut long streams.
		ReadHeaderTimeout: g.cfg.ReadHeaderTimeout,
		MaxHeaderBytes:    g.cfg.MaxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return base },
		ErrorLog:          slog.NewLogLogger(g.logger.Handler(), slog.LevelWarn),
	}
}

// lifecycle refuses RPCs that arrive while the gateway drains, and tells
// the callers of RPCs cut by the end of the grace period why, with a code
// that invites a retry elsewhere.
func lifecycle(g *Gateway) connect.Interceptor {
	return handlerInterceptor{
		unary: func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				if g.draining.Load() {
					return nil, connect.NewError(connect.CodeUnavailable, errDraining)
				}
				res, err := next(ctx, req)
				return res, shutdownError(ctx, err)
			}
		},
		stream: func(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
			return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
				if g.draining.Load() {
					return connect.NewError(connect.CodeUnavailable, errDraining)
				}
				return shutdownError(ctx, next(ctx, conn))
			}
		},
	}
}

func shutdownError(ctx context.Context, err error) error {
	if err != nil && context.Cause(ctx) == errShutdown {
		return connect.NewError(connect.CodeUnavailable,
			errors.New("the gateway shut down before the stream finished; resume from the last resume_token"))
	}
	return err
}

// handlerInterceptor is a [connect.Interceptor] for the handler side only:
// unary and stream wrap handlers (nil: pass through); client calls pass
// through untouched.
type handlerInterceptor struct {
	unary  func(connect.UnaryFunc) connect.UnaryFunc
	stream func(connect.StreamingHandlerFunc) connect.StreamingHandlerFunc
}

func (h handlerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	if h.unary == nil {
		return next
	}
	return h.unary(next)
}

func (h handlerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (h handlerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	if h.stream == nil {
		return next
	}
	return h.stream(next)
}
