package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/upstream"
)

// Health answers two different questions, through grpc.health.v1 on the
// API port and as HTTP on the admin listener:
//
//   - Liveness, service "" (admin /livez): is the process serving at all?
//     SERVING from start until the server has stopped, draining included.
//     It never depends on the upstream or on credentials, so an upstream
//     outage never gets a healthy pod restarted.
//   - Readiness, service [ReadinessService] (admin /readyz and /healthz):
//     should this instance get new calls? SERVING only while the
//     credentials provider returns a key and the gateway is not draining:
//     NOT_SERVING from the first instant of SIGTERM, and while no
//     credentials resolve (every call would fail with
//     GATEWAY_CREDENTIALS_MISSING).
//
// Readiness asks the credentials provider at every readiness check (one
// question in flight at a time, shared by concurrent checks), so a pod
// whose credentials arrive late becomes ready at the next probe, and one
// whose credentials vanish turns NOT_SERVING at the next probe. The
// credentials library caches keys, so a check costs no network call while
// they are valid.
const (
	// LivenessService is the grpc.health.v1 service name of liveness.
	LivenessService = ""
	// ReadinessService is the grpc.health.v1 service name of readiness:
	// the service's own name, which is also what gRPC clients with
	// client-side health checking ask about.
	ReadinessService = imagerecordsv1connect.ImageRecordsServiceName
)

// errNoCredentials is why readiness is off while the credentials provider
// fails; the provider's own error goes to the log only.
var errNoCredentials = errors.New("no usable upstream credentials (the log says why)")

// credentialsCheckTimeout bounds one question to the credentials provider
// (an STS or OIDC exchange when a key must be refreshed).
const credentialsCheckTimeout = 10 * time.Second

// healthChecker is the grpchealth.Checker of a gateway.
type healthChecker struct {
	logger *slog.Logger
	// draining turns readiness off; stopped turns liveness off.
	draining, stopped atomic.Bool

	mu    sync.Mutex
	creds upstream.CredentialsProvider // nil: readiness does not ask
	// inflight is the credentials question being asked, nil when none.
	inflight *credentialsCheck
	// lastOK and asked are the previous answer, for logging changes.
	lastOK, asked bool
	// watchers are the onChange callbacks of health Watch streams.
	watchers map[*func()]struct{}
}

// credentialsCheck is one question to the credentials provider; err is
// its answer once done is closed.
type credentialsCheck struct {
	done chan struct{}
	err  error
}

var (
	_ grpchealth.Checker = (*healthChecker)(nil)
	_ grpchealth.Watcher = (*healthChecker)(nil)
)

// Watch serves grpc.health.v1.Health/Watch: onChange is called whenever
// liveness or readiness may have changed (the drain began, the server
// stopped, the credentials started or stopped resolving), and the handler
// then sends the status Check answers.
func (h *healthChecker) Watch(_ context.Context, req *grpchealth.CheckRequest, onChange func()) (func(), error) {
	if req.Service != LivenessService && req.Service != ReadinessService {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %q: ask %q for liveness or %q for readiness", req.Service, LivenessService, ReadinessService))
	}
	key := &onChange
	h.mu.Lock()
	if h.watchers == nil {
		h.watchers = map[*func()]struct{}{}
	}
	h.watchers[key] = struct{}{}
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.watchers, key)
		h.mu.Unlock()
	}, nil
}

// setDraining turns readiness off for good, and tells the watchers.
func (h *healthChecker) setDraining() {
	h.draining.Store(true)
	h.notify()
}

// setStopped turns liveness off, and tells the watchers.
func (h *healthChecker) setStopped() {
	h.stopped.Store(true)
	h.notify()
}

// notify calls every watcher's onChange.
func (h *healthChecker) notify() {
	h.mu.Lock()
	calls := make([]func(), 0, len(h.watchers))
	for f := range h.watchers {
		calls = append(calls, *f)
	}
	h.mu.Unlock()
	for _, f := range calls {
		f()
	}
}

// Check answers grpc.health.v1.Health/Check.
func (h *healthChecker) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	var ok bool
	switch req.Service {
	case LivenessService:
		ok = h.live()
	case ReadinessService:
		ok = h.ready(ctx) == nil
	default:
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %q: ask %q for liveness or %q for readiness", req.Service, LivenessService, ReadinessService))
	}
	if ok {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
}

func (h *healthChecker) live() bool { return !h.stopped.Load() }

// ready returns why the gateway should get no new calls, nil when it
// should.
func (h *healthChecker) ready(ctx context.Context) error {
	if h.draining.Load() {
		return errDraining
	}
	if h.stopped.Load() {
		return errShutdown
	}
	h.mu.Lock()
	if h.creds == nil {
		h.mu.Unlock()
		return nil
	}
	c := h.inflight
	if c == nil {
		c = &credentialsCheck{done: make(chan struct{})}
		h.inflight = c
		go h.askCredentials(c, h.creds)
	}
	h.mu.Unlock()
	select {
	case <-c.done:
		if c.err != nil {
			return errNoCredentials
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the credentials provider did not answer in time: %w", context.Cause(ctx))
	}
}

// askCredentials asks creds for a key, records the answer in c, and logs
// when readiness changes because of it.
func (h *healthChecker) askCredentials(c *credentialsCheck, creds upstream.CredentialsProvider) {
	ctx, cancel := context.WithTimeout(context.Background(), credentialsCheckTimeout)
	defer cancel()
	_, err := creds.Credentials(ctx)
	h.mu.Lock()
	h.inflight = nil
	changed := !h.asked || h.lastOK != (err == nil)
	h.asked, h.lastOK = true, err == nil
	h.mu.Unlock()
	if changed {
		h.notify()
		if err == nil {
			h.logger.Info("ready: the upstream credentials resolve")
		} else {
			h.logger.Warn("not ready: no usable upstream credentials; every call would fail until they resolve", slog.String("error", err.Error()))
		}
	}
	c.err = err
	close(c.done)
}

// route serves liveness and readiness as HTTP on mux: 200 "ok", or 503
// with the reason.
func (h *healthChecker) route(mux *http.ServeMux) {
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		if !h.live() {
			http.Error(w, "stopped", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	ready := func(w http.ResponseWriter, r *http.Request) {
		if err := h.ready(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	}
	mux.HandleFunc("GET /readyz", ready)
	mux.HandleFunc("GET /healthz", ready)
}

// CheckCredentials makes readiness depend on creds: NOT_SERVING while it
// returns no key. The daemon passes the provider its upstream client signs
// with; without a call, readiness depends on draining only. Call it before
// Serve.
func (g *Gateway) CheckCredentials(creds upstream.CredentialsProvider) {
	g.health.mu.Lock()
	defer g.health.mu.Unlock()
	g.health.creds = creds
}
