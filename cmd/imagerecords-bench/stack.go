package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/imagerecords/imagerecords/gen/ecd/imagerecords/v1/imagerecordsv1connect"
	"github.com/imagerecords/imagerecords/service/gateway"
	"github.com/imagerecords/imagerecords/service/gateway/gatewaytest"
	"github.com/imagerecords/imagerecords/upstream/ecdsim"
)

// region is the region every request names.
const region = gatewaytest.Region

// Telemetry modes of the gateway stack.
const (
	// telemetryNoop gives the gateway no-op OTel providers: the gateway's
	// own cost, the same handler chain.
	telemetryNoop = "noop"
	// telemetrySDK is imagerecordsd's telemetry with no OTEL_* variable
	// set: SDK tracer (every span recorded) and meter with the Prometheus
	// reader, nothing exported.
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
	// upstreamQPS is the gateway's --upstream-qps (0: no limit);
	// upstreamBurst its --upstream-burst.
	upstreamQPS   float64
	upstreamBurst int
	// traceSim records when the simulator starts and ends each request.
	traceSim bool
	// beforeSend, when not nil, is called whenever the gateway hands a
	// stream message of size bytes to the transport, as it begins to
	// write it.
	beforeSend func(size int)
	// quota is the simulator's account quota (zero: none).
	quota ecdsim.Quota
	// maxStreamsPerPeer, when positive, is the gateway's
	// --max-streams-per-peer; 0 keeps imagerecordsd's default.
	maxStreamsPerPeer int
}

// stack is one in-process deployment on loopback, started by the test kit
// (package gatewaytest): the simulator behind an HTTP/1.1 server, and the
// gateway built by package gateway — the handler chain imagerecordsd
// ships — behind an HTTP/1.1 + h2c server.
type stack struct {
	*gatewaytest.Stack
	cfg stackConfig
	// simTrace holds the simulator's request times, with traceSim.
	simTrace *callTrace
	// simConns and gatewayConns count the client connections each server
	// saw: how well the clients reuse connections.
	simConns, gatewayConns remoteAddrs
}

func startStack(cfg stackConfig) (*stack, error) {
	s := &stack{cfg: cfg}
	var tel *gateway.Telemetry
	switch cfg.telemetry {
	case telemetryNoop:
		tel = gateway.NoopTelemetry()
	case telemetrySDK:
		var err error
		if tel, err = gateway.NewTelemetry(context.Background()); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown telemetry mode %q (want %s or %s)", cfg.telemetry, telemetryNoop, telemetrySDK)
	}
	args := []string{
		"--compress-min-bytes", strconv.Itoa(cfg.compressMin),
		"--upstream-qps", strconv.FormatFloat(cfg.upstreamQPS, 'g', -1, 64),
		"--upstream-burst", strconv.Itoa(cfg.upstreamBurst),
	}
	if cfg.maxStreamsPerPeer > 0 {
		args = append(args, "--max-streams-per-peer", strconv.Itoa(cfg.maxStreamsPerPeer))
	}
	kit, err := gatewaytest.Start(gatewaytest.Config{
		Args:      args,
		Desktops:  cfg.desktops,
		Faults:    ecdsim.Faults{Latency: cfg.latency},
		Quota:     cfg.quota,
		Telemetry: tel,
		WrapSimulator: func(sim http.Handler) http.Handler {
			h := s.simConns.wrap(sim)
			if cfg.traceSim {
				s.simTrace = &callTrace{next: h}
				h = s.simTrace
			}
			return h
		},
		WrapHandler: func(gw http.Handler) http.Handler {
			h := s.gatewayConns.wrap(gw)
			if cfg.beforeSend != nil {
				h = envelopeObserver{next: h, onMessage: cfg.beforeSend}
			}
			return h
		},
	})
	if err != nil {
		_ = tel.Shutdown(context.Background())
		return nil, err
	}
	s.Stack = kit
	return s, nil
}

// close stops the servers and the telemetry providers.
func (s *stack) close() {
	s.Close()
	_ = s.Telemetry.Shutdown(context.Background())
}

// newGatewayClient returns a gRPC client of the gateway with its own h2c
// connection pool.
func (s *stack) newGatewayClient() imagerecordsv1connect.ImageRecordsServiceClient {
	hc := gatewaytest.H2C()
	if s.cfg.clientWindow > 0 {
		hc.Transport.(*http.Transport).HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: s.cfg.clientWindow}
	}
	return imagerecordsv1connect.NewImageRecordsServiceClient(hc, s.URL, connect.WithGRPC())
}

// newDirectClient returns a reference client of the simulator with its own
// keep-alive pool, sized like the gateway's upstream pool.
func (s *stack) newDirectClient() *directClient {
	return newDirectClient(s.SimURL, gatewaytest.KeyID, gatewaytest.KeySecret)
}

// connections says how many client connections the simulator and the
// gateway have seen so far.
func (s *stack) connections() string {
	return fmt.Sprintf("simulator %d, gateway %d", s.simConns.count(), s.gatewayConns.count())
}

// desktopCalls is the simulator's request count for a desktop.
func (s *stack) desktopCalls(id string) int64 { return s.Sim.DesktopCalls(id) }

// remoteAddrs counts the distinct client addresses (connections) of the
// requests a handler serves.
type remoteAddrs struct {
	mu    sync.Mutex
	addrs map[string]bool
}

func (a *remoteAddrs) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		if a.addrs == nil {
			a.addrs = map[string]bool{}
		}
		a.addrs[r.RemoteAddr] = true
		a.mu.Unlock()
		next.ServeHTTP(w, r)
	})
}

func (a *remoteAddrs) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.addrs)
}

// envelopeObserver calls onMessage with the message's size whenever the
// handler begins to write a gRPC data message (a 5-byte envelope prefix
// with a clear end-of-stream flag) into the response: the moment the
// gateway hands a stream message to the transport.
type envelopeObserver struct {
	next      http.Handler
	onMessage func(size int)
}

func (o envelopeObserver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.next.ServeHTTP(&envelopeWriter{ResponseWriter: w, onMessage: o.onMessage}, r)
}

// envelopeWriter follows the envelopes of a response as they are written,
// however the writes split them.
type envelopeWriter struct {
	http.ResponseWriter
	onMessage func(size int)
	prefix    [5]byte
	have      int    // prefix bytes seen of the next envelope
	remaining uint32 // payload bytes left of the current envelope
}

func (w *envelopeWriter) Write(p []byte) (int, error) {
	for rest := p; len(rest) > 0; {
		if w.remaining > 0 {
			n := min(uint32(len(rest)), w.remaining)
			w.remaining -= n
			rest = rest[n:]
			continue
		}
		n := copy(w.prefix[w.have:], rest)
		w.have += n
		rest = rest[n:]
		if w.have == len(w.prefix) {
			w.have = 0
			w.remaining = binary.BigEndian.Uint32(w.prefix[1:])
			if w.prefix[0]&0x80 == 0 { // not the gRPC-Web trailers
				w.onMessage(int(w.remaining))
			}
		}
	}
	return w.ResponseWriter.Write(p)
}

// Flush flushes the response, as connect's streaming handlers require.
func (w *envelopeWriter) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

// Unwrap lets http.ResponseController reach the server's writer.
func (w *envelopeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

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
