package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// healthWatchProcedure is grpc.health.v1 Watch, a stream that lives as
// long as its caller wants.
const healthWatchProcedure = "/" + grpchealth.HealthV1ServiceName + "/Watch"

// watchDrainBound is how long Watch streams may stay open once the drain
// began when their status has nothing new to send.
const watchDrainBound = time.Second

// requestGuard is the HTTP layer behind [front]: it bounds what one
// request may hold, whatever its protocol.
//
//   - Streaming procedures (record streams, health Watch, reflection: any
//     method the proto registry says streams) are counted per peer and per
//     bearer token; past Config.MaxStreamsPerPeer a new one is refused with
//     ResourceExhausted before its body is read.
//   - Health Watch streams are bounded in all by Config.MaxConnections
//     (grpc clients open one per connection for client-side health
//     checking), and end once the drain began, after they sent NOT_SERVING.
//   - The request body must arrive within Config.ReadHeaderTimeout of the
//     last bytes received (a request that never sends its message would
//     hold a handler forever).
//   - A response write (a stream message, or a unary answer) that the
//     caller has not accepted for Config.StreamStallTimeout cuts the
//     request (see [stallWatch]).
type requestGuard struct {
	perPeer     int
	perToken    bool // count per token too (peers are not tokens already)
	stall       time.Duration
	bodyTimeout time.Duration
	refusals    *refusalLog
	errors      *connect.ErrorWriter
	watches     *healthWatches
	next        http.Handler

	mu   sync.Mutex
	open map[string]int // "peer:<id>" or "token:<id>" → streams open
}

func (g *requestGuard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := callerFrom(r.Context())
	if streaming(r.URL.Path) {
		release, reason := g.admitStream(c)
		if reason != "" {
			g.refusals.record(r.Context(), reason, c.peer, c.remote, slog.String("procedure", r.URL.Path), slog.String("token_id", c.tokenID))
			refuse(w, r, g.errors, connect.NewError(connect.CodeResourceExhausted,
				fmt.Errorf("too many streams open for this caller (limit %d per peer and per token); finish or cancel one first", g.perPeer)))
			return
		}
		defer release()
	}
	if r.URL.Path == healthWatchProcedure {
		ctx, end, ok := g.watches.add(r.Context())
		if !ok {
			g.refusals.record(r.Context(), reasonHealthWatches, c.peer, c.remote)
			refuse(w, r, g.errors, connect.NewError(connect.CodeResourceExhausted,
				fmt.Errorf("too many health Watch streams (limit %d); use Check, or one Watch per connection", g.watches.max)))
			return
		}
		defer end()
		r = r.WithContext(ctx)
		w = &drainingWatch{ResponseWriter: w, watches: g.watches, end: end}
	}

	rc := http.NewResponseController(w)
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		_ = rc.SetReadDeadline(time.Now().Add(g.bodyTimeout))
		r.Body = &bodyDeadline{ReadCloser: r.Body, rc: rc, timeout: g.bodyTimeout}
	}
	sw := newStallWatch(w, rc, g.stall)
	defer sw.stop()
	g.next.ServeHTTP(sw, r)
	if r.ProtoMajor == 2 {
		// Flush what the handler left buffered while the watch still
		// runs: on HTTP/2 it would otherwise wait for the caller's window
		// after the handler returned, with nothing to end the wait.
		sw.Flush()
	}
	if sw.stalled.Load() {
		g.refusals.record(r.Context(), reasonStalled, c.peer, c.remote, slog.String("procedure", r.URL.Path),
			slog.Duration("stall_timeout", g.stall))
	}
}

// admitStream counts a new stream of c, or says why it is refused.
func (g *requestGuard) admitStream(c caller) (release func(), reason string) {
	keys := make([]string, 0, 2)
	keys = append(keys, "peer:"+c.peer)
	if g.perToken && c.tokenID != "" {
		keys = append(keys, "token:"+c.tokenID)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, k := range keys {
		if g.open[k] >= g.perPeer {
			if strings.HasPrefix(k, "token:") {
				return nil, reasonStreamsPerToken
			}
			return nil, reasonStreamsPerPeer
		}
	}
	for _, k := range keys {
		g.open[k]++
	}
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, k := range keys {
			if g.open[k]--; g.open[k] <= 0 {
				delete(g.open, k)
			}
		}
	}, ""
}

// streaming reports whether procedure (/package.Service/Method) is a
// streaming method of a service in the proto registry. Unknown paths are
// not: they end in NotFound at once.
func streaming(procedure string) bool {
	service, method, ok := strings.Cut(strings.TrimPrefix(procedure, "/"), "/")
	if !ok {
		return false
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return false
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return false
	}
	md := sd.Methods().ByName(protoreflect.Name(method))
	return md != nil && (md.IsStreamingClient() || md.IsStreamingServer())
}

