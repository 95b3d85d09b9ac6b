package gateway

import (
	"context"
	"log/slog"
	"net"
	"net/http"

	"connectrpc.com/connect"

	"github.com/imagerecords/imagerecords/service"
	"github.com/imagerecords/imagerecords/upstream"
)

// hardening holds the gateway's protections against hostile or broken
// callers (issue 14): connection limits ([connLimiter]), auth before any
// body is read and the caller's identity ([front]), stream limits, stalls
// and slow requests ([requestGuard]), a per-peer share of the upstream
// rate (upstream calls named by peer, which the client's pacer takes in
// turns), bounded inflating ([boundedGzipReader]) and the
// keys of page tokens ([tokenKeyFile]).
type hardening struct {
	cfg       Config
	peers     peerIdentity
	refusals  *refusalLog
	watches   *healthWatches
	tokenFile *tokenKeyFile // nil without Config.TokenKeyFile
	tokenKeys *service.TokenKeys
}

func newHardening(cfg Config, logger *slog.Logger, tel *Telemetry) (*hardening, error) {
	peers, err := parsePeerIdentity(cfg.PeerIdentity, cfg.TrustedProxies)
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	h := &hardening{
		cfg:      cfg,
		peers:    peers,
		refusals: newRefusalLog(logger, tel.MeterProvider),
		watches:  newHealthWatches(cfg.MaxConnections),
	}
	if cfg.TokenKeyFile != "" {
		if h.tokenFile, err = loadTokenKeyFile(cfg.TokenKeyFile); err != nil {
			return nil, err
		}
		h.tokenKeys = h.tokenFile.keys
		logger.Info("page tokens signed with the keys of --token-key-file",
			slog.String("sealing_key_id", h.tokenKeys.SealingKeyID()), slog.Int("keys", h.tokenKeys.Len()))
	} else {
		h.tokenKeys = service.RandomTokenKeys()
		logger.Warn("no --token-key-file: page and resume tokens are signed with a random key of this process, " +
			"so they are valid only on this replica and only until it restarts; give every replica the same --token-key-file")
	}
	if cfg.UpstreamAllowInsecure {
		logger.Warn("--upstream-allow-insecure: an http:// upstream endpoint gets the AccessKey id, signatures and any STS token in clear text")
	}
	return h, nil
}

// handler wraps the mux in the layers that run before connect reads a
// body, and names them in chain.
func (h *hardening) handler(mux http.Handler, auth *bearerAuth, chain *[]string) http.Handler {
	errs := connect.NewErrorWriter()
	guard := &requestGuard{
		perPeer:     h.cfg.MaxStreamsPerPeer,
		perToken:    h.peers.mode != PeerToken,
		stall:       h.cfg.StreamStallTimeout,
		bodyTimeout: h.cfg.ReadHeaderTimeout,
		refusals:    h.refusals,
		errors:      errs,
		watches:     h.watches,
		next:        mux,
		open:        map[string]int{},
	}
	if auth != nil {
		*chain = append(*chain, "http:bearer-auth")
	}
	*chain = append(*chain, "http:peer="+h.peers.String(), "http:stream-limits", "http:stall-watch", "http:body-deadline")
	return &front{auth: auth, peers: h.peers, refusals: h.refusals, errors: errs, next: guard}
}

// readLimits are the request limits of the handlers outside the service
// chain (health, reflection): the read limit, and inflating that stops at
// it.
func (h *hardening) readLimits() []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithReadMaxBytes(h.cfg.MaxRequestBytes),
		connect.WithCompression("gzip", newBoundedGzipReader(int64(h.cfg.MaxRequestBytes)), newGzipWriter),
	}
}

// upstream returns the API the service calls: api with every call named
// for its caller's peer, so that the upstream client's pacer takes peers
// in turns (upstream.WithCaller).
func (h *hardening) upstream(api upstream.API) upstream.API { return peerCalls{api} }

// peerCalls names each upstream call for the peer of the RPC it serves.
type peerCalls struct{ api upstream.API }

func (p peerCalls) DescribeImageModifiedRecords(ctx context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
	return p.api.DescribeImageModifiedRecords(upstream.WithCaller(ctx, callerFrom(ctx).peer), in)
}

// serviceOptions are the service's options of the hardening: its token keys.
func (h *hardening) serviceOptions() []service.Option {
	return []service.Option{service.WithTokenKeys(h.tokenKeys)}
}

// listener wraps the API listener in the connection limits, and returns
// memory to the system whenever the gateway goes quiet while it is open.
func (h *hardening) listener(ln net.Listener) *connLimiter {
	l := newConnLimiter(ln, h.cfg, h.refusals)
	go reclaimWhenQuiet(l.closed)
	return l
}

// server sets the idle timeout and the connection-limit hook of srv, the
// API server serving ln.
func (h *hardening) server(srv *http.Server, ln *connLimiter) {
	srv.IdleTimeout = h.cfg.IdleTimeout
	srv.ConnState = ln.connState
}

// reload re-reads the token keys; it reports whether there is a key file.
func (h *hardening) reload(logger *slog.Logger) (bool, error) {
	if h.tokenFile == nil {
		return false, nil
	}
	if err := h.tokenFile.reload(); err != nil {
		logger.Error("token keys not reloaded; the previous keys stay in force", slog.String("error", err.Error()))
		return true, err
	}
	logger.Info("token keys reloaded", slog.String("sealing_key_id", h.tokenKeys.SealingKeyID()), slog.Int("keys", h.tokenKeys.Len()))
	return true, nil
}