// stallWatch is a ResponseWriter that cuts its request when one write (or
// flush) has not completed for the stall timeout: the caller has accepted
// nothing for that long (its HTTP/2 window, or its TCP window, stayed
// full). It cuts by setting a write deadline in the past, which resets the
// HTTP/2 stream (RST_STREAM INTERNAL_ERROR, the only reset a Go server can
// send) or closes the HTTP/1.1 connection. No status can follow a
// half-written message, so this is all the caller sees; the messages it
// did receive carry resume tokens that stay valid.
type stallWatch struct {
	http.ResponseWriter
	timeout time.Duration
	timer   *time.Timer
	stalled atomic.Bool
}

func newStallWatch(w http.ResponseWriter, rc *http.ResponseController, timeout time.Duration) *stallWatch {
	s := &stallWatch{ResponseWriter: w, timeout: timeout}
	s.timer = time.AfterFunc(time.Hour, func() {
		s.stalled.Store(true)
		_ = rc.SetWriteDeadline(time.Unix(1, 0)) // in the past: now
	})
	s.timer.Stop()
	return s
}

func (s *stallWatch) Write(p []byte) (int, error) {
	s.timer.Reset(s.timeout)
	n, err := s.ResponseWriter.Write(p)
	s.timer.Stop()
	return n, err
}

// Flush flushes the response, as connect's streaming handlers require.
func (s *stallWatch) Flush() {
	s.timer.Reset(s.timeout)
	_ = http.NewResponseController(s.ResponseWriter).Flush()
	s.timer.Stop()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (s *stallWatch) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func (s *stallWatch) stop() { s.timer.Stop() }

// bodyDeadline keeps a read deadline on a request body while it is
// being received, and lifts it once the body is complete, so that a
// caller that stops sending its request cannot hold a handler.
type bodyDeadline struct {
	io.ReadCloser
	rc       *http.ResponseController
	timeout  time.Duration
	complete bool
}

func (b *bodyDeadline) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case b.complete:
	case errors.Is(err, io.EOF):
		b.complete = true
		_ = b.rc.SetReadDeadline(time.Time{})
	case errors.Is(err, os.ErrDeadlineExceeded):
		return n, connect.NewError(connect.CodeDeadlineExceeded,
			fmt.Errorf("the request message did not arrive within %v", b.timeout))
	case n > 0:
		_ = b.rc.SetReadDeadline(time.Now().Add(b.timeout))
	}
	return n, err
}

// errDrained ends the health Watch streams once the drain began.
var errDrained = errors.New("the gateway is shutting down")

// healthWatches bounds the health Watch streams and ends them on drain.
type healthWatches struct {
	max int

	mu       sync.Mutex
	draining bool
	open     map[*context.CancelCauseFunc]struct{}
}

func newHealthWatches(max int) *healthWatches {
	return &healthWatches{max: max, open: map[*context.CancelCauseFunc]struct{}{}}
}

// add counts a new Watch; it returns the context to serve it under and
// the function that ends it, or false past the bound.
func (h *healthWatches) add(parent context.Context) (context.Context, func(), bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.open) >= h.max {
		return nil, nil, false
	}
	ctx, cancel := context.WithCancelCause(parent)
	key := &cancel
	h.open[key] = struct{}{}
	return ctx, func() {
		cancel(errDrained)
		h.mu.Lock()
		delete(h.open, key)
		h.mu.Unlock()
	}, true
}

// drain makes every Watch end after its next message (the NOT_SERVING the
// drain causes), and ends those still open after watchDrainBound.
func (h *healthWatches) drain() {
	h.mu.Lock()
	h.draining = true
	h.mu.Unlock()
	time.AfterFunc(watchDrainBound, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		for cancel := range h.open {
			(*cancel)(errDrained)
		}
	})
}

func (h *healthWatches) isDraining() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.draining
}

// drainingWatch ends a Watch stream after the first message it flushes
// once the drain began.
type drainingWatch struct {
	http.ResponseWriter
	watches *healthWatches
	end     func()
}

// Flush flushes the message, and ends the stream if the gateway drains.
func (d *drainingWatch) Flush() {
	_ = http.NewResponseController(d.ResponseWriter).Flush()
	if d.watches.isDraining() {
		d.end()
	}
}

// Unwrap lets http.ResponseController reach the server's writer.
func (d *drainingWatch) Unwrap() http.ResponseWriter { return d.ResponseWriter }
